//! Gaussian Clouded Logit adjustment in its two forms.
//!
//! GCL-E (normalised-Euclidean): z_ij = cos_ij - noise_mul * |clamp(e_ij, -k, k)| * c_j,
//! e ~ N(mu, sigma) fresh per entry and step; z_iy -= m; loss = CE(s * z, y).
//! GCL-A (angular): the angle to class j grows by (pi/2) * epsilon * c_j * |clamp(e_ij, -k, k)|,
//! plus m on the target. Either takes the focal mean in classifier re-training.
//! The paper's Gaussian is mu = 0, sigma = 1/3, k = 1 (`mean`, `std`, `clamp`).
//!
//! Beyond the paper, c_j may be scaled per class: by shot group (`group_scale`) and by the
//! adaptive rule (`adaptive`, [`Adaptive`]), which the trainer updates after every epoch
//! from each class's training accuracy.
use super::{finish, CloudForm, CloudSize, Criterion};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};

/// GCL draws its noise from N(0, 1/3), then clamps it to [-1, 1].
pub const NOISE_STD: f64 = 1.0 / 3.0;

/// A parameter's value over a stage's epochs, in place of its constant: `linear` and `cosine`
/// go from `from` at the first epoch to `to` at the last (cosine: to + (from - to)(1 + cos(pi
/// t)) / 2, t = epoch / (epochs - 1)); `step` is `from` before the fraction `at` of the epochs
/// and `to` from there on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "shape", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ParamSchedule {
    Linear { from: f64, to: f64 },
    Cosine { from: f64, to: f64 },
    Step { from: f64, to: f64, at: f64 },
}

impl ParamSchedule {
    /// The value at `epoch` (0-based) of `epochs`.
    pub fn value(&self, epoch: usize, epochs: usize) -> f64 {
        let t = epoch as f64 / (epochs.max(2) - 1) as f64;
        match *self {
            ParamSchedule::Linear { from, to } => from + (to - from) * t,
            ParamSchedule::Cosine { from, to } => to + (from - to) * (1.0 + (PI * t).cos()) / 2.0,
            ParamSchedule::Step { from, to, at } => {
                if (epoch as f64) < at * epochs as f64 {
                    from
                } else {
                    to
                }
            }
        }
    }

    /// Its end values (and `at`) against the parameter's range: >= 0, or > 0 when `positive`.
    pub fn check(&self, key: &str, r: &mut crate::util::Ranges, positive: bool) {
        let (ParamSchedule::Linear { from, to } | ParamSchedule::Cosine { from, to } | ParamSchedule::Step { from, to, .. }) = *self;
        for (end, v) in [("from", from), ("to", to)] {
            if positive {
                r.positive(format!("{key}.{end}"), v);
            } else {
                r.within(format!("{key}.{end}"), v, 0.0, f64::INFINITY);
            }
        }
        if let ParamSchedule::Step { at, .. } = *self {
            r.within(format!("{key}.at"), at, 0.0, 1.0);
        }
    }
}

/// Class j's cloud c_j times its shot group's factor (`group_scale = { many, medium, few }`),
/// the groups of `run.many_above` / `run.few_below`. The head is Many and has c_j = 0, so
/// `many` acts only on the other Many classes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupScale {
    pub many: f64,
    pub medium: f64,
    pub few: f64,
}

impl Default for GroupScale {
    fn default() -> Self {
        Self { many: 1.0, medium: 1.0, few: 1.0 }
    }
}

/// The adaptive cloud: the cloud of a class grows as training learns it. After each epoch,
/// with a_j class j's training accuracy that epoch (argmax of the clean cosines against the
/// batch's label; under mixup its larger part) and a the mean of a_j over the classes,
///
///   w_j <- (1 - rate) * w_j + rate * min(a_j / a, max),   w_j = 1 before the first epoch,
///
/// and the next epoch's cloud is w_j * c_j. Why: GCL's cloud is a margin against tail
/// classes that training has memorised; a class not yet learned (a_j below the mean, early
/// on the tail) gets a smaller cloud so that it is learned first, a class fit better than
/// the average gets up to `max` times the paper's. Once every class is fit (a_j = a) w_j
/// returns to 1, the paper's constant cloud.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Adaptive {
    pub rate: f64,
    pub max: f64,
}

impl Default for Adaptive {
    fn default() -> Self {
        Self { rate: 0.5, max: 2.0 }
    }
}

impl Adaptive {
    /// The weights after an epoch whose per-class training accuracies were `acc` (a class
    /// that had no image this epoch keeps its weight).
    pub fn update(&self, w: &[f64], acc: &[Option<f64>]) -> Vec<f64> {
        let seen: Vec<f64> = acc.iter().flatten().copied().collect();
        let mean = seen.iter().sum::<f64>() / seen.len().max(1) as f64;
        w.iter()
            .zip(acc)
            .map(|(&w, a)| match a {
                Some(a) if mean > 0.0 => (1.0 - self.rate) * w + self.rate * (a / mean).min(self.max),
                _ => w,
            })
            .collect()
    }

    pub fn check(&self, key: &str, r: &mut crate::util::Ranges) {
        r.within(format!("{key}.rate"), self.rate, 0.0, 1.0);
        r.within(format!("{key}.max"), self.max, 1.0, 1e6);
    }
}

/// `value`, or its schedule's value at `epoch` of `epochs`.
fn scheduled(value: f64, schedule: Option<ParamSchedule>, epoch: usize, epochs: usize) -> f64 {
    schedule.map_or(value, |s| s.value(epoch, epochs))
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GclParams {
    pub s: f64,
    pub m: f64,
    pub noise_mul: f64,
    /// The Gaussian: e ~ N(mean, std), clamped to [-clamp, clamp].
    pub mean: f64,
    pub std: f64,
    pub clamp: f64,
    /// `noise_mul` and `std` over the epochs, in place of the constants.
    pub noise_mul_schedule: Option<ParamSchedule>,
    pub std_schedule: Option<ParamSchedule>,
    /// The cloud per class: by shot group, and adaptively (see [`Adaptive`]).
    pub group_scale: Option<GroupScale>,
    pub adaptive: Option<Adaptive>,
    /// The focal form (classifier re-training) when set.
    pub focal_gamma: Option<f64>,
    pub cloud: CloudForm,
}

impl GclParams {
    /// The parameters of `epoch` of `epochs` (the schedules' values in place of constants).
    pub fn at_epoch(self, epoch: usize, epochs: usize) -> Self {
        let (n, s) = (scheduled(self.noise_mul, self.noise_mul_schedule, epoch, epochs), scheduled(self.std, self.std_schedule, epoch, epochs));
        GclParams { noise_mul: n, std: s, ..self }
    }
}

impl Default for GclParams {
    fn default() -> Self {
        Self { s: 30.0, m: 0.0, noise_mul: 0.5, mean: 0.0, std: NOISE_STD, clamp: 1.0, noise_mul_schedule: None, std_schedule: None, group_scale: None, adaptive: None, focal_gamma: None, cloud: CloudForm::Log }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GclAParams {
    pub s: f64,
    pub m: f64,
    pub epsilon: f64,
    pub easy_margin: bool,
    /// The Gaussian: e ~ N(mean, std), clamped to [-clamp, clamp].
    pub mean: f64,
    pub std: f64,
    pub clamp: f64,
    /// `epsilon` and `std` over the epochs, in place of the constants.
    pub epsilon_schedule: Option<ParamSchedule>,
    pub std_schedule: Option<ParamSchedule>,
    /// The cloud per class: by shot group, and adaptively (see [`Adaptive`]).
    pub group_scale: Option<GroupScale>,
    pub adaptive: Option<Adaptive>,
    pub focal_gamma: Option<f64>,
    pub cloud: CloudForm,
}

impl GclAParams {
    /// The parameters of `epoch` of `epochs` (the schedules' values in place of constants).
    pub fn at_epoch(self, epoch: usize, epochs: usize) -> Self {
        let (e, s) = (scheduled(self.epsilon, self.epsilon_schedule, epoch, epochs), scheduled(self.std, self.std_schedule, epoch, epochs));
        GclAParams { epsilon: e, std: s, ..self }
    }
}

impl Default for GclAParams {
    fn default() -> Self {
        Self { s: 30.0, m: 0.0, epsilon: 0.1, easy_margin: false, mean: 0.0, std: NOISE_STD, clamp: 1.0, epsilon_schedule: None, std_schedule: None, group_scale: None, adaptive: None, focal_gamma: None, cloud: CloudForm::Log }
    }
}

/// |clamp(noise, -k, k)|, the magnitude GCL scales by the cloud size.
fn clamped_magnitude(noise: &Tensor, k: f64, kind: Kind) -> Tensor {
    noise.to_kind(kind).clamp(-k, k).abs()
}

/// GCL's noise: e ~ N(mean, std) per logit, drawn on the host from a generator that the
/// trainer seeds once per step (`Criterion::seed_step`), so a run repeats exactly whatever the
/// device; without a seed it starts from 0.
struct Noise(RefCell<StdRng>);

impl Noise {
    fn new() -> Self {
        Noise(RefCell::new(StdRng::seed_from_u64(0)))
    }
    fn seed(&self, seed: u64) {
        *self.0.borrow_mut() = StdRng::seed_from_u64(seed);
    }
    /// One fresh B x C draw for a batch of cosines (on their device).
    fn draw(&self, cosine: &Tensor, mean: f64, std: f64) -> Tensor {
        let normal = Normal::new(mean as f32, std as f32).expect("a valid standard deviation (checked with the settings)");
        let n = cosine.numel();
        let mut rng = self.0.borrow_mut();
        let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut *rng)).collect();
        Tensor::from_slice(&v).view(cosine.size().as_slice()).to_device(cosine.device())
    }
}

/// Cloud sizes as an fp32 tensor on `device`.
fn cloud_tensor(counts: &[usize], form: CloudForm, device: Device) -> Tensor {
    Tensor::from_slice(&CloudSize::new(counts, form).0).to_kind(Kind::Float).to_device(device)
}

fn scale_cloud(cloud: &Tensor, scale: &[f64]) -> Tensor {
    cloud * Tensor::from_slice(scale).to_kind(Kind::Float).to_device(cloud.device())
}

pub struct GclE {
    pub params: GclParams,
    cloud: Tensor,
    weight: Option<Tensor>,
    noise: Noise,
}

impl GclE {
    pub fn new(counts: &[usize], params: GclParams, weight: Option<Tensor>, device: Device) -> Self {
        Self { params, cloud: cloud_tensor(counts, params.cloud, device), weight, noise: Noise::new() }
    }

    /// Class j's cloud times `scale[j]` (per shot group, adaptive).
    pub fn scaled(mut self, scale: &[f64]) -> Self {
        self.cloud = scale_cloud(&self.cloud, scale);
        self
    }

    /// The loss with a given raw draw `noise` (B x C, before clamping).
    pub fn loss_with_noise(&self, cosine: &Tensor, target: &Tensor, noise: &Tensor) -> Tensor {
        let p = &self.params;
        let kind = cosine.kind();
        let mut z = cosine - clamped_magnitude(noise, p.clamp, kind) * self.cloud.to_kind(kind) * p.noise_mul;
        if p.m != 0.0 {
            z = z - target.one_hot(cosine.size()[1]).to_kind(kind) * p.m;
        }
        finish(&(z * p.s), target, self.weight.as_ref(), p.focal_gamma)
    }
}

impl Criterion for GclE {
    fn loss(&self, cosine: &Tensor, target: &Tensor) -> Tensor {
        self.loss_with_noise(cosine, target, &self.noise.draw(cosine, self.params.mean, self.params.std))
    }
    fn seed_step(&self, seed: u64) {
        self.noise.seed(seed);
    }
}

pub struct GclA {
    pub params: GclAParams,
    cloud: Tensor,
    weight: Option<Tensor>,
    noise: Noise,
}

impl GclA {
    pub fn new(counts: &[usize], params: GclAParams, weight: Option<Tensor>, device: Device) -> Self {
        Self { params, cloud: cloud_tensor(counts, params.cloud, device), weight, noise: Noise::new() }
    }

    /// Class j's cloud times `scale[j]` (per shot group, adaptive).
    pub fn scaled(mut self, scale: &[f64]) -> Self {
        self.cloud = scale_cloud(&self.cloud, scale);
        self
    }

    pub fn loss_with_noise(&self, cosine: &Tensor, target: &Tensor, noise: &Tensor) -> Tensor {
        let p = &self.params;
        let kind = cosine.kind();
        let mut a = clamped_magnitude(noise, p.clamp, kind) * self.cloud.to_kind(kind) * (PI / 2.0 * p.epsilon);
        if p.m != 0.0 {
            a = a + target.one_hot(cosine.size()[1]).to_kind(kind) * p.m;
        }
        let sq: Tensor = cosine * cosine;
        let sine = (sq.neg() + 1.0).clamp(0.0, 1.0).sqrt();
        let phi = cosine * a.cos() - sine * a.sin();
        // Where theta + a would pass pi, cos stops decreasing: fall back as the reference does.
        let z = if p.easy_margin {
            phi.where_self(&cosine.gt(0.0), cosine)
        } else {
            let limit = (-&a + PI).cos();
            let fallback = cosine - (-&a + PI).sin();
            phi.where_self(&cosine.gt_tensor(&limit), &fallback)
        };
        finish(&(z * p.s), target, self.weight.as_ref(), p.focal_gamma)
    }
}

impl Criterion for GclA {
    fn loss(&self, cosine: &Tensor, target: &Tensor) -> Tensor {
        self.loss_with_noise(cosine, target, &self.noise.draw(cosine, self.params.mean, self.params.std))
    }
    fn seed_step(&self, seed: u64) {
        self.noise.seed(seed);
    }
}

#[cfg(test)]
mod gaussian_tests {
    use super::*;

    #[test]
    fn schedules_give_their_values_per_epoch() {
        let at = |s: ParamSchedule, n: usize| (0..n).map(|e| (s.value(e, n) * 1000.0).round() / 1000.0).collect::<Vec<f64>>();
        assert_eq!(at(ParamSchedule::Linear { from: 0.0, to: 1.0 }, 5), [0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(at(ParamSchedule::Cosine { from: 1.0, to: 0.0 }, 3), [1.0, 0.5, 0.0]);
        assert_eq!(at(ParamSchedule::Step { from: 0.2, to: 0.8, at: 0.5 }, 4), [0.2, 0.2, 0.8, 0.8]);
        let p = GclParams { noise_mul_schedule: Some(ParamSchedule::Linear { from: 0.0, to: 1.0 }), ..Default::default() };
        assert_eq!((p.at_epoch(0, 3).noise_mul, p.at_epoch(2, 3).noise_mul, p.at_epoch(2, 3).std), (0.0, 1.0, NOISE_STD));
    }

    #[test]
    fn the_adaptive_cloud_grows_for_classes_fit_better_than_the_mean_and_returns_to_one() {
        let rule = Adaptive { rate: 0.5, max: 2.0 };
        // Mean accuracy 0.5: class 0 at the mean keeps 1, class 1 (fit twice as well) moves
        // half-way to 2, class 2 (not learned) half-way to 0, class 3 (no image) keeps its weight.
        let w = rule.update(&[1.0, 1.0, 1.0, 0.7], &[Some(0.5), Some(1.0), Some(0.0), None]);
        assert_eq!(w, [1.0, 1.5, 0.5, 0.7]);
        // The cap: a_j / a is taken at most `max`.
        assert_eq!(Adaptive { rate: 1.0, max: 1.5 }.update(&[1.0, 1.0], &[Some(0.1), Some(0.9)])[1], 1.5);
        // Every class fit alike: the weights return to the paper's constant cloud.
        let mut w = vec![2.0, 0.2];
        for _ in 0..40 {
            w = rule.update(&w, &[Some(0.9), Some(0.9)]);
        }
        assert!(w.iter().all(|v| (v - 1.0).abs() < 1e-9), "{w:?}");
    }

    #[test]
    fn a_scaled_cloud_is_the_papers_cloud_times_the_factor() {
        let counts = [100, 10, 1];
        let (p, x, y) = (GclParams::default(), Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)), Tensor::from_slice(&[0i64, 1]));
        let noise = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        // With cosines 0 and noise 1, z_ij = -noise_mul * c_j * f_j: doubling the rarest
        // class's cloud equals the loss with its c_j doubled by hand.
        let scaled = GclE::new(&counts, p, None, Device::Cpu).scaled(&[1.0, 1.0, 2.0]).loss_with_noise(&x, &y, &noise);
        let c = CloudSize::new(&counts, CloudForm::Log).0;
        let z = Tensor::from_slice(&[0.0, -0.5 * c[1], -0.5 * 2.0 * c[2]]).to_kind(Kind::Float).unsqueeze(0).repeat([2, 1]) * p.s;
        let want = z.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0);
        assert!((scaled.double_value(&[]) - want.double_value(&[])).abs() < 1e-5);
    }

    #[test]
    fn the_noise_has_the_settings_mean_and_spread() {
        let noise = Noise::new();
        let e = noise.draw(&Tensor::zeros([400, 250], (Kind::Float, Device::Cpu)), 0.5, 0.1);
        let (mean, std) = (e.mean(Kind::Double).double_value(&[]), e.std(true).double_value(&[]));
        assert!((mean - 0.5).abs() < 0.002 && (std - 0.1).abs() < 0.002, "mean {mean}, std {std}");
    }
}
