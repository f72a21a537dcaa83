//! Backbones and classifier heads, with RIDE-style experts (`model.experts`).
//!
//! A backbone maps images to pooled features and has a frozen (inference) form; the
//! classifier head maps features to logits. `build` is the one place where the settings
//! choose a backbone, and where the kernels it uses are fixed.
pub mod clip_text;
pub mod flops;
pub mod head;
pub mod imagenet;
pub mod pth;
pub mod resnet;
pub mod tokenizer;
pub mod vit;
pub mod weights;

pub use head::{CosineHead, Head, HeadKind};
pub use imagenet::Arch;
pub use resnet::CifarResNet;

use crate::kernels::Kernels;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::{nn, Tensor};

/// The settings' `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `cifar-resnet` (depth below), a torchvision architecture: resnet10, resnet18,
    /// resnet34, resnet50, resnet101, resnet152, resnext50_32x4d, vit_b_16, vit_b_32,
    /// vit_l_16, vit_l_32; or `vit`, a ViT of the shape `model.vit` gives. Unset: chosen from
    /// the data (`data::fit`): the CIFAR ResNet for small images, resnet18 for larger ones.
    pub arch: Option<String>,
    /// CIFAR ResNet depth, 6n + 2.
    pub depth: usize,
    /// A torchvision state dict (`.pth` or `.safetensors`) that the backbone starts from
    /// (its `fc` is left out: the classifier is trained for this dataset's classes).
    pub pretrained: Option<PathBuf>,
    /// Partial fine-tuning: the modules up to and including this one (`stem`, `layerS`,
    /// `layerS.B`) are frozen, BatchNorm statistics too.
    pub freeze_through: Option<String>,
    /// Modules (`layerS` or `layerS.B`) that keep fresh weights instead of the pretrained ones.
    pub reinit: Vec<String>,
    /// Experts (RIDE, Wang et al. 2021): the last `expert_stages` stages and the classifier
    /// are repeated once per expert, on the shared earlier stages; the test logits are the
    /// experts' mean. 1: a single model.
    pub experts: usize,
    /// How many of the last stages each expert has of its own (RIDE: 2, i.e. layer2 + layer3
    /// of the CIFAR ResNets, layer3 + layer4 of the ImageNet ones).
    pub expert_stages: usize,
    /// The experts' stages' width relative to the single model's, rounded to a multiple of 8
    /// channels (RIDE's `reduce_dimension`: 0.75, i.e. 24 + 48 channels for CIFAR, 192 + 384
    /// planes for ImageNet, to keep 3 experts' compute near one model's).
    pub expert_width: f64,
    /// The shape of `model.arch = "vit"` (patch, width, depth, heads, mlp, image_size,
    /// layout, embed, quick_gelu).
    pub vit: vit::VitSpec,
    /// Which of a ViT's weights training changes: full, linear, bitfit, lora, adaptformer,
    /// ssf, vpt (`vit::Tune`).
    pub tune: vit::Tune,
    /// Where the classifier starts: `random`; `class-means`: each class's weight vector is
    /// the mean of its training images' features under the starting backbone (test
    /// transform, no augmentation), L2-normalised, a bias of 0 (LIFT's initialisation without
    /// text; Shi et al. 2024); `text`: each class's CLIP text embedding of its prompts
    /// (`model.text`; the text tower of `model.pretrained`, LIFT's default); `embeddings`: the
    /// rows of `model.class_embeddings`.
    pub head_init: HeadInit,
    /// A classes x feature-dimension matrix (`.npy`, `.safetensors` or `.pth` holding one
    /// tensor, or text: one row of numbers per line) that `head_init = "embeddings"` starts
    /// the classifier from.
    pub class_embeddings: Option<PathBuf>,
    /// Prompts, class names and heads of CLIP's text tower (`head_init = "text"`).
    pub text: clip_text::TextConfig,
}

/// `model.head_init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HeadInit {
    #[default]
    Random,
    ClassMeans,
    Text,
    Embeddings,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: None,
            depth: 32,
            pretrained: None,
            freeze_through: None,
            reinit: Vec::new(),
            experts: 1,
            expert_stages: 2,
            expert_width: 0.75,
            vit: vit::VitSpec::default(),
            tune: vit::Tune::Full,
            head_init: HeadInit::Random,
            class_embeddings: None,
            text: clip_text::TextConfig::default(),
        }
    }
}

/// The experts of a backbone (`model.experts`, `model.expert_stages`, `model.expert_width`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Experts {
    pub count: usize,
    /// Stages of each expert's own (0 with a single expert: all stages are the model's).
    pub stages: usize,
    pub width: f64,
}

impl Experts {
    pub const ONE: Experts = Experts { count: 1, stages: 0, width: 1.0 };

    /// The channels of a stage that would have `full` channels in the single model: as they
    /// are with one expert, else `full x width` rounded to a multiple of 8 (at least 8).
    pub fn channels(&self, full: i64) -> i64 {
        if self.count == 1 {
            return full;
        }
        (((full as f64 * self.width) / 8.0).round() as i64).max(1) * 8
    }

    /// Is stage `s` (0-based) of `n` one that each expert has of its own?
    pub fn owns(&self, s: usize, n: usize) -> bool {
        self.count > 1 && s + self.stages >= n
    }

    /// How the architecture's name records the experts (checkpoints compare it).
    pub fn suffix(&self) -> String {
        if self.count == 1 {
            String::new()
        } else {
            format!(" with {} experts ({} stages each, width {})", self.count, self.stages, self.width)
        }
    }
}

/// `model.arch` of the CIFAR ResNets.
pub const CIFAR: &str = "cifar-resnet";

impl ModelConfig {
    /// `model.arch`, or the CIFAR ResNet when it was left to the data and not yet chosen.
    pub fn arch(&self) -> &str {
        self.arch.as_deref().unwrap_or(CIFAR)
    }

    /// The settings for architecture `arch`, the rest default.
    pub fn of_arch(arch: &str) -> Self {
        ModelConfig { arch: Some(arch.to_string()), ..Default::default() }
    }

    /// The experts the settings ask for.
    pub fn experts(&self) -> Experts {
        if self.experts <= 1 {
            Experts::ONE
        } else {
            Experts { count: self.experts, stages: self.expert_stages, width: self.expert_width }
        }
    }

    /// The vision transformer asked for, and its shape; None for the ResNets.
    pub fn vit(&self) -> Option<vit::VitSpec> {
        match self.arch() {
            vit::SMALL => Some(self.vit),
            a => vit::VitSpec::of(a),
        }
    }

    /// The torchvision ResNet asked for; None for the CIFAR ResNet and the ViTs.
    pub fn imagenet_arch(&self) -> Result<Option<Arch>> {
        let arch = self.arch();
        if arch == CIFAR || self.vit().is_some() {
            return Ok(None);
        }
        match Arch::from_name(arch) {
            Some(a) => Ok(Some(a)),
            None => bail!(
                "model.arch = \"{}\" is not an architecture; the architectures are: {CIFAR}, {}, {}, {}",
                arch,
                Arch::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", "),
                vit::VitSpec::NAMES.join(", "),
                vit::SMALL
            ),
        }
    }

    /// The settings' agreement with the architecture.
    pub fn check(&self) -> Result<()> {
        if self.experts == 0 {
            bail!("model.experts = 0: a model has at least one expert (1 is the single model)");
        }
        match (self.head_init, &self.class_embeddings) {
            (HeadInit::Embeddings, None) => bail!("model.head_init = \"embeddings\" needs model.class_embeddings (--class-embeddings FILE)"),
            (HeadInit::Embeddings, Some(_)) | (_, None) => {}
            (_, Some(p)) => bail!("model.class_embeddings = {}: used by model.head_init = \"embeddings\" only (it is {:?})", p.display(), self.head_init),
        }
        // model.pretrained, the file the text tower comes from, is checked where it is read
        // (a preset names no file).
        if self.head_init == HeadInit::Text && self.vit().map(|s| s.layout) != Some(vit::Layout::Clip) {
            bail!("model.head_init = \"text\" takes CLIP's text tower from a whole CLIP state dict: it needs a CLIP image tower (model.arch = clip_vit_b_16, ...), not {}", self.arch());
        }
        if let Some(spec) = self.vit() {
            spec.check()?;
            if self.experts > 1 || self.freeze_through.is_some() || !self.reinit.is_empty() {
                bail!("model.experts, model.freeze_through and model.reinit apply to the ResNets, not to {}", self.arch());
            }
            return Ok(());
        }
        if self.tune != vit::Tune::Full {
            bail!("model.tune = {:?} applies to the vision transformers (model.arch = vit, vit_b_16, clip_vit_b_16, ...), not to {}", self.tune, self.arch());
        }
        let stages = if self.imagenet_arch()?.is_some() { 4 } else { 3 };
        if self.experts > 1 && !(1..stages).contains(&self.expert_stages) {
            bail!("model.expert_stages = {}: each expert has 1 to {} of the last stages of its own ({} has {stages}; the first is shared)", self.expert_stages, stages - 1, self.arch());
        }
        if !(self.expert_width > 0.0 && self.expert_width <= 4.0) {
            bail!("model.expert_width = {}: must be in (0, 4] (RIDE: 0.75)", self.expert_width);
        }
        match self.imagenet_arch()? {
            None => {
                if self.pretrained.is_some() || self.freeze_through.is_some() || !self.reinit.is_empty() {
                    bail!("model.pretrained, model.freeze_through and model.reinit apply to the torchvision architectures (model.arch = resnet50, ...), not to {CIFAR}");
                }
            }
            Some(a) => {
                for name in self.freeze_through.iter().chain(&self.reinit) {
                    if a.resolve(name).is_none() {
                        bail!("model: `{name}` is not a module of {} (it has stem, layer1 .. layer4 and their blocks, e.g. layer4.1)", a.name());
                    }
                }
            }
        }
        Ok(())
    }
}

/// A feature extractor.
pub trait Backbone {
    /// Pooled features (N x `feature_dim()`; with experts, theirs side by side). `train` selects BatchNorm's batch statistics
    /// (and updates the running ones); with `train = false` the stored ones are used.
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    fn feature_dim(&self) -> i64;
    /// Its convolutions' and matrix products' multiply-adds for one `h` x `w` image, in
    /// forward order, each marked with whether its weights train now (`flops`).
    fn ops(&self, h: i64, w: i64) -> Vec<flops::Op>;
    /// The inference form of the current weights (BatchNorm folded in, no gradients).
    /// Rebuild after any change to the weights or statistics.
    fn freeze(&self) -> Result<Box<dyn FrozenBackbone>>;
    /// The architecture's name, as checkpoints record it (e.g. `cifar-resnet32`).
    fn arch(&self) -> String;
    /// How many experts the features are the concatenation of (each `feature_dim() / experts()` wide).
    fn experts(&self) -> usize {
        1
    }
    /// The weights `model.tune` leaves as they were loaded (none unless a ViT is tuned).
    fn untuned(&self) -> Vec<Tensor> {
        Vec::new()
    }
    /// Freezes the modules up to and including `through` (partial fine-tuning).
    fn freeze_through(&mut self, through: &str) -> Result<()> {
        bail!("model.freeze_through = \"{through}\": {} has no modules to freeze by name", self.arch())
    }
}

/// A backbone's inference form: the same features as `features(x, false)`.
pub trait FrozenBackbone {
    fn features(&self, x: &Tensor) -> Result<Tensor>;
}

/// The backbone the settings ask for, its variables under `vs`.
/// (Frozen modules and pretrained weights are applied by [`weights::freeze`] and
/// [`weights::load_pretrained`] afterwards.)
/// `classes`: the classifier's (LIFT's adapter width follows it).
pub fn build_backbone(vs: &nn::Path, cfg: &ModelConfig, in_channels: i64, classes: i64, kernels: Kernels) -> Result<Box<dyn Backbone>> {
    if let Some(spec) = cfg.vit() {
        return Ok(Box::new(vit::Vit::new(vs, cfg.arch(), spec, in_channels, cfg.tune, classes)?));
    }
    Ok(match cfg.imagenet_arch()? {
        None => Box::new(CifarResNet::new(vs, cfg.depth, in_channels, kernels, cfg.experts())?),
        Some(a) => Box::new(imagenet::ResNet::new(vs, a, in_channels, kernels, cfg.experts())?),
    })
}

/// A backbone with a classifier head per expert. Variables live under `backbone.` and
/// `head.` (`head.E.` with several experts) in the var store, so a stage can train just one
/// of them.
///
/// With E experts the output is the mean of the experts' outputs. For cosine heads that mean
/// is itself a cosine classifier: (1/E) sum_e cos(f_e, w_ej) = cos(phi, omega_j) with
/// phi = [f_1/|f_1|, ..., f_E/|f_E|] / sqrt(E) and omega_j likewise from the w_ej, both unit
/// vectors; `embedding` and `class_weights` give phi and omega (what `gcl report` draws).
pub struct Classifier {
    pub backbone: Box<dyn Backbone>,
    pub heads: Vec<Head>,
}

impl Classifier {
    pub fn new(vs: &nn::Path, cfg: &ModelConfig, in_channels: i64, num_classes: i64, head: HeadKind, kernels: Kernels) -> Result<Self> {
        let backbone = build_backbone(&(vs / "backbone"), cfg, in_channels, num_classes, kernels)?;
        let e = backbone.experts();
        let dim = backbone.feature_dim() / e as i64;
        let heads = match e {
            1 => vec![Head::new(&(vs / "head"), dim, num_classes, head)],
            _ => (0..e).map(|i| Head::new(&(vs / "head" / i), dim, num_classes, head)).collect(),
        };
        Ok(Self { backbone, heads })
    }

    pub fn experts(&self) -> usize {
        self.heads.len()
    }

    /// Each expert's output (cosines for cosine heads) from the backbone's features.
    pub fn expert_outputs(&self, features: &Tensor) -> Vec<Tensor> {
        if self.heads.len() == 1 {
            return vec![self.heads[0].forward(features)];
        }
        let parts = features.chunk(self.heads.len() as i64, 1);
        self.heads.iter().zip(&parts).map(|(h, f)| h.forward(f)).collect()
    }

    /// The network's products for one `h` x `w` image (`flops`): the backbone's, then the
    /// heads' (which train whenever anything does).
    pub fn ops(&self, h: i64, w: i64) -> Vec<flops::Op> {
        [self.backbone.ops(h, w), self.head_ops()].concat()
    }

    fn head_ops(&self) -> Vec<flops::Op> {
        self.heads
            .iter()
            .map(|head| {
                let s = head.class_weights().size();
                flops::Op::linear(1, s[1], s[0], true)
            })
            .collect()
    }

    /// FLOPs per image of stage 1, stage 2 and evaluation, on `train` and `eval` image sizes
    /// (height, width).
    pub fn phases(&self, train: (i64, i64), eval: (i64, i64)) -> flops::Phases {
        flops::Phases::new(&self.backbone.ops(train.0, train.1), &self.head_ops(), &self.ops(eval.0, eval.1))
    }

    /// The experts' mean output.
    pub fn output(&self, features: &Tensor) -> Tensor {
        mean(self.expert_outputs(features))
    }

    /// Logits (cosines for the cosine head): the experts' mean.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.output(&self.backbone.features(x, train)?))
    }

    /// The features the output is a classifier of (see above): the backbone's with one
    /// expert or linear heads, else phi.
    pub fn embedding(&self, features: &Tensor) -> Tensor {
        match (&self.heads[..], self.heads[0].kind()) {
            ([_], _) | (_, HeadKind::Linear) => features.shallow_clone(),
            (_, HeadKind::Cosine) => {
                let parts: Vec<Tensor> = features.chunk(self.heads.len() as i64, 1).iter().map(|f| head::l2_normalize(f, 1)).collect();
                Tensor::cat(&parts, 1) / (self.heads.len() as f64).sqrt()
            }
        }
    }

    /// Each class's weight vector in the space of `embedding` (classes x its dimension): for
    /// linear heads the experts' rows side by side over E (their mean is the output).
    pub fn class_weights(&self) -> Tensor {
        let e = self.heads.len() as f64;
        match (&self.heads[..], self.heads[0].kind()) {
            ([h], _) => h.class_weights(),
            (hs, HeadKind::Cosine) => Tensor::cat(&hs.iter().map(|h| head::l2_normalize(&h.class_weights(), 1)).collect::<Vec<_>>(), 1) / e.sqrt(),
            (hs, HeadKind::Linear) => Tensor::cat(&hs.iter().map(Head::class_weights).collect::<Vec<_>>(), 1) / e,
        }
    }
}

/// How many weights a model has (BatchNorm's running statistics not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamCounts {
    pub total: i64,
    /// The backbone's weights that every expert uses (all of them for a single model).
    pub shared: i64,
    /// One expert's own: its stages and classifier (the classifier for a single model).
    pub per_expert: i64,
    pub experts: usize,
    /// The weights training changes (all but those `model.freeze_through` or `model.tune`
    /// leave as they are).
    #[serde(default)]
    pub trainable: i64,
}

/// The weights of the classifier in `vs` (`Classifier::new`'s names).
pub fn param_counts(vs: &nn::VarStore, experts: usize) -> ParamCounts {
    let (mut total, mut shared, mut first, mut trainable) = (0, 0, 0, 0);
    for (name, t) in vs.variables() {
        if name.contains("running_") {
            continue;
        }
        let n = t.numel() as i64;
        total += n;
        if t.requires_grad() {
            trainable += n;
        }
        match expert_of(&name) {
            None => shared += n,
            Some(0) => first += n,
            Some(_) => {}
        }
    }
    ParamCounts { total, shared, per_expert: first, experts, trainable }
}

/// The expert a variable belongs to: its own stages (`backbone.layerSs.E.`) and classifier
/// (`head.E.`; `head.` of a single model is expert 0's); None for the shared backbone.
fn expert_of(name: &str) -> Option<usize> {
    if let Some(rest) = name.strip_prefix("head.") {
        return Some(rest.split('.').next().and_then(|e| e.parse().ok()).unwrap_or(0));
    }
    let mut parts = name.strip_prefix("backbone.")?.split('.');
    let module = parts.next()?;
    (module.starts_with("layer") && module.ends_with('s')).then(|| parts.next()?.parse().ok())?
}

/// Each expert's blocks (`block` runs one) on the shared stages' output `h`, pooled, the
/// experts' features side by side (the one expert's as they are).
pub(crate) fn run_experts<B>(h: &Tensor, experts: &[Vec<B>], block: impl Fn(&B, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let mut pooled = experts
        .iter()
        .map(|blocks| Ok(blocks.iter().try_fold(h.shallow_clone(), |h, b| block(b, &h))?.adaptive_avg_pool2d([1, 1]).flatten(1, -1)))
        .collect::<Result<Vec<_>>>()?;
    Ok(if pooled.len() == 1 { pooled.pop().expect("one") } else { Tensor::cat(&pooled, 1) })
}

/// `run_experts`'s products (`flops`): each expert's blocks (`block` lists one's, updating the
/// size) from the shared stages' output size `h` x `w`.
pub(crate) fn expert_ops<B>(h: i64, w: i64, experts: &[Vec<B>], block: impl Fn(&B, &mut i64, &mut i64) -> Vec<flops::Op>) -> Vec<flops::Op> {
    experts
        .iter()
        .flat_map(|blocks| {
            let (mut h, mut w) = (h, w);
            blocks.iter().flat_map(|b| block(b, &mut h, &mut w)).collect::<Vec<_>>()
        })
        .collect()
}

/// The mean of the experts' outputs (the one output itself for a single expert).
pub fn mean(mut outputs: Vec<Tensor>) -> Tensor {
    if outputs.len() == 1 {
        return outputs.pop().expect("one");
    }
    let n = outputs.len() as f64;
    Tensor::stack(&outputs, 0).sum_dim_intlist([0i64].as_slice(), false, None::<tch::Kind>) / n
}
