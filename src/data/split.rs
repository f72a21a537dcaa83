//! The long-tailed split of a balanced training set.
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How many images each class keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// n_i = floor(n_max * ratio^(-i/(C-1))), the CIFAR-LT convention.
    Exp,
    /// The first floor(C/2) classes keep n_max, the rest floor(n_max / ratio).
    Step,
    /// Every image is kept (a set that is long-tailed already); the ratio is not used.
    AsIs,
}

/// Images per class of a long-tailed split (class 0 is the head).
pub fn longtail_counts(n_max: usize, num_classes: usize, ratio: f64, profile: Profile) -> Vec<usize> {
    match profile {
        // Same float expression as the reference, so the floors agree.
        Profile::Exp => (0..num_classes)
            .map(|i| {
                let e = if num_classes > 1 { i as f64 / (num_classes as f64 - 1.0) } else { 0.0 };
                (n_max as f64 * (1.0 / ratio).powf(e)) as usize
            })
            .collect(),
        Profile::Step => {
            let half = num_classes / 2;
            (0..num_classes).map(|i| if i < half { n_max } else { (n_max as f64 / ratio) as usize }).collect()
        }
        Profile::AsIs => vec![usize::MAX; num_classes],
    }
}

/// Which images of a class are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "rule")]
pub enum SplitRule {
    /// The first n_i images of each class in file order (the reference's rule).
    FirstN,
    /// n_i images of each class picked at random with this seed.
    Random {
        #[serde(default)]
        seed: u64,
    },
    /// The training indices listed in a file, one per line.
    IndexFile { path: PathBuf },
}

/// The training-set indices that a long-tailed split keeps, in class order.
pub fn longtail_indices(labels: &[i64], num_classes: usize, ratio: f64, profile: Profile, rule: &SplitRule) -> Result<Vec<i64>> {
    if let SplitRule::IndexFile { path } = rule {
        return read_index_file(path, labels.len());
    }
    if profile == Profile::AsIs {
        return Ok((0..labels.len() as i64).collect());
    }
    if !(ratio >= 1.0 && ratio.is_finite()) {
        bail!("imbalance ratio must be a number >= 1, got {ratio}");
    }
    let mut by_class: Vec<Vec<i64>> = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i as i64);
    }
    let n_max = by_class.iter().map(Vec::len).max().unwrap_or(0);
    let counts = longtail_counts(n_max, num_classes, ratio, profile);
    let mut out = Vec::new();
    for (c, mut idx) in by_class.into_iter().enumerate() {
        if let SplitRule::Random { seed } = rule {
            idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(c as u64)));
        }
        out.extend_from_slice(&idx[..counts[c].min(idx.len())]);
    }
    Ok(out)
}

/// The training indices of a split file: one per line, blank lines ignored. Each image may be
/// listed once (a repeat would silently weight it twice, which is the samplers' job).
pub fn read_index_file(path: &Path, train_len: usize) -> Result<Vec<i64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read split file {}", path.display()))?;
    let mut out = Vec::new();
    let mut first_line: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let i: i64 = line.parse().with_context(|| format!("{}:{}: `{line}` is not an image index", path.display(), no + 1))?;
        if i < 0 || i as usize >= train_len {
            bail!("{}:{}: index {i} is outside the {train_len} training images", path.display(), no + 1);
        }
        if let Some(first) = first_line.insert(i, no + 1) {
            bail!("{}:{}: index {i} is listed twice (first on line {first}); a split lists each image once", path.display(), no + 1);
        }
        out.push(i);
    }
    if out.is_empty() {
        bail!("split file {} lists no indices", path.display());
    }
    Ok(out)
}

/// Writes one index per line, atomically.
pub fn write_index_file(path: &Path, indices: &[i64]) -> Result<()> {
    let mut text = String::with_capacity(indices.len() * 6);
    for i in indices {
        text.push_str(&i.to_string());
        text.push('\n');
    }
    crate::util::write_atomic(path, text.as_bytes())
}
