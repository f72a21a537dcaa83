//! Training batches, prepared on the training thread (the CPU default) or ahead on a
//! loader thread (CUDA). Each epoch's randomness comes from a generator seeded by
//! (seed, stage, epoch): a resumed run sees exactly the batches it would have seen.
use super::augment::{place, Augment, Geometry, Mixup, Normalize, Placement};
use super::sampler::Sampler;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use tch::{Device, Tensor};

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
    /// The training images, u8, N x C x H x W, on the host.
    pub pixels: Arc<Vec<u8>>,
    pub geometry: Geometry,
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

/// The pixels of a u8 image tensor (N x C x H x W) and their geometry.
pub fn host_pixels(images: &Tensor) -> (Arc<Vec<u8>>, Geometry) {
    let s = images.size();
    let g = Geometry { c: s[1] as usize, h: s[2] as usize, w: s[3] as usize };
    let flat = images.to_device(Device::Cpu).contiguous().flatten(0, -1);
    (Arc::new(Vec::<u8>::try_from(&flat).expect("u8 images")), g)
}

/// B x C draws from N(0, 1/3), GCL's noise.
fn gaussian(b: i64, c: i64, device: Device, rng: &mut StdRng) -> Tensor {
    let normal = rand_distr::Normal::new(0.0f32, crate::loss::gcl::NOISE_STD as f32).expect("valid std");
    let v: Vec<f32> = (0..b * c).map(|_| rand_distr::Distribution::sample(&normal, rng)).collect();
    Tensor::from_slice(&v).view([b, c]).to_device(device)
}

impl EpochPlan {
    fn make_batch(&self, idx: &[usize], rng: &mut StdRng) -> Batch {
        let (g, per, b) = (self.geometry, self.geometry.pixels(), idx.len());
        let mut buf = vec![0f32; b * per];
        for (k, &i) in idx.iter().enumerate() {
            let p = Placement::draw(self.aug.crop_pad, self.aug.flip, rng);
            place(&mut buf[k * per..(k + 1) * per], &self.pixels[i * per..(i + 1) * per], g, self.norm, p, self.channels_last);
        }
        let labels: Vec<i64> = idx.iter().map(|&i| self.label_list[i]).collect();
        let mix = self.aug.mixup_alpha.map(|alpha| {
            let m = Mixup::draw(alpha, b, rng);
            m.apply(&mut buf, per);
            let partner: Vec<i64> = m.perm.iter().map(|&j| labels[j]).collect();
            (m.lam, Tensor::from_slice(&partner).to_device(self.device))
        });
        let (bb, c, h, w) = (b as i64, g.c as i64, g.h as i64, g.w as i64);
        let x = Tensor::from_slice(&buf);
        // Channels-last: the buffer is N x H x W x C; the permuted view is an NCHW tensor
        // with channels-last strides, no copy.
        let x = if self.channels_last { x.view([bb, h, w, c]).permute([0, 3, 1, 2]) } else { x.view([bb, c, h, w]) };
        let x = x.to_device(self.device);
        let y = Tensor::from_slice(&labels).to_device(self.device);
        let terms = if mix.is_some() { 2 } else { 1 };
        let noise = match self.noise_classes {
            Some(classes) => (0..terms).map(|_| gaussian(bb, classes, self.device, rng)).collect(),
            None => Vec::new(),
        };
        Batch { x, y, mix, noise }
    }

    /// A copy for another thread (tensors share their storage).
    fn shallow(&self) -> Self {
        EpochPlan {
            pixels: self.pixels.clone(),
            label_list: self.label_list.clone(),
            counts: self.counts.clone(),
            ..*self
        }
    }

    /// The epoch's batches, prepared on a background thread (at most `ahead` queued)
    /// or, with `ahead == 0`, on the caller's thread as they are asked for.
    pub fn epoch(&self, mut rng: StdRng, ahead: usize) -> Batches {
        let plan = self.shallow();
        if ahead == 0 {
            let order = plan.sampler.epoch_order(&plan.label_list, &plan.counts, &mut rng);
            return Batches::Inline { plan, order, pos: 0, rng };
        }
        let (tx, rx) = sync_channel(ahead);
        let handle = std::thread::spawn(move || {
            let order = plan.sampler.epoch_order(&plan.label_list, &plan.counts, &mut rng);
            let nb = batches_per_epoch(order.len(), plan.batch_size);
            for chunk in order.chunks(plan.batch_size).take(nb) {
                if tx.send(plan.make_batch(chunk, &mut rng)).is_err() {
                    return; // the trainer stopped early
                }
            }
        });
        Batches::Thread { rx: Some(rx), handle: Some(handle) }
    }
}

/// One epoch of batches.
pub enum Batches {
    Thread { rx: Option<Receiver<Batch>>, handle: Option<JoinHandle<()>> },
    Inline { plan: EpochPlan, order: Vec<usize>, pos: usize, rng: StdRng },
}

impl Iterator for Batches {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        match self {
            Batches::Thread { rx, .. } => rx.as_ref()?.recv().ok(),
            Batches::Inline { plan, order, pos, rng } => {
                if *pos >= batches_per_epoch(order.len(), plan.batch_size) {
                    return None;
                }
                let end = (*pos * plan.batch_size + plan.batch_size).min(order.len());
                let b = plan.make_batch(&order[*pos * plan.batch_size..end], rng);
                *pos += 1;
                Some(b)
            }
        }
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        if let Batches::Thread { rx, handle } = self {
            drop(rx.take()); // unblocks a loader waiting to send
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// The test set in fixed order, normalised, for evaluation.
pub fn eval_batches(images: &Tensor, norm: Normalize, batch: i64, device: Device) -> impl Iterator<Item = Tensor> + '_ {
    let n = images.size()[0];
    (0..n).step_by(batch as usize).map(move |s| {
        let len = batch.min(n - s);
        norm.apply(&images.narrow(0, s, len).to_device(device))
    })
}
