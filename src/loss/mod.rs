//! Training losses, one file per family. Every loss maps (logits or cosines, targets) to a
//! scalar. GCL draws its own noise, from a generator the trainer seeds once per step, so runs
//! repeat exactly; its `loss_with_noise` replays a given draw (the fixtures').
pub mod ce;
pub mod cloud;
pub mod diversity;
pub mod gcl;
pub mod margin;

pub use ce::{effective_number_weights, CrossEntropy, Focal};
pub use cloud::{CloudForm, CloudSize};
pub use diversity::{Diversity, DiversityConfig};
pub use gcl::{Adaptive, GclA, GclAParams, GclE, GclParams, GroupScale, ParamSchedule};
pub use margin::{Ldam, LogitAdjusted};

use crate::model::HeadKind;
use serde::{Deserialize, Serialize};
use tch::{Device, Reduction, Tensor};

/// A training criterion on a batch of logits (B x C) and targets (B).
pub trait Criterion: Send {
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor;
    /// Seeds the random draws of the coming step (GCL's noise); deterministic losses have none.
    fn seed_step(&self, _seed: u64) {}
}

/// The sum of losses (the one loss itself when there is one: a single expert's loss is
/// the same tensor as before experts existed).
pub fn sum(losses: impl IntoIterator<Item = Tensor>) -> Tensor {
    let mut it = losses.into_iter();
    let first = it.next().expect("at least one loss");
    it.fold(first, |acc, l| acc + l)
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

/// How CE is weighted per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    #[default]
    None,
    /// (1 - beta) / (1 - beta^n_j), normalised to sum to C (Cui et al. 2019).
    EffectiveNumber,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CeParams {
    pub weighting: Weighting,
    pub beta: f64,
}
impl Default for CeParams {
    fn default() -> Self {
        Self { weighting: Weighting::None, beta: 0.9999 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FocalParams {
    pub gamma: f64,
}
impl Default for FocalParams {
    fn default() -> Self {
        Self { gamma: 1.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdamParams {
    pub max_m: f64,
    pub s: f64,
    /// Deferred re-weighting: effective-number class weights from this fraction of the
    /// epochs on (0.8 in the LDAM-DRW recipe); none when absent.
    pub drw_at: Option<f64>,
    pub beta: f64,
}
impl Default for LdamParams {
    fn default() -> Self {
        Self { max_m: 0.5, s: 30.0, drw_at: Some(0.8), beta: 0.9999 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogitAdjustedParams {
    pub tau: f64,
}
impl Default for LogitAdjustedParams {
    fn default() -> Self {
        Self { tau: 1.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// A loss by name, with only the parameters that belong to it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum LossConfig {
    /// GCL, normalised-Euclidean form (Li et al., CVPR 2022).
    GclE(GclParams),
    /// GCL, angular form (Li et al., IEEE TAI 2024).
    GclA(GclAParams),
    /// Cross-entropy, optionally effective-number re-weighted (Cui et al., CVPR 2019).
    Ce(CeParams),
    /// Focal loss (Lin et al., ICCV 2017).
    Focal(FocalParams),
    /// LDAM with deferred re-weighting (Cao et al., NeurIPS 2019).
    Ldam(LdamParams),
    /// Balanced Softmax (Ren et al., NeurIPS 2020).
    BalancedSoftmax(NoParams),
    /// Logit-adjusted loss (Menon et al., ICLR 2021).
    LogitAdjusted(LogitAdjustedParams),
}

impl LossConfig {
    /// The classifier each loss is defined on: cosine for GCL and LDAM, linear otherwise.
    pub fn head(&self) -> HeadKind {
        match self {
            LossConfig::GclE(_) | LossConfig::GclA(_) | LossConfig::Ldam(_) => HeadKind::Cosine,
            _ => HeadKind::Linear,
        }
    }

    /// The scale that turns the head's output into logits (s for cosine heads).
    pub fn logit_scale(&self) -> f64 {
        match self {
            LossConfig::GclE(p) => p.s,
            LossConfig::GclA(p) => p.s,
            LossConfig::Ldam(p) => p.s,
            _ => 1.0,
        }
    }


    pub fn name(&self) -> &'static str {
        match self {
            LossConfig::GclE(_) => "gcl-e",
            LossConfig::GclA(_) => "gcl-a",
            LossConfig::Ce(_) => "ce",
            LossConfig::Focal(_) => "focal",
            LossConfig::Ldam(_) => "ldam",
            LossConfig::BalancedSoftmax(_) => "balanced-softmax",
            LossConfig::LogitAdjusted(_) => "logit-adjusted",
        }
    }

    /// Each parameter against its valid range (`prefix`: where the loss sits in the settings).
    pub fn check_ranges(&self, prefix: &str, r: &mut crate::util::Ranges) {
        let k = |name: &str| format!("{prefix}.{name}");
        let inf = f64::INFINITY;
        let gamma = |r: &mut crate::util::Ranges, g: Option<f64>| {
            if let Some(g) = g {
                r.within(k("focal_gamma"), g, 0.0, inf);
            }
        };
        // GCL's Gaussian: a finite mean, a positive spread (also where scheduled) and clamp
        // (the paper: 0, 1/3, 1).
        let gaussian = |r: &mut crate::util::Ranges, mean: f64, std: f64, clamp: f64, std_schedule: Option<ParamSchedule>| {
            r.within(k("mean"), mean, -1e6, 1e6);
            r.positive(k("std"), std);
            r.positive(k("clamp"), clamp);
            if let Some(s) = std_schedule {
                s.check(&k("std_schedule"), r, true);
            }
        };
        let per_class = |r: &mut crate::util::Ranges, g: Option<GroupScale>, a: Option<Adaptive>| {
            if let Some(g) = g {
                for (name, v) in [("many", g.many), ("medium", g.medium), ("few", g.few)] {
                    r.within(k(&format!("group_scale.{name}")), v, 0.0, inf);
                }
            }
            if let Some(a) = a {
                a.check(&k("adaptive"), r);
            }
        };
        match *self {
            LossConfig::GclE(p) => {
                r.positive(k("s"), p.s);
                r.within(k("m"), p.m, 0.0, inf);
                r.within(k("noise_mul"), p.noise_mul, 0.0, inf);
                gaussian(r, p.mean, p.std, p.clamp, p.std_schedule);
                if let Some(s) = p.noise_mul_schedule {
                    s.check(&k("noise_mul_schedule"), r, false);
                }
                per_class(r, p.group_scale, p.adaptive);
                gamma(r, p.focal_gamma);
            }
            LossConfig::GclA(p) => {
                r.positive(k("s"), p.s);
                r.within(k("m"), p.m, 0.0, std::f64::consts::PI);
                r.within(k("epsilon"), p.epsilon, 0.0, inf);
                gaussian(r, p.mean, p.std, p.clamp, p.std_schedule);
                if let Some(s) = p.epsilon_schedule {
                    s.check(&k("epsilon_schedule"), r, false);
                }
                per_class(r, p.group_scale, p.adaptive);
                gamma(r, p.focal_gamma);
            }
            LossConfig::Ce(p) => r.unit_fraction(k("beta"), p.beta),
            LossConfig::Focal(p) => r.within(k("gamma"), p.gamma, 0.0, inf),
            LossConfig::Ldam(p) => {
                r.within(k("max_m"), p.max_m, 0.0, inf);
                r.positive(k("s"), p.s);
                if let Some(f) = p.drw_at {
                    r.within(k("drw_at"), f, 0.0, 1.0);
                }
                r.unit_fraction(k("beta"), p.beta);
            }
            LossConfig::BalancedSoftmax(_) => {}
            LossConfig::LogitAdjusted(p) => r.within(k("tau"), p.tau, f64::NEG_INFINITY, inf),
        }
    }

    /// The values its schedules give at `epoch` of `epochs`, by name (for metrics.jsonl).
    pub fn scheduled(&self, epoch: usize, epochs: usize) -> Vec<(&'static str, f64)> {
        match *self {
            LossConfig::GclE(p) => {
                let q = p.at_epoch(epoch, epochs);
                [("noise_mul", p.noise_mul_schedule.map(|_| q.noise_mul)), ("std", p.std_schedule.map(|_| q.std))].into_iter().filter_map(|(k, v)| Some((k, v?))).collect()
            }
            LossConfig::GclA(p) => {
                let q = p.at_epoch(epoch, epochs);
                [("epsilon", p.epsilon_schedule.map(|_| q.epsilon)), ("std", p.std_schedule.map(|_| q.std))].into_iter().filter_map(|(k, v)| Some((k, v?))).collect()
            }
            _ => Vec::new(),
        }
    }

    /// GCL's cloud scaling per class (by shot group, adaptive); none for other losses.
    pub fn class_scaling(&self) -> (Option<GroupScale>, Option<Adaptive>) {
        match *self {
            LossConfig::GclE(p) => (p.group_scale, p.adaptive),
            LossConfig::GclA(p) => (p.group_scale, p.adaptive),
            _ => (None, None),
        }
    }

    /// The criterion for `epoch` of `epochs` (LDAM-DRW switches its weights on mid-run);
    /// GCL's cloud of class j times `cloud_scale[j]` when given.
    pub fn build(&self, counts: &[usize], device: Device, epoch: usize, epochs: usize, cloud_scale: Option<&[f64]>) -> Box<dyn Criterion> {
        let weights = |beta: f64| Some(Tensor::from_slice(&effective_number_weights(counts, beta)).to_device(device));
        let ones = vec![1.0; counts.len()];
        let scale = cloud_scale.unwrap_or(&ones);
        match *self {
            LossConfig::GclE(p) => Box::new(GclE::new(counts, p.at_epoch(epoch, epochs), None, device).scaled(scale)),
            LossConfig::GclA(p) => Box::new(GclA::new(counts, p.at_epoch(epoch, epochs), None, device).scaled(scale)),
            LossConfig::Ce(p) => Box::new(CrossEntropy {
                weight: match p.weighting {
                    Weighting::None => None,
                    Weighting::EffectiveNumber => weights(p.beta),
                },
            }),
            LossConfig::Focal(p) => Box::new(Focal { gamma: p.gamma, weight: None }),
            LossConfig::Ldam(p) => {
                let on = p.drw_at.is_some_and(|f| epoch as f64 >= (f * epochs as f64).floor());
                Box::new(Ldam::new(counts, p.max_m, p.s, if on { weights(p.beta) } else { None }, device))
            }
            LossConfig::BalancedSoftmax(_) => Box::new(LogitAdjusted::new(counts, 1.0, device)),
            LossConfig::LogitAdjusted(p) => Box::new(LogitAdjusted::new(counts, p.tau, device)),
        }
    }
}
