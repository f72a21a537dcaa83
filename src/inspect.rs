//! `gcl split` and `gcl config`: what a run would use, without training.
use crate::config::{Config, DataConfig, PRESETS};
use crate::data::class_counts;
use crate::data::split;
use crate::eval::Table;
use anyhow::{Context, Result};
use std::path::PathBuf;

pub struct SplitOptions {
    pub data: DataConfig,
    /// Write the split's training indices here, one per line.
    pub export: Option<PathBuf>,
}

/// Prints the per-class counts of a long-tailed split (and exports its indices).
pub fn split(o: &SplitOptions) -> Result<()> {
    let d = &o.data;
    let ds = d.load()?;
    let (labels, classes) = (ds.train.labels(), ds.train.num_classes());
    let idx = split::longtail_indices(labels, classes, d.ratio, d.profile(), &d.split)?;
    let kept: Vec<i64> = idx.iter().map(|&i| labels[i as usize]).collect();
    let mut text = format!("{} long-tailed split, ratio {}, profile {:?}\n", d.dataset.name(), d.ratio, d.profile());
    let mut t = Table::new(&["class", "name", "images"]);
    for (c, n) in class_counts(&kept, classes).iter().enumerate() {
        t.row(&[c.to_string(), ds.train.class_names()[c].clone(), n.to_string()]);
    }
    t.row(&["total".to_string(), String::new(), idx.len().to_string()]);
    text += &t.text();
    if let Some(path) = &o.export {
        split::write_index_file(path, &idx).with_context(|| "exporting the split")?;
        text += &format!("wrote {} indices to {}\n", idx.len(), path.display());
    }
    crate::util::out(&text)
}

/// Prints every setting as TOML; a preset's numbers carry their sources as comments, and
/// what was chosen from the data says so first.
pub fn config(cfg: &Config, preset: &str) -> Result<()> {
    let fitted = cfg.fitted.as_ref().map_or(String::new(), |f| format!("# chosen from the data: {f}\n"));
    crate::util::out(&(fitted + &crate::config::annotate(&cfg.resolved().to_toml(), &crate::config::preset_notes(preset))))
}

/// Lists the presets.
pub fn presets() -> Result<()> {
    crate::util::out(&PRESETS.iter().map(|(name, what)| format!("{name:<16} {what}\n")).collect::<String>())
}
