//! Training losses, one file per family. Every loss maps (logits or cosines, targets)
//! to a scalar; stochastic ones also accept the raw Gaussian draw so that tests can
//! replay the fixtures' noise.
pub mod ce;
pub mod cloud;
pub mod gcl;

pub use ce::CrossEntropy;
pub use cloud::{CloudForm, CloudSize};
pub use gcl::{GclE, GclParams};

use tch::{Reduction, Tensor};

/// A training criterion on a batch of logits (B x C) and targets (B).
pub trait Criterion: Send {
    /// `noise`: the raw N(0, 1/3) draw (B x C) for stochastic losses; drawn from
    /// libtorch's generator when absent. Deterministic losses ignore it.
    fn loss(&self, logits: &Tensor, target: &Tensor, noise: Option<&Tensor>) -> Tensor;
    /// Whether `loss` uses noise (so the loader draws it).
    fn stochastic(&self) -> bool {
        false
    }
}

/// Mean of (1 - p)^gamma * ce with p = exp(-ce); the modulating factor carries no gradient.
pub fn focal_mean(per_sample_ce: &Tensor, gamma: f64) -> Tensor {
    let p: Tensor = (-per_sample_ce).exp();
    let factor: Tensor = p.neg().g_add_scalar(1.0).detach();
    (factor.pow_tensor_scalar(gamma) * per_sample_ce).mean(per_sample_ce.kind())
}

/// (Weighted) cross-entropy of `logits`: its mean, or the focal mean when `focal_gamma` is set.
pub fn finish(logits: &Tensor, target: &Tensor, weight: Option<&Tensor>, focal_gamma: Option<f64>) -> Tensor {
    let weight = weight.map(|w| w.to_kind(logits.kind()).to_device(logits.device()));
    match focal_gamma {
        None => logits.cross_entropy_loss(target, weight.as_ref(), Reduction::Mean, -100, 0.0),
        Some(g) => focal_mean(&logits.cross_entropy_loss(target, weight.as_ref(), Reduction::None, -100, 0.0), g),
    }
}

/// Checks that logits are B x C and targets B, with targets in 0..C.
pub fn check_shapes(logits: &Tensor, target: &Tensor, classes: usize) -> anyhow::Result<()> {
    let (ls, ts) = (logits.size(), target.size());
    if ls.len() != 2 || ls[1] as usize != classes || ts.len() != 1 || ts[0] != ls[0] {
        anyhow::bail!("loss expects logits B x {classes} and targets B, got {ls:?} and {ts:?}");
    }
    Ok(())
}
