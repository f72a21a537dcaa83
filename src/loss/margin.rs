//! Margin and prior-based losses: LDAM (Cao et al., NeurIPS 2019), Balanced Softmax
//! (Ren et al., NeurIPS 2020), the logit-adjusted loss and post-hoc logit adjustment
//! (Menon et al., ICLR 2021).
use super::{finish, Criterion};
use tch::{Device, Kind, Tensor};

/// log(n_j / sum n) as a tensor.
pub fn log_prior(counts: &[usize], device: Device) -> Tensor {
    let total: usize = counts.iter().sum();
    let lp: Vec<f64> = counts.iter().map(|&n| (n as f64 / total as f64).ln()).collect();
    Tensor::from_slice(&lp).to_kind(Kind::Float).to_device(device)
}

/// LDAM: the target logit lowered by m_y proportional to n_y^(-1/4), the largest max_m;
/// loss = CE(s * z, y), optionally class-weighted (the DRW schedule switches weights on).
pub struct Ldam {
    pub s: f64,
    margins: Tensor,
    pub weight: Option<Tensor>,
}

impl Ldam {
    pub fn new(counts: &[usize], max_m: f64, s: f64, weight: Option<Tensor>, device: Device) -> Self {
        let m: Vec<f64> = counts.iter().map(|&n| (n as f64).powf(-0.25)).collect();
        let top = m.iter().cloned().fold(f64::MIN, f64::max);
        let m: Vec<f64> = m.iter().map(|v| v * max_m / top).collect();
        Self { s, margins: Tensor::from_slice(&m).to_kind(Kind::Float).to_device(device), weight }
    }
}

impl Criterion for Ldam {
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor {
        let kind = logits.kind();
        let onehot = target.one_hot(logits.size()[1]).to_kind(kind);
        let m_y = self.margins.to_kind(kind).index_select(0, target).unsqueeze(1);
        finish(&((logits - onehot * m_y) * self.s), target, self.weight.as_ref(), None)
    }
}

/// CE(logits + tau * log prior): Balanced Softmax is tau = 1.
pub struct LogitAdjusted {
    pub tau: f64,
    log_prior: Tensor,
}

impl LogitAdjusted {
    pub fn new(counts: &[usize], tau: f64, device: Device) -> Self {
        Self { tau, log_prior: log_prior(counts, device) }
    }
}

impl Criterion for LogitAdjusted {
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor {
        finish(&(logits + self.log_prior.to_kind(logits.kind()) * self.tau), target, None, None)
    }
}

/// Post-hoc logit adjustment: predict argmax(logits - tau * log prior).
pub fn posthoc_adjust(logits: &Tensor, log_prior: &Tensor, tau: f64) -> Tensor {
    logits - log_prior.to_kind(logits.kind()) * tau
}
