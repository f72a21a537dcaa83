//! Training batches prepared on a background thread, so the next batch is ready when
//! the optimiser step ends. Each epoch's randomness comes from a generator seeded by
//! (seed, stage, epoch): a resumed run sees exactly the batches it would have seen.
use super::augment::{augment, Augment, Mixup, Normalize};
use super::sampler::Sampler;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;
use tch::{Device, Kind, Tensor};

/// One training batch, ready for the model.
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    /// With mixup: the blend weight and the partner labels.
    pub mix: Option<(f64, Tensor)>,
    /// Raw N(0, 1/3) draws (B x C) for stochastic losses such as GCL: one per loss term
    /// (two with mixup). Drawn here, from the epoch's generator, so runs repeat exactly.
    pub noise: Vec<Tensor>,
}

impl Batch {
    pub fn len(&self) -> i64 {
        self.y.size()[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything one epoch's batches are made from.
pub struct EpochPlan {
    pub images: Tensor,
    pub labels: Tensor,
    pub label_list: Vec<i64>,
    pub counts: Vec<usize>,
    pub norm: Normalize,
    pub aug: Augment,
    pub sampler: Sampler,
    pub batch_size: usize,
    pub device: Device,
    /// Classes, when the loss needs Gaussian noise per logit.
    pub noise_classes: Option<i64>,
    /// Hand out channels-last (NHWC) batches.
    pub channels_last: bool,
}

pub fn epoch_rng(seed: u64, stage: u64, epoch: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ (stage << 56) ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Number of batches in an epoch; a last batch of a single image is dropped, since
/// BatchNorm cannot train on it.
pub fn batches_per_epoch(n: usize, batch: usize) -> usize {
    let full = n / batch;
    if n % batch > 1 {
        full + 1
    } else {
        full
    }
}

/// B x C draws from N(0, 1/3), GCL's noise.
fn gaussian(b: i64, c: i64, device: Device, rng: &mut StdRng) -> Tensor {
    let normal = rand_distr::Normal::new(0.0f32, crate::loss::gcl::NOISE_STD as f32).expect("valid std");
    let v: Vec<f32> = (0..b * c).map(|_| rand_distr::Distribution::sample(&normal, rng)).collect();
    Tensor::from_slice(&v).view([b, c]).to_device(device)
}

impl EpochPlan {
    fn make_batch(&self, idx: &[usize], rng: &mut StdRng) -> Batch {
        let idx: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let it = Tensor::from_slice(&idx).to_device(self.images.device());
        let x = self.norm.apply(&self.images.index_select(0, &it).to_device(self.device));
        let y = self.labels.index_select(0, &it).to_device(self.device);
        let x = augment(&x, &self.aug, rng);
        let (x, mix) = match self.aug.mixup_alpha {
            Some(alpha) => {
                let m = Mixup::draw(alpha, idx.len(), rng);
                let perm = Tensor::from_slice(&m.perm).to_device(self.device);
                (m.apply(&x), Some((m.lam, y.index_select(0, &perm))))
            }
            None => (x, None),
        };
        let x = if self.channels_last { crate::precision::channels_last(&x) } else { x };
        let terms = if mix.is_some() { 2 } else { 1 };
        let noise = match self.noise_classes {
            Some(c) => (0..terms).map(|_| gaussian(idx.len() as i64, c, self.device, rng)).collect(),
            None => Vec::new(),
        };
        Batch { x, y, mix, noise }
    }

    /// A copy for another thread (tensors share their storage).
    fn shallow(&self) -> Self {
        EpochPlan {
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
            label_list: self.label_list.clone(),
            counts: self.counts.clone(),
            ..*self
        }
    }

    /// Starts a thread that yields the epoch's batches (at most `ahead` queued).
    pub fn spawn(&self, mut rng: StdRng, ahead: usize) -> (Receiver<Batch>, JoinHandle<()>) {
        let (tx, rx) = sync_channel(ahead);
        let plan = self.shallow();
        let handle = std::thread::spawn(move || {
            let _guard = tch::no_grad_guard();
            let order = plan.sampler.epoch_order(&plan.label_list, &plan.counts, &mut rng);
            let nb = batches_per_epoch(order.len(), plan.batch_size);
            for chunk in order.chunks(plan.batch_size).take(nb) {
                if tx.send(plan.make_batch(chunk, &mut rng)).is_err() {
                    return; // the trainer stopped early
                }
            }
        });
        (rx, handle)
    }
}

/// The test set in fixed order, normalised, for evaluation.
pub fn eval_batches(images: &Tensor, norm: Normalize, batch: i64, device: Device) -> impl Iterator<Item = Tensor> + '_ {
    let n = images.size()[0];
    (0..n).step_by(batch as usize).map(move |s| {
        let len = batch.min(n - s);
        norm.apply(&images.narrow(0, s, len).to_device(device)).to_kind(Kind::Float)
    })
}
