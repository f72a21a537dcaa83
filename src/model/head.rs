//! Classifier heads: the cosine classifier of GCL and an ordinary linear one.
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    Cosine,
    Linear,
}

/// Logits are cos(feature, class weight): both L2-normalised, no bias.
pub struct CosineHead {
    /// feature_dim x classes, one column per class (the authors' layout).
    pub weight: Tensor,
}

/// F.normalize: x / max(||x||, 1e-12) along `dim`.
pub fn l2_normalize(x: &Tensor, dim: i64) -> Tensor {
    let norm = x.norm_scalaropt_dim(2, [dim], true).clamp_min(1e-12);
    x / norm
}

impl CosineHead {
    pub fn new(vs: &nn::Path, dim: i64, classes: i64) -> Self {
        let weight = vs.var("weight", &[dim, classes], Init::Uniform { lo: -1.0, up: 1.0 });
        // Unit-norm class columns, as the reference's renorm_(2, 1, 1e-5).mul_(1e5).
        tch::no_grad(|| {
            let unit = l2_normalize(&weight, 0);
            let _ = weight.shallow_clone().copy_(&unit);
        });
        Self { weight }
    }
    pub fn forward(&self, features: &Tensor) -> Tensor {
        l2_normalize(features, 1).matmul(&l2_normalize(&self.weight, 0))
    }
}

pub enum Head {
    Cosine(CosineHead),
    Linear(nn::Linear),
}

impl Head {
    pub fn new(vs: &nn::Path, dim: i64, classes: i64, kind: HeadKind) -> Self {
        match kind {
            HeadKind::Cosine => Head::Cosine(CosineHead::new(vs, dim, classes)),
            HeadKind::Linear => {
                let bound = 1.0 / (dim as f64).sqrt();
                let cfg = nn::LinearConfig {
                    ws_init: nn::init::DEFAULT_KAIMING_NORMAL,
                    bs_init: Some(Init::Uniform { lo: -bound, up: bound }),
                    bias: true,
                };
                Head::Linear(nn::linear(vs, dim, classes, cfg))
            }
        }
    }
    /// Draws fresh initial weights in place (classifier re-training starts from scratch).
    pub fn reset(&mut self) {
        tch::no_grad(|| match self {
            Head::Cosine(h) => {
                let fresh = l2_normalize(&(h.weight.rand_like() * 2.0 - 1.0), 0);
                let _ = h.weight.copy_(&fresh);
            }
            Head::Linear(l) => {
                let (out, dim) = l.ws.size2().expect("2-d weight");
                let std = (2.0 / dim as f64).sqrt(); // Kaiming normal, fan-in, ReLU gain
                let _ = l.ws.copy_(&(Tensor::randn([out, dim], (l.ws.kind(), l.ws.device())) * std));
                if let Some(b) = l.bs.as_mut() {
                    let bound = 1.0 / (dim as f64).sqrt();
                    let _ = b.copy_(&(b.rand_like() * (2.0 * bound) - bound));
                }
            }
        })
    }

    /// tau-normalisation of a linear classifier: w_j / ||w_j||^tau, bias set to zero.
    pub fn tau_normalize(&mut self, tau: f64) -> anyhow::Result<()> {
        match self {
            Head::Linear(l) => {
                tch::no_grad(|| {
                    let norms = l.ws.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12).pow_tensor_scalar(tau);
                    let scaled = &l.ws / norms;
                    let _ = l.ws.copy_(&scaled);
                    if let Some(b) = l.bs.as_mut() {
                        let _ = b.zero_();
                    }
                });
                Ok(())
            }
            Head::Cosine(_) => anyhow::bail!("tau-normalisation applies to a linear classifier, not a cosine one"),
        }
    }

    /// Class j's logit times `scale[j]`: a linear head's weight row and bias scaled (LWS).
    pub fn scale_classes(&mut self, scale: &Tensor) -> anyhow::Result<()> {
        match self {
            Head::Linear(l) => {
                tch::no_grad(|| {
                    let s = scale.to_kind(l.ws.kind()).to_device(l.ws.device());
                    let w = &l.ws * s.unsqueeze(1);
                    let _ = l.ws.copy_(&w);
                    if let Some(b) = l.bs.as_mut() {
                        let scaled = &*b * &s;
                        let _ = b.copy_(&scaled);
                    }
                });
                Ok(())
            }
            Head::Cosine(_) => anyhow::bail!("learnable weight scaling applies to a linear classifier, not a cosine one"),
        }
    }

    /// Sets each class's weight vector to the unit vector along its row of `rows` (classes x
    /// feature dimension), and a linear head's bias to 0.
    pub fn set_class_weights(&mut self, rows: &Tensor) {
        tch::no_grad(|| {
            let unit = l2_normalize(rows, 1);
            match self {
                Head::Cosine(h) => {
                    let _ = h.weight.copy_(&unit.transpose(0, 1));
                }
                Head::Linear(l) => {
                    let _ = l.ws.copy_(&unit);
                    if let Some(b) = &mut l.bs {
                        let _ = b.zero_();
                    }
                }
            }
        })
    }

    /// The classifier's weight vector of each class, as rows (classes x feature dimension).
    pub fn class_weights(&self) -> Tensor {
        match self {
            Head::Cosine(h) => h.weight.detach().transpose(0, 1),
            Head::Linear(l) => l.ws.detach(),
        }
    }

    pub fn kind(&self) -> HeadKind {
        match self {
            Head::Cosine(_) => HeadKind::Cosine,
            Head::Linear(_) => HeadKind::Linear,
        }
    }
    pub fn forward(&self, features: &Tensor) -> Tensor {
        match self {
            Head::Cosine(h) => h.forward(features),
            Head::Linear(l) => features.apply(l),
        }
    }
}
