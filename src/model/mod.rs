//! Backbones and classifier heads.
//!
//! A backbone maps images to pooled features and has a frozen (inference) form; the
//! classifier head maps features to logits. `build` is the one place where the settings
//! choose a backbone, and where the kernels it uses are fixed.
pub mod head;
pub mod resnet;

pub use head::{CosineHead, Head, HeadKind};
pub use resnet::CifarResNet;

use crate::kernels::Kernels;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// The settings' `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// CIFAR ResNet depth, 6n + 2.
    pub depth: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { depth: 32 }
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
}

/// A backbone's inference form: the same features as `features(x, false)`.
pub trait FrozenBackbone {
    fn features(&self, x: &Tensor) -> Result<Tensor>;
}

/// The backbone the settings ask for, its variables under `vs`.
pub fn build_backbone(vs: &nn::Path, cfg: &ModelConfig, in_channels: i64, kernels: Kernels) -> Result<Box<dyn Backbone>> {
    Ok(Box::new(CifarResNet::new(vs, cfg.depth, in_channels, kernels)?))
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
