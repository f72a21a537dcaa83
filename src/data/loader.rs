//! Training batches, prepared on the training thread (the CPU default) or ahead on a
//! loader thread (CUDA), from any [`Source`]. Each epoch's randomness comes from a generator
//! seeded by (seed, stage, epoch): a resumed run sees exactly the batches it would have seen.
use super::augment::{place, Augment, Geometry, Mixup, Normalize, Placement};
use super::sampler::Sampler;
use super::Source;
use anyhow::{bail, Result};
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
}

impl Batch {
    pub fn len(&self) -> i64 {
        self.y.size()[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How batches are laid out for the model.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub device: Device,
    /// Channels-last (NHWC) batches.
    pub channels_last: bool,
}

/// Everything one epoch's batches are made from.
pub struct EpochPlan {
    pub source: Arc<dyn Source>,
    pub counts: Vec<usize>,
    pub norm: Normalize,
    pub aug: Augment,
    pub sampler: Sampler,
    pub batch_size: usize,
    pub layout: Layout,
}

/// The generator of one epoch's draws: the order, the crops and flips, mixup.
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

/// The samples at `idx`, normalised and placed (`placement` per sample) into one buffer.
fn assemble(source: &dyn Source, idx: &[usize], norm: Normalize, channels_last: bool, mut placement: impl FnMut() -> Placement) -> Result<(Vec<f32>, Geometry)> {
    let mut buf: Vec<f32> = Vec::new();
    let mut geometry: Option<Geometry> = None;
    for (k, &i) in idx.iter().enumerate() {
        let s = source.sample(i)?;
        let g = *geometry.get_or_insert(s.geometry);
        if s.geometry != g {
            bail!("sample {i} is {}x{}x{}, others in its batch {}x{}x{}: images of different sizes need a resize", s.geometry.c, s.geometry.h, s.geometry.w, g.c, g.h, g.w);
        }
        let per = g.pixels();
        if buf.is_empty() {
            buf = vec![0f32; idx.len() * per];
        }
        place(&mut buf[k * per..(k + 1) * per], &s.pixels, g, norm, placement(), channels_last);
    }
    Ok((buf, geometry.unwrap_or(Geometry { c: 0, h: 0, w: 0 })))
}

/// A host buffer of `b` images as an NCHW tensor on `layout.device`. Channels-last: the
/// buffer is N x H x W x C and the permuted view has channels-last strides, no copy.
fn to_tensor(buf: &[f32], b: usize, g: Geometry, layout: Layout) -> Tensor {
    let (bb, c, h, w) = (b as i64, g.c as i64, g.h as i64, g.w as i64);
    let x = Tensor::from_slice(buf);
    let x = if layout.channels_last { x.view([bb, h, w, c]).permute([0, 3, 1, 2]) } else { x.view([bb, c, h, w]) };
    x.to_device(layout.device)
}

impl EpochPlan {
    fn make_batch(&self, idx: &[usize], rng: &mut StdRng) -> Result<Batch> {
        let labels_all = self.source.labels();
        let (mut buf, g) = assemble(self.source.as_ref(), idx, self.norm, self.layout.channels_last, || {
            Placement::draw(self.aug.crop_pad, self.aug.flip, rng)
        })?;
        let labels: Vec<i64> = idx.iter().map(|&i| labels_all[i]).collect();
        let device = self.layout.device;
        let mix = self.aug.mixup_alpha.map(|alpha| {
            let m = Mixup::draw(alpha, idx.len(), rng);
            m.apply(&mut buf, g.pixels());
            let partner: Vec<i64> = m.perm.iter().map(|&j| labels[j]).collect();
            (m.lam, Tensor::from_slice(&partner).to_device(device))
        });
        let x = to_tensor(&buf, idx.len(), g, self.layout);
        Ok(Batch { x, y: Tensor::from_slice(&labels).to_device(device), mix })
    }

    /// A copy for another thread (the source is shared).
    fn shallow(&self) -> Self {
        EpochPlan { source: self.source.clone(), counts: self.counts.clone(), ..*self }
    }

    /// The epoch's batches, prepared on a background thread (at most `ahead` queued)
    /// or, with `ahead == 0`, on the caller's thread as they are asked for.
    pub fn epoch(&self, mut rng: StdRng, ahead: usize) -> Batches {
        let plan = self.shallow();
        if ahead == 0 {
            let order = plan.sampler.epoch_order(plan.source.labels(), &plan.counts, &mut rng);
            return Batches::Inline { plan, order, pos: 0, rng };
        }
        let (tx, rx) = sync_channel(ahead);
        let handle = std::thread::spawn(move || {
            let order = plan.sampler.epoch_order(plan.source.labels(), &plan.counts, &mut rng);
            let nb = batches_per_epoch(order.len(), plan.batch_size);
            for chunk in order.chunks(plan.batch_size).take(nb) {
                let b = plan.make_batch(chunk, &mut rng);
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    return; // the trainer stopped early, or this batch could not be made
                }
            }
        });
        Batches::Thread { rx: Some(rx), handle: Some(handle) }
    }
}

/// One epoch of batches.
pub enum Batches {
    Thread { rx: Option<Receiver<Result<Batch>>>, handle: Option<JoinHandle<()>> },
    Inline { plan: EpochPlan, order: Vec<usize>, pos: usize, rng: StdRng },
}

impl Iterator for Batches {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
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

/// A source in fixed order, normalised, no augmentation: evaluation's batches.
pub fn eval_batches<'a>(source: &'a dyn Source, norm: Normalize, batch: usize, layout: Layout) -> impl Iterator<Item = Result<Tensor>> + 'a {
    let n = source.len();
    (0..n).step_by(batch.max(1)).map(move |s| {
        let idx: Vec<usize> = (s..(s + batch).min(n)).collect();
        let (buf, g) = assemble(source, &idx, norm, layout.channels_last, || Placement::IDENTITY)?;
        Ok(to_tensor(&buf, idx.len(), g, layout))
    })
}
