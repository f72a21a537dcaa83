//! Backbones and classifier heads.
//!
//! A backbone maps images to pooled features and has a frozen (inference) form; the
//! classifier head maps features to logits. `build` is the one place where the settings
//! choose a backbone, and where the kernels it uses are fixed.
pub mod head;
pub mod imagenet;
pub mod pth;
pub mod resnet;
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
    /// `cifar-resnet` (depth below), or a torchvision architecture: resnet10, resnet18,
    /// resnet34, resnet50, resnet101, resnet152, resnext50_32x4d.
    pub arch: String,
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
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { arch: CIFAR.into(), depth: 32, pretrained: None, freeze_through: None, reinit: Vec::new() }
    }
}

/// `model.arch` of the CIFAR ResNets.
pub const CIFAR: &str = "cifar-resnet";

impl ModelConfig {
    /// The torchvision architecture asked for; None for the CIFAR ResNet.
    pub fn imagenet_arch(&self) -> Result<Option<Arch>> {
        if self.arch == CIFAR {
            return Ok(None);
        }
        match Arch::from_name(&self.arch) {
            Some(a) => Ok(Some(a)),
            None => bail!(
                "model.arch = \"{}\" is not an architecture; the architectures are: {CIFAR}, {}",
                self.arch,
                Arch::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// The settings' agreement with the architecture.
    pub fn check(&self) -> Result<()> {
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
    /// Pooled features (N x `feature_dim()`). `train` selects BatchNorm's batch statistics
    /// (and updates the running ones); with `train = false` the stored ones are used.
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    fn feature_dim(&self) -> i64;
    /// The inference form of the current weights (BatchNorm folded in, no gradients).
    /// Rebuild after any change to the weights or statistics.
    fn freeze(&self) -> Result<Box<dyn FrozenBackbone>>;
    /// The architecture's name, as checkpoints record it (e.g. `cifar-resnet32`).
    fn arch(&self) -> String;
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
pub fn build_backbone(vs: &nn::Path, cfg: &ModelConfig, in_channels: i64, kernels: Kernels) -> Result<Box<dyn Backbone>> {
    Ok(match cfg.imagenet_arch()? {
        None => Box::new(CifarResNet::new(vs, cfg.depth, in_channels, kernels)?),
        Some(a) => Box::new(imagenet::ResNet::new(vs, a, in_channels, kernels)?),
    })
}

/// A backbone with a classifier head. Variables live under `backbone.` and `head.` in the
/// var store, so a stage can train just one of them.
pub struct Classifier {
    pub backbone: Box<dyn Backbone>,
    pub head: Head,
}

impl Classifier {
    pub fn new(vs: &nn::Path, cfg: &ModelConfig, in_channels: i64, num_classes: i64, head: HeadKind, kernels: Kernels) -> Result<Self> {
        let backbone = build_backbone(&(vs / "backbone"), cfg, in_channels, kernels)?;
        let head = Head::new(&(vs / "head"), backbone.feature_dim(), num_classes, head);
        Ok(Self { backbone, head })
    }
    /// Logits (cosines for the cosine head).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.head.forward(&self.backbone.features(x, train)?))
    }
}
