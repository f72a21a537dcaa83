//! Run settings: presets, TOML files and command-line overrides.
//!
//! Every number of the recipe is a setting with the paper's value as default. A TOML file
//! gives any subset of them; `--set section.key=value` overrides one.
use crate::data::augment::{Augment, Normalize};
use crate::data::files::FileOptions;
use crate::data::image::Color;
use crate::data::sampler::Sampler;
use crate::data::split::{Profile, SplitRule};
use crate::data::transform::{TestTransform, TrainTransform, Tte};
use crate::data::{DatasetKind, Prepared, Transforms};
use crate::loss::{CloudForm, GclParams, LossConfig};
pub use crate::model::ModelConfig;
pub use crate::runtime::RunConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub stage1: Stage1Config,
    pub stage2: Stage2Config,
    pub run: RunConfig,
    /// What [`Config::fit_to_data`] chose and why (one line), when it chose anything.
    #[serde(skip)]
    pub fitted: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub dataset: DatasetKind,
    /// Folder with the dataset's files (for `list`, the root the lists' paths are relative
    /// to); the dataset's default folder when absent.
    pub dir: Option<PathBuf>,
    /// `list`: the list files, one `relative/path label` per line.
    pub train_list: Option<PathBuf>,
    pub test_list: Option<PathBuf>,
    pub val_list: Option<PathBuf>,
    /// Imbalance ratio n_max / n_min.
    pub ratio: f64,
    /// How the training set is made long-tailed; default `exp` for the balanced in-memory
    /// sets, `as-is` for image files (lists and folders are used as they come).
    pub profile: Option<Profile>,
    pub split: SplitRule,
    /// Image files: decoded as RGB (torchvision's default) or as grey (one channel). Unset:
    /// grey when the sampled training images are all grey, else RGB (`data::fit`).
    pub color: Option<Color>,
    /// Default: `pad-crop` for the in-memory sets; for image files, chosen from a sample of
    /// the images (`data::fit`: `resize-pad-crop` at about their size when small,
    /// RandomResizedCrop otherwise; torchvision's RandomResizedCrop(224) when the images
    /// cannot be looked at).
    pub train_transform: Option<TrainTransform>,
    /// Default: `none` for the in-memory sets; for image files chosen as the training
    /// transform is (Resize(256) + CenterCrop(224) when the images cannot be looked at).
    pub test_transform: Option<TestTransform>,
    /// Default: `fit` (the training pixels' mean and std, as the reference) for the
    /// in-memory sets, `imagenet` for image files.
    pub normalize: Option<NormalizeSetting>,
    /// Test-time ensembling at evaluation: `{ name = "five-crop", expand = 24 }` or
    /// `"ten-crop"` (with mirror images), LIFT's `tte` (`data::transform::Tte`).
    pub tte: Tte,
    /// What a missing, truncated or undecodable image does: `error` stops with its path;
    /// `skip` leaves it out, warns, and lists it in results.json.
    pub unreadable: Unreadable,
    /// Images whose header claims more pixels than this are refused, before decoding, as
    /// unreadable files (so `unreadable = "skip"` skips them): Pillow's default limit.
    pub max_pixels: u64,
    /// Held out of each class's training images (after the long-tailed split) as the
    /// validation set, when the data has none of its own: the last `ceil(f x n)` of each
    /// class with at least two images. 0: none.
    pub val_fraction: f64,
}

/// `data.normalize`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NormalizeSetting {
    /// One mean and std over all training pixels (computed when the data is prepared).
    Fit,
    /// mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    Imagenet,
    /// Per channel (R, G, B; one-channel images use the first); left out: ImageNet's.
    Fixed {
        #[serde(default = "imagenet_mean")]
        mean: [f64; 3],
        #[serde(default = "imagenet_std")]
        std: [f64; 3],
    },
}

fn imagenet_mean() -> [f64; 3] {
    Normalize::IMAGENET.mean
}
fn imagenet_std() -> [f64; 3] {
    Normalize::IMAGENET.std
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unreadable {
    Error,
    Skip,
}

impl DataConfig {
    pub fn files(&self) -> bool {
        self.dataset.info().files
    }
    pub fn profile(&self) -> Profile {
        self.profile.unwrap_or(if self.files() { Profile::AsIs } else { Profile::Exp })
    }
    /// The settings with the dataset's defaults written out (what `gcl config` prints and a
    /// run folder's config.toml keeps).
    pub fn resolved(&self) -> DataConfig {
        let files = self.files();
        DataConfig {
            profile: Some(self.profile()),
            train_transform: Some(self.train_transform.unwrap_or(if files { TrainTransform::imagenet(224) } else { TrainTransform::PadCrop })),
            test_transform: Some(self.test_transform.unwrap_or(if files { TestTransform::ResizeCrop { resize: 256, size: 224 } } else { TestTransform::None })),
            normalize: Some(self.normalize.unwrap_or(if files { NormalizeSetting::Imagenet } else { NormalizeSetting::Fit })),
            color: Some(self.color()),
            ..self.clone()
        }
    }
    pub fn color(&self) -> Color {
        self.color.unwrap_or(Color::Rgb)
    }
    pub fn transforms(&self) -> Transforms {
        let r = self.resolved();
        let (train, test) = (r.train_transform.expect("resolved"), r.test_transform.expect("resolved"));
        let normalize = match r.normalize.expect("resolved") {
            NormalizeSetting::Fit => None,
            NormalizeSetting::Imagenet => Some(Normalize::IMAGENET),
            NormalizeSetting::Fixed { mean, std } => Some(Normalize { mean, std }),
        };
        Transforms { train, test, normalize }
    }
    pub fn file_options(&self) -> FileOptions {
        FileOptions {
            train_list: self.train_list.clone(),
            test_list: self.test_list.clone(),
            val_list: self.val_list.clone(),
            color: self.color(),
            skip_unreadable: self.unreadable == Unreadable::Skip,
            max_pixels: self.max_pixels,
        }
    }
    /// Reads the dataset (without splitting it).
    pub fn load(&self) -> Result<crate::data::Dataset> {
        crate::data::open(self.dataset, self.dir.as_deref(), &self.file_options())
    }
    /// Reads the dataset and applies the long-tailed split.
    pub fn prepare(&self) -> Result<Prepared> {
        Prepared::new(self.load()?, self.ratio, self.profile(), &self.split, self.transforms(), self.val_fraction)
    }
}

/// What stage 2 does with the stage-1 model (the backbone stays frozen in all of them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Stage2Method {
    /// No stage 2.
    None,
    /// Re-train the stage-1 classifier from its weights with `loss` (left out: GCL's focal GCL-E).
    Retrain {
        #[serde(default = "gcl_stage2_loss")]
        loss: LossConfig,
    },
    /// Classifier re-training (cRT, Kang et al., ICLR 2020): a new linear classifier
    /// trained with cross-entropy (class-balanced sampling by default).
    Crt,
    /// tau-normalisation (Kang et al., ICLR 2020): w_j / ||w_j||^tau, bias dropped, no training.
    TauNorm {
        #[serde(default = "one")]
        tau: f64,
    },
    /// Learnable weight scaling (LWS, Kang et al., ICLR 2020): the stage-1 linear classifier
    /// kept, each class's logit times a learnt scale f_j (from 1; trained with cross-entropy
    /// and the stage-2 sampler), folded into its weights and bias at the end.
    Lws,
    /// Nearest class mean (NCM, Kang et al., ICLR 2020): each class's weight is the mean of
    /// its L2-normalised training features (no augmentation), so the model predicts the class
    /// mean of highest cosine; no training.
    Ncm,
}

impl Stage2Method {
    /// The loss the classifier is trained with, for the methods that train it.
    pub fn training_loss(&self) -> Option<LossConfig> {
        match *self {
            Stage2Method::Retrain { loss } => Some(loss),
            Stage2Method::Crt | Stage2Method::Lws => Some(LossConfig::Ce(Default::default())),
            Stage2Method::None | Stage2Method::TauNorm { .. } | Stage2Method::Ncm => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Stage2Method::None => "none",
            Stage2Method::Retrain { .. } => "retrain",
            Stage2Method::Crt => "crt",
            Stage2Method::TauNorm { .. } => "tau-norm",
            Stage2Method::Lws => "lws",
            Stage2Method::Ncm => "ncm",
        }
    }
}

fn one() -> f64 {
    1.0
}

/// Stage 2 of the GCL recipe: the cosine classifier re-trained with focal GCL-E.
pub fn gcl_stage2_loss() -> LossConfig {
    LossConfig::GclE(GclParams { s: 20.0, m: 0.1, noise_mul: 0.5, focal_gamma: Some(1.0), cloud: CloudForm::Log, ..Default::default() })
}

/// The default parameters of a loss, by name (`gcl-e`, `ce`, `ldam`, ...).
pub fn loss_by_name(name: &str) -> Result<LossConfig> {
    let mut t = toml::Table::new();
    t.insert("name".into(), toml::Value::String(name.into()));
    toml::Value::Table(t)
        .try_into()
        .map_err(|_| anyhow::anyhow!("unknown loss `{name}`; the losses are: gcl-e, gcl-a, ce, focal, ldam, balanced-softmax, logit-adjusted"))
}

/// Stage 1's learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Step,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stage1Config {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// The batch size `lr` is given for: the rate used is lr x batch_size / lr_batch (linear
    /// scaling). Unset: `lr` as it is.
    pub lr_batch: Option<usize>,
    /// `step` (warm-up, then x0.1 at each `decay_at`) or `cosine` (warm-up, then cosine to 0).
    pub schedule: Schedule,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Fraction of the epochs with linear warm-up (5/200 in the paper).
    pub warmup_fraction: f64,
    /// Fractions of the epochs after which the rate is multiplied by 0.1 each.
    pub decay_at: Vec<f64>,
    pub crop_pad: i64,
    pub flip: bool,
    pub mixup: bool,
    pub mixup_alpha: f64,
    pub loss: LossConfig,
    pub sampler: Sampler,
    /// RIDE's diversity term between the experts (with model.experts > 1).
    pub diversity: crate::loss::DiversityConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stage2Config {
    /// 0 skips classifier re-training.
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak of the cosine schedule.
    pub lr: f64,
    /// As stage1.lr_batch.
    pub lr_batch: Option<usize>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub crop_pad: i64,
    pub flip: bool,
    /// The reference re-trains the classifier on mixed-up batches too.
    pub mixup: bool,
    pub mixup_alpha: f64,
    pub sampler: Sampler,
    pub method: Stage2Method,
}

impl Stage1Config {
    pub fn augment(&self, transform: TrainTransform) -> Augment {
        Augment { transform, crop_pad: self.crop_pad, flip: self.flip, mixup_alpha: self.mixup.then_some(self.mixup_alpha) }
    }
}

impl Stage2Config {
    pub fn augment(&self, transform: TrainTransform) -> Augment {
        Augment { transform, crop_pad: self.crop_pad, flip: self.flip, mixup_alpha: self.mixup.then_some(self.mixup_alpha) }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::FashionMnist,
            dir: None,
            train_list: None,
            test_list: None,
            val_list: None,
            ratio: 100.0,
            profile: None,
            split: SplitRule::FirstN,
            color: None,
            train_transform: None,
            test_transform: None,
            normalize: None,
            tte: Tte::None,
            unreadable: Unreadable::Error,
            max_pixels: crate::data::image::MAX_PIXELS,
            val_fraction: 0.0,
        }
    }
}

impl Default for Stage1Config {
    fn default() -> Self {
        Self {
            epochs: 200,
            batch_size: 64,
            lr: 0.1,
            lr_batch: None,
            schedule: Schedule::Step,
            momentum: 0.9,
            weight_decay: 2e-4,
            warmup_fraction: 5.0 / 200.0,
            decay_at: vec![0.8, 0.9],
            crop_pad: 4,
            flip: true,
            mixup: true,
            mixup_alpha: 1.0,
            loss: LossConfig::GclE(GclParams::default()),
            sampler: Sampler::Instance,
            diversity: Default::default(),
        }
    }
}

impl Default for Stage2Config {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 64,
            lr: 0.02,
            lr_batch: None,
            momentum: 0.9,
            weight_decay: 2e-4,
            crop_pad: 4,
            flip: true,
            mixup: true,
            mixup_alpha: 1.0,
            sampler: Sampler::ClassBalanced,
            method: Stage2Method::Retrain { loss: gcl_stage2_loss() },
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        preset("fmnist-lt-quick").expect("built-in preset")
    }
}

/// The built-in presets: name, description.
pub const PRESETS: &[(&str, &str)] = &[
    ("fmnist-lt-quick", "Fashion-MNIST-LT, ratio 100, ResNet-32, 12 + 3 epochs (the default; 3.5-13 min on 2 cores)"),
    ("fmnist-lt", "Fashion-MNIST-LT, ratio 100, ResNet-32, 20 + 5 epochs (the reference's published run; ~5.5 min)"),
    ("cifar10-lt", "CIFAR-10-LT, ratio 100, ResNet-32, 200 + 30 epochs (the paper's recipe; needs --data)"),
    ("cifar100-lt", "CIFAR-100-LT, ratio 100, ResNet-32, 200 + 30 epochs (the paper's recipe; needs --data)"),
    ("imagenet-lt", "ImageNet-LT, ResNet-50 from scratch, 200 + 10 epochs, batch 256 (needs --data with the lists; sources: gcl config --preset imagenet-lt)"),
    ("inat2018", "iNaturalist 2018, ResNet-50 from scratch, 200 + 10 epochs, batch 256 (needs --data with the lists)"),
    ("places-lt", "Places-LT, ImageNet-pretrained ResNet-152 (--pretrained), last block trained, 90 + 30 epochs, batch 512"),
    ("lift-imagenet-lt", "ImageNet-LT, LIFT's recipe: CLIP ViT-B/16 (--pretrained) with AdaptFormer, 10 epochs, batch 128, GCL-E for LIFT's loss"),
    ("lift-places-lt", "Places-LT, LIFT's recipe: CLIP ViT-B/16 (--pretrained) with AdaptFormer, 10 epochs, batch 128, GCL-E for LIFT's loss"),
    ("lift-inat2018", "iNaturalist 2018, LIFT's recipe: CLIP ViT-B/16 (--pretrained) with AdaptFormer, 20 epochs, batch 128, GCL-E for LIFT's loss"),
];

// Where each number of the large-scale presets comes from.
const GCL_ISSUE_2: &str = "GCL authors, github.com/Keke921/GCLLoss/issues/2";
const GCL_PLACES_1: &str = "GCL authors' Places-LT/pla_train_backbone.py";
const GCL_PLACES_2: &str = "GCL authors' Places-LT/pla_train_classifier.py";
const MISLAS_IN: &str = "MiSLAS config/imagenet/imagenet_resnet50_stage1_mixup.yaml (GCL builds on MiSLAS)";
const MISLAS_INA: &str = "MiSLAS config/ina2018/ina2018_resnet50_stage1_mixup.yaml (GCL builds on MiSLAS)";
const LIFT: &str = "LIFT (Shi et al., ICML 2024) configs/model/clip_vit_b16.yaml with `adaptformer True` (its README, Reproduction)";
const LIFT_TRAINER: &str = "LIFT's trainer.py";
const CB_LISTS: &str = "the benchmark's list file as classifier-balancing and MiSLAS ship it; found in --data or given with --train-list etc.";

/// The source of each setting of a preset that is not gcl's own default, by `section.key`:
/// `gcl config --preset P` prints them as comments.
pub fn preset_notes(name: &str) -> Vec<(&'static str, String)> {
    let n = |k: &'static str, v: &str| (k, v.to_string());
    let gcl_stage1 = |mislas: &str, wd: &str, test_list: &str| {
        vec![
            n("data.dataset", "the benchmarks ship as list files (relative/path label)"),
            n("data.train_list", CB_LISTS),
            n("data.test_list", test_list),
            n("data.train_transform.name", &format!("RandomResizedCrop(224) + flip + ColorJitter(0.4, 0.4, 0.4): {mislas} datasets/")),
            n("data.test_transform.name", "Resize(256) + CenterCrop(224): MiSLAS and classifier-balancing"),
            n("model.arch", "ResNet-50: the paper's Table 3"),
            n("stage1.epochs", &format!("200: {GCL_ISSUE_2} (\"all the methods ... with 200 epochs\")")),
            n("stage1.batch_size", &format!("256: {mislas}")),
            n("stage1.lr", &format!("0.1 for batch 256: {mislas}")),
            n("stage1.lr_batch", "the lr scales linearly with the batch size (Goyal et al. 2017)"),
            n("stage1.schedule", &format!("cosine, no warm-up: {mislas}")),
            n("stage1.warmup_fraction", &format!("no warm-up: {mislas}")),
            n("stage1.weight_decay", &format!("{wd}: {mislas}")),
            n("stage1.mixup_alpha", &format!("0.2: {mislas}")),
            n("stage1.loss.s", &format!("30: {GCL_ISSUE_2}")),
            n("stage1.loss.m", &format!("0: {GCL_ISSUE_2}")),
            n("stage1.loss.noise_mul", &format!("0.5: {GCL_ISSUE_2}")),
            n("stage2.epochs", "not published for GCL; 10 as MiSLAS's stage 2 (an assumption)"),
            n("stage2.batch_size", &format!("not published for GCL; 256 as {mislas}")),
            n("stage2.lr", "not published for GCL; gcl's CIFAR value 0.02 for batch 64, scaled by lr_batch (an assumption)"),
            n("stage2.lr_batch", "the lr scales linearly with the batch size"),
            n("stage2.mixup", &format!("off: {GCL_ISSUE_2} (\"stage 2 might be better without mixup\"); MiSLAS stage 2 has none")),
            n("stage2.sampler", &format!("CBEN: {GCL_ISSUE_2}")),
            n("stage2.method.loss.s", &format!("20: {GCL_ISSUE_2}")),
            n("stage2.method.loss.m", &format!("0.1: {GCL_ISSUE_2}")),
            n("stage2.method.loss.noise_mul", &format!("0.5: {GCL_ISSUE_2}")),
            n("stage2.method.loss.focal_gamma", &format!("1: {GCL_ISSUE_2}")),
        ]
    };
    match name {
        "imagenet-lt" => {
            let mut v = gcl_stage1(MISLAS_IN, "5e-4", CB_LISTS);
            v.push(n("data.val_list", &format!("{CB_LISTS}; selects the best epoch (results.json keeps it beside the final one)")));
            v
        }
        "inat2018" => {
            let test_list = "iNaturalist18_val.txt: the literature reports iNaturalist 2018's val set as its test set (no val list left)";
            let mut v = gcl_stage1(MISLAS_INA, "1e-4", test_list);
            v.push(n("data.normalize.mean", &format!("iNaturalist's own mean and std: {MISLAS_INA} datasets/ina2018.py")));
            v.push(n("data.normalize.std", "as the mean"));
            v
        }
        "places-lt" => vec![
            n("data.dataset", "the benchmarks ship as list files (relative/path label)"),
            n("data.train_list", CB_LISTS),
            n("data.val_list", &format!("{CB_LISTS}; selects the best epoch")),
            n("data.test_list", CB_LISTS),
            n("data.train_transform.name", &format!("RandomResizedCrop(224) + flip, no ColorJitter: the GCL authors' Places-LT/datasets/places.py")),
            n("model.arch", "ResNet-152 pretrained on ImageNet: the paper; classifier-balancing; the GCL authors' resnet152_fe"),
            n("model.pretrained", "torchvision's resnet152-b121ed2d.pth (give --pretrained FILE; cannot be downloaded here)"),
            n("model.freeze_through", &format!("layer4.1: {GCL_PLACES_1} trains only a fresh last Bottleneck (resnet152_fe has layer4 of 2 blocks)")),
            n("model.reinit", &format!("layer4.2, fresh and trained: {GCL_PLACES_1} (its `Block`, a Bottleneck(2048, 512))")),
            n("stage1.epochs", &format!("90: {GCL_PLACES_1}")),
            n("stage1.batch_size", &format!("512: {GCL_PLACES_1}")),
            n("stage1.lr", &format!("0.2 for batch 512: {GCL_PLACES_1}")),
            n("stage1.lr_batch", "the lr scales linearly with the batch size"),
            n("stage1.weight_decay", &format!("5e-4: {GCL_PLACES_1}")),
            n("stage1.warmup_fraction", &format!("5 warm-up epochs of 90: {GCL_PLACES_1}")),
            n("stage1.decay_at", &format!("x0.1 after epoch 60, x0.01 after epoch 80: {GCL_PLACES_1}")),
            n("stage1.mixup_alpha", &format!("0.2: {GCL_PLACES_1}")),
            n("stage1.loss.s", &format!("30: {GCL_PLACES_1}")),
            n("stage1.loss.m", &format!("0: {GCL_PLACES_1}")),
            n("stage1.loss.noise_mul", &format!("1.0 (not 0.5): {GCL_PLACES_1}")),
            n("stage2.epochs", &format!("30: {GCL_PLACES_2}")),
            n("stage2.batch_size", &format!("512: {GCL_PLACES_2}")),
            n("stage2.lr", &format!("cosine peak 0.002: {GCL_PLACES_2} sets 0.1 x 0.1 x lr x (1 + cos) with lr 0.1 on its one parameter group")),
            n("stage2.lr_batch", "the lr scales linearly with the batch size"),
            n("stage2.weight_decay", &format!("5e-4: {GCL_PLACES_2}")),
            n("stage2.mixup_alpha", &format!("1.0 (mixup_data's default): {GCL_PLACES_2}")),
            n("stage2.sampler", &format!("class-balanced (BalancedRS): {GCL_PLACES_2}")),
            n("stage2.method.loss.s", &format!("15: {GCL_PLACES_2}")),
            n("stage2.method.loss.m", &format!("0.1: {GCL_PLACES_2}")),
            n("stage2.method.loss.noise_mul", &format!("1.0: {GCL_PLACES_2}")),
            n("stage2.method.loss.focal_gamma", &format!("1: {GCL_PLACES_2}")),
        ],
        "lift-imagenet-lt" | "lift-places-lt" | "lift-inat2018" => vec![
            n("data.dataset", "the benchmarks ship as list files (relative/path label)"),
            n("data.train_list", CB_LISTS),
            n(
                "data.test_list",
                &if name == "lift-inat2018" { format!("{CB_LISTS}; iNaturalist 2018's val set is its test set, as LIFT's datasets/inat2018.py reads it") } else { CB_LISTS.to_string() },
            ),
            n("data.train_transform.name", &format!("RandomResizedCrop(224) + flip: {LIFT_TRAINER}")),
            n("data.test_transform.name", &format!("Resize(224 x 8 / 7 = 256) + CenterCrop(224), without test-time ensembling: {LIFT_TRAINER}")),
            n("data.normalize.mean", &format!("CLIP's mean and std: {LIFT_TRAINER}")),
            n("data.normalize.std", "as the mean"),
            n("model.arch", &format!("CLIP ViT-B/16: {LIFT}; gcl's features are the projected 512-d embedding, LIFT's head reads the 768-d ln_post output (a difference)")),
            n("model.pretrained", "OpenAI's or OpenCLIP's ViT-B-16 state dict (give --pretrained FILE; cannot be downloaded here); OpenAI's weights want clip_vit_b_16_quickgelu"),
            n("model.tune.name", &format!("adaptformer, width by LIFT's rule 2^floor(log2(C / 2L)) (32 for 1000 classes): {LIFT} and models/peft_vit.py")),
            n("model.head_init", &format!("the CLIP text features of each class's prompt: {LIFT}, init_head: text_feat (class-means is LIFT's text-free class_mean)")),
            n("model.text.templates", "\"a photo of a {}.\": LIFT's models/models.py"),
            n(
                "model.text.class_names",
                &if name == "lift-inat2018" {
                    "iNaturalist's categories.json (a list of {\"name\": ...} by label): LIFT's datasets/iNaturalist18/; beside the lists in --data".to_string()
                } else {
                    format!("LIFT's datasets/{}/classnames.txt (`folder name` lines); beside the lists in --data", if name == "lift-imagenet-lt" { "ImageNet_LT" } else { "Places_LT" })
                },
            ),
            n("stage1.epochs", &if name == "lift-inat2018" { format!("20: LIFT's README (num_epochs 20 for iNaturalist 2018)") } else { format!("10: {LIFT}") }),
            n("stage1.batch_size", &format!("128: {LIFT}")),
            n("stage1.lr", &format!("0.01: {LIFT}")),
            n("stage1.schedule", &format!("cosine over the epochs, no warm-up (CosineAnnealingLR): {LIFT_TRAINER}")),
            n("stage1.warmup_fraction", &format!("no warm-up: {LIFT_TRAINER}")),
            n("stage1.weight_decay", &format!("5e-4: {LIFT}")),
            n("stage1.mixup", &format!("off: {LIFT_TRAINER} has no mixup")),
            n("stage1.loss.s", "30: GCL's scale, and LIFT's CosineClassifier's (LIFT's models/classifiers.py, scale=30)"),
            n("stage1.loss.noise_mul", "0.5: GCL's default; GCL-E replaces LIFT's logit-adjusted loss (--loss logit-adjusted gives LIFT's)"),
            n("stage2.epochs", "0: LIFT has one stage"),
        ],
        _ => Vec::new(),
    }
}

/// The settings as TOML with `notes` (by `section.key`) as end-of-line comments.
/// Notes on settings the TOML lacks (unset options) come first, as comment lines.
pub fn annotate(toml: &str, notes: &[(&str, String)]) -> String {
    let mut section = String::new();
    let mut out = String::new();
    let mut used = Vec::new();
    for line in toml.lines() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = h.to_string();
        }
        out.push_str(line);
        if let Some((key, _)) = t.split_once(" = ") {
            let full = if section.is_empty() { key.to_string() } else { format!("{section}.{key}") };
            if let Some((k, note)) = notes.iter().find(|(k, _)| *k == full) {
                out.push_str(&format!("  # {note}"));
                used.push(*k);
            }
        }
        out.push('\n');
    }
    let unset: String = notes.iter().filter(|(k, _)| !used.contains(k)).map(|(k, note)| format!("# {k} (not set): {note}\n")).collect();
    unset + &out
}

fn base() -> Config {
    Config {
        data: DataConfig::default(),
        model: ModelConfig::default(),
        stage1: Stage1Config::default(),
        stage2: Stage2Config::default(),
        run: RunConfig::default(),
        fitted: None,
    }
}

pub fn preset(name: &str) -> Result<Config> {
    let mut c = base();
    match name {
        "fmnist-lt-quick" => {
            c.stage1.epochs = 12;
            c.stage2.epochs = 3;
        }
        "fmnist-lt" => {
            c.stage1.epochs = 20;
            c.stage2.epochs = 5;
        }
        "cifar10-lt" => c.data.dataset = DatasetKind::Cifar10,
        "cifar100-lt" => c.data.dataset = DatasetKind::Cifar100,
        "imagenet-lt" | "inat2018" => {
            let (prefix, test, val) = if name == "imagenet-lt" {
                ("ImageNet_LT", "ImageNet_LT_test.txt", Some("ImageNet_LT_val.txt"))
            } else {
                ("iNaturalist18", "iNaturalist18_val.txt", None)
            };
            c.data.dataset = DatasetKind::List;
            c.data.train_list = Some(format!("{prefix}_train.txt").into());
            c.data.test_list = Some(test.into());
            c.data.val_list = val.map(Into::into);
            c.data.train_transform = Some(TrainTransform::ResizedCrop { size: 224, scale: [0.08, 1.0], ratio: [3.0 / 4.0, 4.0 / 3.0], jitter: Some([0.4, 0.4, 0.4]) });
            (c.data.test_transform, c.data.color) = (Some(TestTransform::ResizeCrop { resize: 256, size: 224 }), Some(Color::Rgb));
            if name == "inat2018" {
                c.data.normalize = Some(NormalizeSetting::Fixed { mean: [0.466, 0.471, 0.380], std: [0.195, 0.194, 0.192] });
            }
            c.model.arch = Some("resnet50".into());
            let s1 = &mut c.stage1;
            (s1.epochs, s1.batch_size, s1.lr, s1.lr_batch, s1.schedule, s1.warmup_fraction) = (200, 256, 0.1, Some(256), Schedule::Cosine, 0.0);
            s1.weight_decay = if name == "imagenet-lt" { 5e-4 } else { 1e-4 };
            s1.mixup_alpha = 0.2;
            s1.loss = LossConfig::GclE(GclParams { s: 30.0, m: 0.0, noise_mul: 0.5, focal_gamma: None, cloud: CloudForm::Log, ..Default::default() });
            let s2 = &mut c.stage2;
            (s2.epochs, s2.batch_size, s2.lr, s2.lr_batch, s2.mixup, s2.sampler) = (10, 256, 0.02, Some(64), false, Sampler::Cben);
            s2.weight_decay = s1.weight_decay;
            s2.method = Stage2Method::Retrain { loss: gcl_stage2_loss() };
        }
        "places-lt" => {
            c.data.dataset = DatasetKind::List;
            c.data.train_list = Some("Places_LT_train.txt".into());
            c.data.val_list = Some("Places_LT_val.txt".into());
            c.data.test_list = Some("Places_LT_test.txt".into());
            c.data.train_transform = Some(TrainTransform::imagenet(224));
            (c.data.test_transform, c.data.color) = (Some(TestTransform::ResizeCrop { resize: 256, size: 224 }), Some(Color::Rgb));
            c.model.arch = Some("resnet152".into());
            c.model.freeze_through = Some("layer4.1".into());
            c.model.reinit = vec!["layer4.2".into()];
            let s1 = &mut c.stage1;
            (s1.epochs, s1.batch_size, s1.lr, s1.lr_batch, s1.weight_decay) = (90, 512, 0.2, Some(512), 5e-4);
            (s1.warmup_fraction, s1.decay_at, s1.mixup_alpha) = (5.0 / 90.0, vec![60.0 / 90.0, 80.0 / 90.0], 0.2);
            s1.loss = LossConfig::GclE(GclParams { s: 30.0, m: 0.0, noise_mul: 1.0, focal_gamma: None, cloud: CloudForm::Log, ..Default::default() });
            let s2 = &mut c.stage2;
            (s2.epochs, s2.batch_size, s2.lr, s2.lr_batch, s2.weight_decay) = (30, 512, 0.002, Some(512), 5e-4);
            (s2.mixup, s2.mixup_alpha, s2.sampler) = (true, 1.0, Sampler::ClassBalanced);
            s2.method = Stage2Method::Retrain { loss: LossConfig::GclE(GclParams { s: 15.0, m: 0.1, noise_mul: 1.0, focal_gamma: Some(1.0), cloud: CloudForm::Log, ..Default::default() }) };
        }
        "lift-imagenet-lt" | "lift-places-lt" | "lift-inat2018" => {
            let (prefix, test, names) = match name {
                "lift-imagenet-lt" => ("ImageNet_LT", "ImageNet_LT_test.txt", "classnames.txt"),
                "lift-places-lt" => ("Places_LT", "Places_LT_test.txt", "classnames.txt"),
                _ => ("iNaturalist18", "iNaturalist18_val.txt", "categories.json"),
            };
            c.data.dataset = DatasetKind::List;
            c.data.train_list = Some(format!("{prefix}_train.txt").into());
            c.data.test_list = Some(test.into());
            c.model.text.class_names = Some(names.into());
            c.data.train_transform = Some(TrainTransform::imagenet(224));
            (c.data.test_transform, c.data.color) = (Some(TestTransform::ResizeCrop { resize: 256, size: 224 }), Some(Color::Rgb));
            c.data.normalize = Some(NormalizeSetting::Fixed { mean: [0.48145466, 0.4578275, 0.40821073], std: [0.26862954, 0.26130258, 0.27577711] });
            c.model.arch = Some("clip_vit_b_16".into());
            c.model.tune = crate::model::vit::Tune::Adaptformer { width: 0 };
            c.model.head_init = crate::model::HeadInit::Text;
            let s1 = &mut c.stage1;
            let epochs = if name == "lift-inat2018" { 20 } else { 10 };
            (s1.epochs, s1.batch_size, s1.lr, s1.lr_batch, s1.schedule, s1.warmup_fraction) = (epochs, 128, 0.01, None, Schedule::Cosine, 0.0);
            (s1.weight_decay, s1.momentum, s1.mixup) = (5e-4, 0.9, false);
            s1.loss = LossConfig::GclE(GclParams { s: 30.0, m: 0.0, noise_mul: 0.5, focal_gamma: None, cloud: CloudForm::Log, ..Default::default() });
            c.stage2.epochs = 0;
        }
        _ => bail!("unknown preset `{name}`; the presets are: {}", PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")),
    }
    Ok(c)
}

impl Config {
    /// A TOML file layered over `self`: keys it gives replace ours, the rest stay.
    pub fn merge_file(self, path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let over: toml::Table = text.parse().with_context(|| format!("{}: not valid TOML", path.display()))?;
        self.merge_table(over).with_context(|| format!("in config file {}", path.display()))
    }

    /// Settings in a TOML table layered over `self`.
    pub fn merge_table(self, over: toml::Table) -> Result<Config> {
        let c = self.merge_unchecked(over)?;
        c.validate()?;
        Ok(c)
    }

    /// `merge_table` without the checks of the whole (for a step of several `--set`s).
    fn merge_unchecked(self, over: toml::Table) -> Result<Config> {
        let mut me = toml::Table::try_from(&self)?;
        let defaults = toml::Table::try_from(self.resolved())?;
        let fitted = self.fitted.clone();
        merge(&mut me, over, Some(&defaults));
        let mut c: Config = toml::Value::Table(me).try_into().map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message()))?;
        c.fitted = fitted;
        Ok(c)
    }

    /// `section.key=value` (value in TOML syntax; a bare word is taken as a string).
    pub fn set(self, assignment: &str) -> Result<Config> {
        self.set_all(&[assignment.to_string()])
    }

    /// Several `--set`s at once: checked together, so that settings that only fit together
    /// (a ViT's patch and image size, say) can be given in any order.
    pub fn set_all(self, assignments: &[String]) -> Result<Config> {
        if assignments.is_empty() {
            return Ok(self);
        }
        // Each path is checked against the settings resolved after the ones before it (an
        // unset table, a transform left to the dataset's default, has the default's fields; a
        // loss switched by an earlier --set has the new loss's), the whole once at the end.
        let mut running = self;
        for assignment in assignments {
            let (key, value) = assignment.split_once('=').with_context(|| format!("--set expects section.key=value, got `{assignment}`"))?;
            let value = value.trim();
            let parsed: toml::Value = match format!("v = {value}").parse::<toml::Table>() {
                Ok(mut t) => t.remove("v").unwrap(),
                Err(_) => toml::Value::String(value.to_string()),
            };
            let parts: Vec<&str> = key.trim().split('.').collect();
            let schema = serde_json::to_value(running.resolved())?;
            if !has_path(&schema, &parts) {
                bail!("--set {assignment}: {}", not_a_setting(&schema, &parts));
            }
            let mut one = toml::Table::new();
            let mut cur = &mut one;
            for p in &parts[..parts.len() - 1] {
                cur = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default())).as_table_mut().unwrap();
            }
            cur.insert(parts[parts.len() - 1].to_string(), parsed);
            running = running.merge_unchecked(one).with_context(|| format!("--set {assignment}"))?;
        }
        let given = assignments.iter().map(|a| format!("--set {a}")).collect::<Vec<_>>().join(" ");
        running.validate().with_context(|| given)?;
        Ok(running)
    }

    /// Fills what the settings leave unset of the image recipe (`model.arch`, `data.color`,
    /// the transforms) from a sample of the training images (`data::fit`), for image-file
    /// datasets, and says in `fitted` what it chose and why. Settings that are set (by a
    /// preset, a file or a flag) stay as they are; the benchmark presets set them all.
    /// When the data cannot be read the settings stay unset (the run then says why).
    pub fn fit_to_data(self) -> Config {
        let d = &self.data;
        if !d.files() || !(self.model.arch.is_none() || self.fits_color() || d.train_transform.is_none() || d.test_transform.is_none()) {
            return self;
        }
        let mut sample = self.data.clone();
        sample.color = Some(Color::Rgb);
        match sample.load().and_then(|ds| crate::data::fit::ImageStats::sample(ds.train.as_ref())) {
            Ok(stats) => self.fit_to(&stats),
            Err(_) => self,
        }
    }

    /// Whether `data.color` is left to the data: unset, and no pretrained weights (which take
    /// three channels).
    fn fits_color(&self) -> bool {
        self.data.color.is_none() && self.model.pretrained.is_none()
    }

    /// [`Config::fit_to_data`] for images that look like `stats`.
    pub fn fit_to(mut self, stats: &crate::data::fit::ImageStats) -> Config {
        let fit_color = self.fits_color();
        let (mut train, mut test) = stats.transforms();
        let mut chose = Vec::new();
        // A CLIP tower sees what CLIP was trained on (OpenCLIP's image_transform): its size,
        // bicubic resizing and OpenAI's mean and std.
        let clip = self.model.vit().filter(|s| s.layout == crate::model::vit::Layout::Clip);
        if let Some(spec) = clip {
            let size = spec.image_size as usize;
            (train, test) = (TrainTransform::imagenet(size), TestTransform::Clip { size });
            if self.data.normalize.is_none() {
                let n = Normalize::CLIP;
                self.data.normalize = Some(NormalizeSetting::Fixed { mean: n.mean, std: n.std });
                chose.push("data.normalize = CLIP's mean and std".to_string());
            }
        }
        let d = &mut self.data;
        if fit_color {
            d.color = Some(stats.color());
            chose.push(format!("data.color = {}", if stats.color() == Color::Grey { "grey" } else { "rgb" }));
        }
        if d.train_transform.is_none() {
            d.train_transform = Some(train);
            chose.push(format!("data.train_transform = {}", train.describe()));
        }
        if d.test_transform.is_none() {
            d.test_transform = Some(test);
            chose.push(format!("data.test_transform = {}", test.describe()));
        }
        if self.model.arch.is_none() {
            // The side the network sees decides: the CIFAR ResNet keeps the resolution (no
            // down-sampling stem), which small images need and large ones cannot afford.
            let side = self.data.train_transform.and_then(|t| t.size()).unwrap_or(stats.side());
            let (arch, why) = if side <= crate::data::fit::SMALL_SIDE {
                (crate::model::CIFAR, format!("ResNet-{} without a down-sampling stem, for {side} px inputs", self.model.depth))
            } else {
                ("resnet18", format!("the ImageNet ResNet-18, for {side} px inputs"))
            };
            self.model.arch = Some(arch.into());
            chose.push(format!("model.arch = {arch} ({why})"));
        }
        if !chose.is_empty() {
            self.fitted = Some(format!(
                "{}; chose {} (set any of them to override, e.g. --arch, --set data.color=rgb, --set data.train_transform.size=N)",
                stats.describe(),
                chose.join(", ")
            ));
        }
        self
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// The settings with every per-dataset default written out.
    pub fn resolved(&self) -> Config {
        let mut model = self.model.clone();
        model.arch = Some(model.arch().to_string());
        Config { data: self.data.resolved(), model, ..self.clone() }
    }

    /// Every setting against its valid range (all reported at once), then the settings'
    /// agreement with each other. Runs before any work starts.
    pub fn validate(&self) -> Result<()> {
        let mut r = crate::util::Ranges::default();
        let inf = f64::INFINITY;
        r.within("data.ratio", self.data.ratio, 1.0, inf);
        r.check("data.max_pixels", self.data.max_pixels, self.data.max_pixels > 0, "a whole number > 0");
        r.check("data.val_fraction", self.data.val_fraction, (0.0..0.9).contains(&self.data.val_fraction), "0 (none) to below 0.9");
        if let Some(t) = &self.data.train_transform {
            t.check_ranges("data.train_transform", &mut r);
        }
        if let Some(t) = &self.data.test_transform {
            t.check_ranges("data.test_transform", &mut r);
        }
        if let Some(NormalizeSetting::Fixed { mean, std }) = self.data.normalize {
            r.check("data.normalize.mean", format!("{mean:?}"), mean.iter().all(|m| m.is_finite()), "finite numbers");
            r.check("data.normalize.std", format!("{std:?}"), std.iter().all(|&s| s > 0.0 && s.is_finite()), "positive numbers");
        }
        if let Some(w) = self.run.workers {
            r.check("run.workers", w, w <= 256, "0 (the training thread) to 256");
        }
        let d = self.model.depth;
        if self.model.arch() == crate::model::CIFAR {
            r.check("model.depth", d, d >= 8 && (d - 2) % 6 == 0, "6n + 2: 20, 32, 44, 56, 110, ...");
        }
        let s1 = &self.stage1;
        // 0: the starting model is evaluated as it is (CLIP zero-shot with model.head_init =
        // "text", a pretrained backbone with class means).
        r.check(
            "stage1.epochs",
            s1.epochs,
            s1.epochs >= 1 || self.model.head_init != crate::model::HeadInit::Random,
            "at least 1 (0, evaluating the starting model, needs a classifier that does not start random: model.head_init)",
        );
        r.check("stage1.batch_size", s1.batch_size, s1.batch_size >= 2, "at least 2 (BatchNorm needs two images)");
        r.positive("stage1.lr", s1.lr);
        if let Some(b) = s1.lr_batch {
            r.check("stage1.lr_batch", b, b >= 1, "at least 1");
        }
        r.unit_fraction("stage1.momentum", s1.momentum);
        r.within("stage1.weight_decay", s1.weight_decay, 0.0, inf);
        r.within("stage1.warmup_fraction", s1.warmup_fraction, 0.0, 1.0);
        for (i, &f) in s1.decay_at.iter().enumerate() {
            r.within(format!("stage1.decay_at[{i}]"), f, 0.0, 1.0);
        }
        r.check("stage1.crop_pad", s1.crop_pad, (0..=64).contains(&s1.crop_pad), "0 to 64 pixels");
        if s1.mixup {
            r.positive("stage1.mixup_alpha", s1.mixup_alpha);
        }
        s1.loss.check_ranges("stage1.loss", &mut r);
        s1.diversity.check_ranges("stage1.diversity", &mut r);
        let s2 = &self.stage2;
        r.check("stage2.batch_size", s2.batch_size, s2.batch_size >= 2, "at least 2");
        r.positive("stage2.lr", s2.lr);
        if let Some(b) = s2.lr_batch {
            r.check("stage2.lr_batch", b, b >= 1, "at least 1");
        }
        r.unit_fraction("stage2.momentum", s2.momentum);
        r.within("stage2.weight_decay", s2.weight_decay, 0.0, inf);
        r.check("stage2.crop_pad", s2.crop_pad, (0..=64).contains(&s2.crop_pad), "0 to 64 pixels");
        if s2.mixup {
            r.positive("stage2.mixup_alpha", s2.mixup_alpha);
        }
        match s2.method {
            Stage2Method::Retrain { loss } => loss.check_ranges("stage2.method.loss", &mut r),
            Stage2Method::TauNorm { tau } => r.within("stage2.method.tau", tau, 0.0, inf),
            Stage2Method::None | Stage2Method::Crt | Stage2Method::Lws | Stage2Method::Ncm => {}
        }
        let run = &self.run;
        for &e in &run.snapshots {
            r.check("run.snapshots", e, (1..=self.stage1.epochs).contains(&e), &format!("stage-1 epochs, 1 to {}", self.stage1.epochs));
        }
        r.check("run.probe_per_class", run.probe_per_class, run.probe_per_class >= 1, "at least 1");
        if let Some(b) = run.eval_batch_size {
            r.check("run.eval_batch_size", b, b >= 1, "at least 1");
        }
        r.check(
            "run.few_below",
            run.few_below,
            run.few_below <= run.many_above,
            &format!("at most run.many_above ({}): few-shot classes have fewer images than many-shot ones", run.many_above),
        );
        if let Tte::FiveCrop { expand } | Tte::TenCrop { expand } = self.data.tte {
            r.check("data.tte.expand", expand, expand <= 1024, "0 to 1024 pixels (LIFT: 24 for 224 px crops)");
        }
        if let Some(t) = run.posthoc_tau {
            r.within("run.posthoc_tau", t, f64::NEG_INFINITY, inf);
        }
        r.finish()?;
        self.model.check()?;
        crate::runtime::parse_device(&self.run.device)?;
        let head = self.stage1.loss.head();
        match self.stage2.method {
            Stage2Method::Retrain { loss } if self.stage2.epochs > 0 && loss.head() != head => bail!(
                "stage 2 re-trains the stage-1 classifier, a {head:?} one for stage1.loss `{}`, but stage2 loss `{}` \
                 needs a {:?} one; pick a matching loss, or stage2.method = {{ name = \"crt\" }} or \"none\"",
                self.stage1.loss.name(),
                loss.name(),
                loss.head()
            ),
            Stage2Method::Crt | Stage2Method::TauNorm { .. } | Stage2Method::Lws if head != crate::model::HeadKind::Linear => bail!(
                "stage2.method `{}` works on a linear classifier; stage1.loss `{}` trains a cosine one",
                self.stage2.method.name(),
                self.stage1.loss.name()
            ),
            _ => {}
        }
        Ok(())
    }
}

/// `over` layered over `base`, table into table. A table that `base` lacks (an unset
/// setting) starts from its value in `defaults` (the settings resolved), so a table naming
/// only some fields takes the rest from the defaults.
fn merge(base: &mut toml::Table, over: toml::Table, defaults: Option<&toml::Table>) {
    for (k, v) in over {
        let default = defaults.and_then(|d| d.get(&k)).and_then(toml::Value::as_table);
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) if !changes_variant(b, &o) => merge(b, o, default),
            (None, toml::Value::Table(o)) => match default {
                Some(d) if !changes_variant(d, &o) => {
                    let mut t = d.clone();
                    merge(&mut t, o, None);
                    base.insert(k, toml::Value::Table(t));
                }
                _ => {
                    base.insert(k, toml::Value::Table(o));
                }
            },
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Why `parts` is not a setting: the longest part of it that is one, and the fields there.
fn not_a_setting(schema: &serde_json::Value, parts: &[&str]) -> String {
    let mut at = schema;
    for (i, p) in parts.iter().enumerate() {
        match at.get(*p) {
            Some(v) if i + 1 < parts.len() && v.is_object() => at = v,
            Some(_) if i + 1 == parts.len() => break,
            _ => {
                let fields: Vec<&str> = at.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
                let key = parts.join(".");
                return match (i, fields.is_empty()) {
                    (0, _) => format!("`{key}` is not a setting; the sections are: {}", fields.join(", ")),
                    (_, true) => format!("`{key}` is not a setting: `{}` has no fields", parts[..i].join(".")),
                    _ => format!("`{key}` is not a setting: `{}` has the fields {}", parts[..i].join("."), fields.join(", ")),
                };
            }
        }
    }
    format!("`{}` is not a setting (see `gcl config` for all of them)", parts.join("."))
}

/// A tagged table (`loss = { name = ... }`, `split = { rule = ... }`) switched to another
/// variant is replaced whole: the old variant's parameters do not belong to the new one.
fn changes_variant(base: &toml::Table, over: &toml::Table) -> bool {
    ["name", "rule"].iter().any(|tag| matches!((base.get(*tag), over.get(*tag)), (Some(a), Some(b)) if a != b))
}

/// Whether `parts` names a setting of the schema `t` (the settings as JSON, where unset
/// optional settings are present as null), so every optional setting is known without a list.
fn has_path(t: &serde_json::Value, parts: &[&str]) -> bool {
    match parts.split_first() {
        None => true,
        Some((first, rest)) => t.get(*first).is_some_and(|v| has_path(v, rest)),
    }
}
