//! Training and evaluation batches from any [`Source`], made on the caller's thread or by N
//! worker threads (batch b by worker b mod N, each a bounded queue ahead), delivered in order.
//!
//! Every random draw comes from a generator seeded by what it is for: the epoch's order from
//! (seed, stage, epoch), sample k's crop, flip and jitter from (seed, stage, epoch, k), batch
//! b's mixup from (seed, stage, epoch, b). So batches do not depend on the number of workers,
//! and a resumed run sees exactly the batches it would have seen. Nothing is held decoded
//! beyond the batches in the queues.
use super::augment::{place, Augment, Geometry, Mixup, Normalize, Placement};
use super::sampler::Sampler;
use super::transform::{enhance, random_resized_crop, TestTransform, TrainTransform, Tte};
use super::{Sample, Source};
pub use crate::runtime::Workers;
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use tch::{Device, Kind, Tensor};

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

/// Which part of each epoch this process trains on: rank `rank` of `world` data-parallel
/// workers takes every `world`-th position of the epoch's order, from position `rank`
/// (torch's DistributedSampler rule; the order is padded by its own start to a multiple of
/// `world`, so that all ranks take the same number of batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// The whole epoch (one process).
    pub const ALL: Shard = Shard { rank: 0, world: 1 };

    /// Positions per rank in an epoch of `n`.
    pub fn len(self, n: usize) -> usize {
        n.div_ceil(self.world.max(1))
    }

    /// This rank's part of `order`.
    pub fn take(self, order: Vec<usize>) -> Vec<usize> {
        if self.world <= 1 || order.is_empty() {
            return order;
        }
        let n = self.len(order.len()) * self.world;
        (self.rank..n).step_by(self.world).map(|i| order[i % order.len()]).collect()
    }

    /// An epoch seed made distinct per rank (unchanged for one process), so that each
    /// rank's augmentation and mixup draw their own values.
    pub fn seed(self, seed: u64) -> u64 {
        if self.world <= 1 {
            seed
        } else {
            (seed ^ (self.rank as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)).rotate_left(17)
        }
    }
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
    pub workers: Workers,
    pub shard: Shard,
}

/// The generator of one epoch's order.
pub fn epoch_rng(seed: u64, stage: u64, epoch: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ (stage << 56) ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// What a generator of an epoch draws for.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Sample = 1,
    Mixup = 2,
}

/// The generator of one sample's (or one batch's) draws in an epoch.
fn stream_rng(epoch_seed: u64, what: Stream, index: usize) -> StdRng {
    let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31);
    StdRng::seed_from_u64(mix(mix(epoch_seed, what as u64), index as u64))
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

/// A sample that could not be read, when the source skips such samples.
fn readable<'a>(source: &'a dyn Source, i: usize) -> Result<Option<Sample<'a>>> {
    match source.sample(i) {
        Ok(s) => Ok(Some(s)),
        Err(e) if source.skips_unreadable() => {
            source.note_unreadable(i, &e);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Normalised images of one geometry, one after another, in the model's layout.
struct Assembled {
    /// Float, on the CPU, `kept.len()` x pixels.
    x: Tensor,
    geometry: Geometry,
    /// Positions (in the request) of the samples that made it into `x`.
    kept: Vec<usize>,
}

/// The memory of a contiguous f32 CPU tensor that nothing else refers to.
fn floats(t: &mut Tensor) -> &mut [f32] {
    assert!(t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous());
    let n = t.numel();
    // SAFETY: the tensor is a contiguous CPU float tensor of n elements, made by this module
    // and not shared (no views, no other handles) while the slice lives; the &mut borrow of
    // `t` keeps it alive and unaliased for as long as the slice.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) }
}

/// The samples at `idx`, each prepared by `prepare(position, sample)` into (image, placement),
/// normalised and placed straight into the batch tensor's memory.
fn assemble<'a>(
    source: &'a dyn Source,
    idx: &[usize],
    norm: &Normalize,
    channels_last: bool,
    mut prepare: impl FnMut(usize, Sample<'a>) -> Result<Vec<(Sample<'a>, Placement)>>,
) -> Result<Assembled> {
    let mut geometry = Geometry { c: 0, h: 0, w: 0 };
    let mut x: Option<Tensor> = None;
    let mut kept = Vec::with_capacity(idx.len());
    // Rows written: one per view (test-time ensembling gives several per sample).
    let mut rows = 0;
    for (k, &i) in idx.iter().enumerate() {
        let Some(s) = readable(source, i)? else { continue };
        let views = prepare(k, s)?;
        for (s, p) in views.iter() {
            let g = s.geometry;
            if rows == 0 {
                geometry = g;
                x = Some(Tensor::empty([(idx.len() * views.len()) as i64, g.pixels() as i64], (Kind::Float, Device::Cpu)));
            } else if g != geometry {
                let o = geometry;
                bail!(
                    "sample {i} is {}x{}x{} (HxWxC), others in its batch {}x{}x{}: images of different sizes need a resizing \
                     transform (data.train_transform = {{ name = \"resized-crop\", ... }}, data.test_transform = {{ name = \"resize-crop\", ... }})",
                    g.h, g.w, g.c, o.h, o.w, o.c
                );
            }
            let per = g.pixels();
            let at = rows * per;
            let buf = floats(x.as_mut().expect("allocated with the first sample"));
            place(&mut buf[at..at + per], &s.pixels, g, norm, *p, channels_last);
            rows += 1;
        }
        kept.push(k);
    }
    let x = match x {
        Some(x) if rows < x.size()[0] as usize => x.narrow(0, 0, rows as i64).contiguous(),
        Some(x) => x,
        None => Tensor::empty([0, 0], (Kind::Float, Device::Cpu)),
    };
    Ok(Assembled { x, geometry, kept })
}

/// A batch of `b` images (`x`: b x pixels) as an NCHW tensor on `layout.device`.
/// Channels-last: the memory is N x H x W x C and the permuted view has channels-last
/// strides, no copy. CUDA: copied from pinned memory without blocking.
fn to_tensor(x: Tensor, b: usize, g: Geometry, layout: Layout) -> Tensor {
    let (bb, c, h, w) = (b as i64, g.c as i64, g.h as i64, g.w as i64);
    let x = if layout.channels_last { x.view([bb, h, w, c]).permute([0, 3, 1, 2]) } else { x.view([bb, c, h, w]) };
    to_device(x, layout.device)
}

fn to_device(x: Tensor, device: Device) -> Tensor {
    match device {
        Device::Cpu => x,
        d => x.pin_memory(d).to_device_(d, Kind::Float, true, false),
    }
}

/// The training image of a sample and where it lands, from the sample's own generator.
fn train_image<'a>(s: Sample<'a>, aug: &Augment, rng: &mut StdRng) -> Result<(Sample<'a>, Placement)> {
    match aug.transform {
        TrainTransform::PadCrop => Ok((s, Placement::draw(aug.crop_pad, aug.flip, rng))),
        TrainTransform::ResizePadCrop { size } => {
            let img = TestTransform::ResizeCrop { resize: size, size }.apply(s)?;
            Ok((img, Placement::draw(aug.crop_pad, aug.flip, rng)))
        }
        TrainTransform::ResizedCrop { size, scale, ratio, jitter } => {
            let mut img = random_resized_crop(&s, size, scale, ratio, rng)?;
            let flip = aug.flip && rng.gen_bool(0.5);
            if let Some(strength) = jitter {
                let c = img.geometry.c;
                for e in super::transform::draw_jitter(strength, rng) {
                    enhance(img.pixels.to_mut(), c, e);
                }
            }
            Ok((img, Placement { dy: 0, dx: 0, flip }))
        }
    }
}

impl EpochPlan {
    /// Batch `b` of an epoch: the samples `order[b * batch ..]`; None when skipped unreadable
    /// images leave fewer than two (BatchNorm cannot train on one).
    fn make_batch(&self, b: usize, order: &[usize], epoch_seed: u64) -> Result<Option<Batch>> {
        let start = b * self.batch_size;
        let idx = &order[start..(start + self.batch_size).min(order.len())];
        let a = assemble(self.source.as_ref(), idx, &self.norm, self.layout.channels_last, |k, s| {
            Ok(vec![train_image(s, &self.aug, &mut stream_rng(epoch_seed, Stream::Sample, start + k))?])
        })?;
        let (mut x, g) = (a.x, a.geometry);
        let labels: Vec<i64> = a.kept.iter().map(|&k| self.source.labels()[idx[k]]).collect();
        if labels.len() < 2 {
            return Ok(None);
        }
        let device = self.layout.device;
        let mix = self.aug.mixup_alpha.map(|alpha| {
            let m = Mixup::draw(alpha, labels.len(), &mut stream_rng(epoch_seed, Stream::Mixup, b));
            m.apply(floats(&mut x), g.pixels());
            let partner: Vec<i64> = m.perm.iter().map(|&j| labels[j]).collect();
            (m.lam, Tensor::from_slice(&partner).to_device(device))
        });
        let x = to_tensor(x, labels.len(), g, self.layout);
        Ok(Some(Batch { x, y: Tensor::from_slice(&labels).to_device(device), mix }))
    }

    /// The epoch's batches, in order.
    pub fn epoch(&self, mut rng: StdRng) -> impl Iterator<Item = Result<Batch>> {
        let order = self.shard.take(self.sampler.epoch_order(self.source.labels(), &self.counts, &mut rng));
        let epoch_seed: u64 = self.shard.seed(rng.gen());
        let n = batches_per_epoch(order.len(), self.batch_size);
        let plan = EpochPlan { source: self.source.clone(), counts: Vec::new(), ..*self };
        let order = Arc::new(order);
        ordered(n, self.workers, move |b| plan.make_batch(b, &order, epoch_seed)).filter_map(Result::transpose)
    }
}

/// Results 0..n of `make`, in order, made as `workers` says.
pub fn ordered<T: Send + 'static>(n: usize, workers: Workers, make: impl Fn(usize) -> Result<T> + Send + Sync + 'static) -> Ordered<T> {
    let make = Arc::new(make);
    if workers.workers == 0 {
        return Ordered { n, next: 0, inline: Some(make), queues: Vec::new(), handles: Vec::new() };
    }
    let w = workers.workers.min(n.max(1));
    let mut queues = Vec::with_capacity(w);
    let mut handles = Vec::with_capacity(w);
    for k in 0..w {
        let (tx, rx) = sync_channel(workers.ahead.max(1));
        let make = make.clone();
        handles.push(std::thread::spawn(move || {
            for b in (k..n).step_by(w) {
                let r = make(b);
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return; // the consumer stopped early, or this one could not be made
                }
            }
        }));
        queues.push(rx);
    }
    Ordered { n, next: 0, inline: None, queues, handles }
}

type Maker<T> = Arc<dyn Fn(usize) -> Result<T> + Send + Sync>;

/// The results of [`ordered`], as an iterator.
pub struct Ordered<T> {
    n: usize,
    next: usize,
    inline: Option<Maker<T>>,
    queues: Vec<Receiver<Result<T>>>,
    handles: Vec<JoinHandle<()>>,
}

impl<T> Ordered<T> {
    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl<T> Iterator for Ordered<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        if self.next >= self.n {
            return None;
        }
        let b = self.next;
        self.next += 1;
        match &self.inline {
            Some(make) => Some(make(b)),
            None => {
                let q = &self.queues[b % self.queues.len()];
                match q.recv() {
                    Ok(r) => {
                        if r.is_err() {
                            self.next = self.n;
                        }
                        Some(r)
                    }
                    Err(_) => {
                        self.next = self.n;
                        Some(Err(anyhow::anyhow!("a loader worker stopped without a result (it panicked)")))
                    }
                }
            }
        }
    }
}

impl<T> Drop for Ordered<T> {
    fn drop(&mut self) {
        self.queues.clear(); // unblocks workers waiting to send
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// One evaluation batch: the images, and which of the requested samples they are (all of
/// them, unless unreadable ones are skipped).
pub struct EvalBatch {
    /// `views` rows per sample, a sample's views together.
    pub x: Tensor,
    pub samples: Vec<usize>,
    pub views: usize,
}

impl EvalBatch {
    /// Per-sample rows of `y` (rows of `x`'s views): the mean over each sample's views.
    pub fn per_sample(&self, y: Tensor) -> Tensor {
        if self.views == 1 {
            return y;
        }
        let d = y.size()[1..].to_vec();
        y.view([&[self.samples.len() as i64, self.views as i64][..], &d].concat().as_slice()).mean_dim(1, false, None)
    }
}

/// A source in fixed order through the test transform (and its views under `tte`), normalised:
/// evaluation's batches.
pub fn eval_batches(source: Arc<dyn Source>, norm: Normalize, transform: TestTransform, tte: Tte, batch: usize, layout: Layout, workers: Workers) -> Ordered<EvalBatch> {
    let (n, batch) = (source.len(), batch.max(1));
    // A batch of `batch` images in all, views counted.
    let per = (batch / tte.views()).max(1);
    ordered(n.div_ceil(per), workers, move |b| {
        let idx: Vec<usize> = (b * per..((b + 1) * per).min(n)).collect();
        let a = assemble(source.as_ref(), &idx, &norm, layout.channels_last, |_, s| tte.apply(&transform, s))?;
        let samples = a.kept.iter().map(|&k| idx[k]).collect::<Vec<_>>();
        let x = to_tensor(a.x, samples.len() * tte.views(), a.geometry, layout);
        Ok(EvalBatch { x, samples, views: tte.views() })
    })
}
