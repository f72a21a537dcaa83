//! The official CIFAR-10 / CIFAR-100 binary versions.
//!
//! CIFAR-10: data_batch_1..5.bin and test_batch.bin, records of 1 label byte + 3072 pixels.
//! CIFAR-100: train.bin and test.bin, records of coarse label, fine label + 3072 pixels
//! (we classify the 100 fine labels).
use super::augment::Geometry;
use super::{Dataset, InMemory};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;

const PIXELS: usize = 3 * 32 * 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    fn record(self) -> usize {
        match self {
            Variant::Cifar10 => 1 + PIXELS,
            Variant::Cifar100 => 2 + PIXELS,
        }
    }
    fn classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
    fn files(self, train: bool) -> Vec<String> {
        match (self, train) {
            (Variant::Cifar10, true) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (Variant::Cifar10, false) => vec!["test_batch.bin".into()],
            (Variant::Cifar100, true) => vec!["train.bin".into()],
            (Variant::Cifar100, false) => vec!["test.bin".into()],
        }
    }
}

fn load_part(dir: &Path, variant: Variant, train: bool, names: &[String]) -> Result<InMemory> {
    let (rec, classes) = (variant.record(), variant.classes());
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in variant.files(train) {
        let path = dir.join(&name);
        if !path.exists() {
            bail!("missing file {}", path.display());
        }
        let raw = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if raw.is_empty() || raw.len() % rec != 0 {
            bail!("{}: truncated or corrupt: {} bytes is not a whole number of {rec}-byte records", path.display(), raw.len());
        }
        for r in raw.chunks_exact(rec) {
            let label = r[rec - PIXELS - 1] as usize; // CIFAR-100: the fine label
            if label >= classes {
                bail!("{}: label {label} is outside the {classes} classes", path.display());
            }
            labels.push(label as i64);
            // Stored channel-planar (R plane, G, B); kept interleaved as decoders give images.
            let planes = &r[rec - PIXELS..];
            let plane = PIXELS / 3;
            pixels.extend((0..plane).flat_map(|p| [planes[p], planes[plane + p], planes[2 * plane + p]]));
        }
    }
    InMemory::new(pixels, Geometry { c: 3, h: 32, w: 32 }, labels, names.to_vec())
}

/// The class names the binary versions ship (batches.meta.txt, fine_label_names.txt), or the
/// class indices where that file is absent.
fn class_names(dir: &Path, variant: Variant) -> Vec<String> {
    let file = match variant {
        Variant::Cifar10 => "batches.meta.txt",
        Variant::Cifar100 => "fine_label_names.txt",
    };
    let listed: Vec<String> =
        std::fs::read_to_string(dir.join(file)).map(|t| t.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()).unwrap_or_default();
    if listed.len() == variant.classes() {
        listed
    } else {
        (0..variant.classes()).map(|c| c.to_string()).collect()
    }
}

pub fn load_dir(dir: &Path, variant: Variant) -> Result<Dataset> {
    let names = class_names(dir, variant);
    let (train, test) = (load_part(dir, variant, true, &names)?, load_part(dir, variant, false, &names)?);
    Ok(Dataset { train: Arc::new(train), test: Arc::new(test), val: None })
}
