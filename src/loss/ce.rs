//! Cross-entropy, plain or re-weighted by the effective number of samples
//! (Cui et al., CVPR 2019), and focal loss (Lin et al., ICCV 2017).
use super::{finish, focal_mean, Criterion};
use tch::{Reduction, Tensor};

pub struct CrossEntropy {
    pub weight: Option<Tensor>,
}

impl Criterion for CrossEntropy {
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor {
        finish(logits, target, self.weight.as_ref(), None)
    }
}

/// Class-balanced weights (1 - beta) / (1 - beta^n_j), normalised to sum to C.
pub fn effective_number_weights(counts: &[usize], beta: f64) -> Vec<f64> {
    let w: Vec<f64> = counts.iter().map(|&n| (1.0 - beta) / (1.0 - beta.powf(n as f64))).collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|v| v / sum * counts.len() as f64).collect()
}

/// Mean of (1 - p)^gamma * ce; the modulating factor carries no gradient.
pub struct Focal {
    pub gamma: f64,
    pub weight: Option<Tensor>,
}

impl Criterion for Focal {
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor {
        let w = self.weight.as_ref().map(|w| w.to_kind(logits.kind()).to_device(logits.device()));
        focal_mean(&logits.cross_entropy_loss(target, w.as_ref(), Reduction::None, -100, 0.0), self.gamma)
    }
}
