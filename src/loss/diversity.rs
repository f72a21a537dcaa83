//! RIDE's diversity term (Wang et al., ICLR 2021, "Long-tailed Recognition by Routing
//! Diverse Distribution-Aware Experts"; its `RIDELoss`), added to the experts' losses:
//!
//!   L_div = lambda * Tbar^2 * sum_e KL( softmax(zbar / T) || softmax(z_e / T) )
//!
//! with z_e expert e's logits (s cos for a cosine head: no cloud, no margin), zbar the mean of
//! the experts' logits (the ensemble; no gradient flows through it), the KL averaged over the
//! batch (`batchmean`), and T the temperature: one number, or per class
//! T_j = T w_j / max_k w_k with w_j = C p_j r + 1 - r (RIDE's `reweight_factor` r; p_j the
//! class's share of the training images), Tbar the mean of T over the classes.
//! lambda < 0 rewards each expert for differing from the ensemble (RIDE: -0.2 on ImageNet-LT,
//! -0.45 on CIFAR-100-LT); 0 switches the term off.
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

/// The settings' `[stage1.diversity]`: used with `model.experts > 1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiversityConfig {
    /// lambda.
    pub factor: f64,
    /// T.
    pub temperature: f64,
    /// r: temperatures per class (RIDE uses 0.05 on CIFAR, 0.02 on ImageNet-LT, in its
    /// re-weighting epochs); none: one temperature.
    pub reweight_factor: Option<f64>,
}

impl Default for DiversityConfig {
    fn default() -> Self {
        Self { factor: -0.2, temperature: 1.0, reweight_factor: None }
    }
}

impl DiversityConfig {
    pub fn check_ranges(&self, prefix: &str, r: &mut crate::util::Ranges) {
        r.within(format!("{prefix}.factor"), self.factor, f64::NEG_INFINITY, f64::INFINITY);
        r.positive(format!("{prefix}.temperature"), self.temperature);
        if let Some(f) = self.reweight_factor {
            r.within(format!("{prefix}.reweight_factor"), f, 0.0, 1.0);
        }
    }
}

pub struct Diversity {
    factor: f64,
    /// T, one number or 1 x C.
    temperature: Tensor,
    /// Tbar.
    mean_temperature: f64,
}

impl Diversity {
    /// The term for a training set with `counts` images per class.
    pub fn new(cfg: &DiversityConfig, counts: &[usize], device: Device) -> Self {
        let t = cfg.temperature;
        match cfg.reweight_factor {
            None => Self { factor: cfg.factor, temperature: Tensor::from(t).to_device(device), mean_temperature: t },
            Some(r) => {
                let (c, total) = (counts.len() as f64, counts.iter().sum::<usize>() as f64);
                let w: Vec<f64> = counts.iter().map(|&n| c * (n as f64 / total) * r + 1.0 - r).collect();
                let max = w.iter().cloned().fold(f64::MIN, f64::max);
                let per_class: Vec<f64> = w.iter().map(|v| t * v / max).collect();
                let mean = per_class.iter().sum::<f64>() / c;
                Self { factor: cfg.factor, temperature: Tensor::from_slice(&per_class).view([1, -1]).to_device(device), mean_temperature: mean }
            }
        }
    }

    /// L_div of the experts' logits (each B x C).
    pub fn term(&self, logits: &[Tensor]) -> Tensor {
        // In fp32 at least (bf16 logits under autocast), in fp64 for fp64 logits.
        let kind = if logits[0].kind() == Kind::Double { Kind::Double } else { Kind::Float };
        let t = self.temperature.to_kind(kind);
        let ensemble = tch::no_grad(|| crate::model::mean(logits.iter().map(|z| z.detach().to_kind(kind)).collect()));
        let target = (ensemble / &t).log_softmax(1, kind);
        let batch = logits[0].size()[0].max(1) as f64;
        let kl = logits.iter().map(|z| (z.to_kind(kind) / &t).log_softmax(1, kind).kl_div(&target, Reduction::Sum, true) / batch);
        super::sum(kl) * (self.factor * self.mean_temperature * self.mean_temperature)
    }
}
