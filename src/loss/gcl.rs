//! Gaussian Clouded Logit adjustment, normalised-Euclidean form (GCL-E).
//!
//! z_ij = cos_ij - noise_mul * |clamp(e_ij, -1, 1)| * c_j, e ~ N(0, 1/3) fresh per entry
//! and step; z_iy -= m; loss = CE(s * z, y), or its focal mean in classifier re-training.
use super::{finish, CloudForm, CloudSize, Criterion};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// GCL draws its noise from N(0, 1/3), then clamps it to [-1, 1].
pub const NOISE_STD: f64 = 1.0 / 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GclParams {
    pub s: f64,
    pub m: f64,
    pub noise_mul: f64,
    /// The focal form (classifier re-training) when set.
    pub focal_gamma: Option<f64>,
    pub cloud: CloudForm,
}

pub struct GclE {
    pub params: GclParams,
    cloud: Tensor,
    weight: Option<Tensor>,
}

impl GclE {
    pub fn new(counts: &[usize], params: GclParams, weight: Option<Tensor>, device: Device) -> Self {
        let c = CloudSize::new(counts, params.cloud);
        Self { params, cloud: Tensor::from_slice(&c.0).to_device(device), weight }
    }

    /// The loss with a given raw draw `noise` (B x C, before clamping).
    pub fn loss_with_noise(&self, cosine: &Tensor, target: &Tensor, noise: &Tensor) -> Tensor {
        let p = &self.params;
        let kind = cosine.kind();
        let c = self.cloud.to_kind(kind);
        let eps = noise.to_kind(kind).clamp(-1.0, 1.0).abs();
        let mut z = cosine - eps * c * p.noise_mul;
        if p.m != 0.0 {
            let onehot = target.one_hot(cosine.size()[1]).to_kind(kind);
            z = z - onehot * p.m;
        }
        finish(&(z * p.s), target, self.weight.as_ref(), p.focal_gamma)
    }

    /// One fresh draw of GCL's noise for a batch of cosines.
    pub fn draw_noise(cosine: &Tensor) -> Tensor {
        Tensor::randn(cosine.size(), (Kind::Float, cosine.device())) * NOISE_STD
    }
}

impl Criterion for GclE {
    fn loss(&self, cosine: &Tensor, target: &Tensor, noise: Option<&Tensor>) -> Tensor {
        match noise {
            Some(n) => self.loss_with_noise(cosine, target, n),
            None => self.loss_with_noise(cosine, target, &Self::draw_noise(cosine)),
        }
    }
    fn stochastic(&self) -> bool {
        true
    }
}
