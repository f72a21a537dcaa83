//! `gcl split` and `gcl config`: what a run would use, without training.
use crate::config::{Config, PRESETS};
use crate::data::split::{self, Profile, SplitRule};
use crate::data::{self, class_counts, DatasetKind};
use crate::eval::Table;
use anyhow::{Context, Result};
use std::path::PathBuf;

pub struct SplitOptions {
    pub dataset: DatasetKind,
    pub dir: Option<PathBuf>,
    pub ratio: f64,
    pub profile: Profile,
    pub rule: SplitRule,
    /// Write the split's training indices here, one per line.
    pub export: Option<PathBuf>,
}

/// Prints the per-class counts of a long-tailed split (and exports its indices).
pub fn split(o: &SplitOptions) -> Result<()> {
    let ds = data::load(o.dataset, o.dir.as_deref())?;
    let (labels, classes) = (ds.train.labels(), ds.train.num_classes());
    let idx = split::longtail_indices(labels, classes, o.ratio, o.profile, &o.rule)?;
    let kept: Vec<i64> = idx.iter().map(|&i| labels[i as usize]).collect();
    println!("{} long-tailed split, ratio {}, profile {:?}", o.dataset.name(), o.ratio, o.profile);
    let mut t = Table::new(&["class", "name", "images"]);
    for (c, n) in class_counts(&kept, classes).iter().enumerate() {
        t.row(&[c.to_string(), ds.train.class_names()[c].clone(), n.to_string()]);
    }
    t.row(&["total".to_string(), String::new(), idx.len().to_string()]);
    print!("{}", t.text());
    if let Some(path) = &o.export {
        split::write_index_file(path, &idx).with_context(|| "exporting the split")?;
        println!("wrote {} indices to {}", idx.len(), path.display());
    }
    Ok(())
}

/// Prints every setting as TOML.
pub fn config(cfg: &Config) -> Result<()> {
    print!("{}", cfg.to_toml());
    Ok(())
}

/// Lists the presets.
pub fn presets() {
    for (name, what) in PRESETS {
        println!("{name:<16} {what}");
    }
}
