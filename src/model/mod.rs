//! Backbones and classifier heads.
pub mod bn_act;
pub mod head;
pub mod resnet;
pub mod winograd;

pub use head::{CosineHead, Head, HeadKind};
pub use resnet::{FrozenResNet, ResNet};

use anyhow::Result;
use tch::{nn, Tensor};

/// A CIFAR ResNet backbone with a classifier head. Variables live under `backbone.` and
/// `head.` in the var store, so a stage can train just one of them.
pub struct Classifier {
    pub backbone: ResNet,
    pub head: Head,
}

impl Classifier {
    pub fn new(vs: &nn::Path, depth: usize, in_channels: i64, num_classes: i64, head: HeadKind) -> Result<Self> {
        let backbone = ResNet::new(&(vs / "backbone"), depth, in_channels)?;
        let head = Head::new(&(vs / "head"), backbone.feature_dim(), num_classes, head);
        Ok(Self { backbone, head })
    }
    /// Logits (cosines for the cosine head).
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.head.forward(&self.backbone.features(x, train))
    }
}
