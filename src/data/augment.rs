//! Batch preparation on the host, in plain Rust: normalisation, random crop with zero
//! padding, horizontal flip and mixup, written straight into the batch buffer in the
//! model's memory layout (the resizing transforms are in `transform.rs`). Doing this without tensor ops keeps the loader thread off
//! libtorch's thread pool, which the training step needs whole (docs/performance.md).
//! The random draws come from the caller's RNG, so a run repeats exactly.
use super::Source;
use anyhow::Result;
use rand::Rng;
use rand_distr::{Beta, Distribution};

/// Per-channel normalisation, (x - mean_c) / std_c, in [0, 1] units. One-channel images use
/// the first entry.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Normalize {
    /// ImageNet's statistics, which the long-tail benchmarks (and torchvision's weights) use.
    pub const IMAGENET: Normalize = Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    /// OpenAI's CLIP statistics (OPENAI_DATASET_MEAN / STD), which CLIP's weights expect.
    pub const CLIP: Normalize = Normalize { mean: [0.48145466, 0.4578275, 0.40821073], std: [0.26862954, 0.26130258, 0.27577711] };

    /// The same mean and standard deviation for every channel.
    pub fn uniform(mean: f64, std: f64) -> Self {
        Normalize { mean: [mean; 3], std: [std; 3] }
    }

    /// Mean and (unbiased) standard deviation of every pixel of `source`, over all channels
    /// together as the reference computes them, exactly (integer sums of the u8 values).
    pub fn fit(source: &dyn Source) -> Result<Self> {
        let (mut n, mut sum, mut sq) = (0u64, 0u128, 0u128);
        for i in 0..source.len() {
            let s = source.sample(i)?;
            n += s.pixels.len() as u64;
            for &v in s.pixels.iter() {
                sum += v as u128;
                sq += (v as u128) * (v as u128);
            }
        }
        if n < 2 {
            return Ok(Normalize::uniform(0.0, 1.0));
        }
        let (nf, mean) = (n as f64, sum as f64 / n as f64);
        // sum (v - mean)^2 = (n * sq - sum^2) / n, the numerator an exact integer.
        let ss = (n as u128 * sq - sum * sum) as f64 / nf;
        let std = (ss / (nf - 1.0)).sqrt() / 255.0;
        Ok(Normalize::uniform(mean / 255.0, if std > 0.0 { std } else { 1.0 }))
    }

    /// The six numbers, means first (checkpoints store them so).
    pub fn to_vec(&self) -> Vec<f64> {
        self.mean.iter().chain(&self.std).copied().collect()
    }
    /// From `to_vec`'s six numbers, or from two (mean, std) as earlier checkpoints stored them.
    pub fn from_slice(v: &[f64]) -> Option<Self> {
        match v.len() {
            2 => Some(Normalize::uniform(v[0], v[1])),
            6 => Some(Normalize { mean: [v[0], v[1], v[2]], std: [v[3], v[4], v[5]] }),
            _ => None,
        }
    }
}

/// What a stage does to each training batch.
#[derive(Debug, Clone, Copy)]
pub struct Augment {
    pub transform: super::transform::TrainTransform,
    /// `pad-crop`'s padding.
    pub crop_pad: i64,
    pub flip: bool,
    pub mixup_alpha: Option<f64>,
}

/// Image geometry: channels, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Geometry {
    pub fn pixels(&self) -> usize {
        self.c * self.h * self.w
    }
}

/// Where one image lands: crop offset in the padded image and whether it is flipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub dy: i64,
    pub dx: i64,
    pub flip: bool,
}

impl Placement {
    pub const IDENTITY: Placement = Placement { dy: 0, dx: 0, flip: false };

    /// Offsets in 0..=2*pad (relative to the padded image) and a fair coin for the flip.
    pub fn draw<R: Rng>(pad: i64, flip: bool, rng: &mut R) -> Self {
        let (dy, dx) = if pad > 0 { (rng.gen_range(0..=2 * pad) - pad, rng.gen_range(0..=2 * pad) - pad) } else { (0, 0) };
        Placement { dy, dx, flip: flip && rng.gen_bool(0.5) }
    }
}

/// Writes the normalised, cropped (zero outside the image, as padding after normalising
/// does) and maybe flipped image `img` (H, W, C) into `out`, channels-first (C, H, W) or
/// channels-last (H, W, C).
pub fn place(out: &mut [f32], img: &[u8], g: Geometry, norm: &Normalize, p: Placement, channels_last: bool) {
    // One table per channel: u8 value -> normalised value (the same products as computing
    // them, looked up instead of multiplied).
    let mut lut = [[0f32; 256]; 3];
    for (ch, t) in lut.iter_mut().enumerate().take(g.c.min(3)) {
        let (scale, shift) = ((1.0 / (255.0 * norm.std[ch])) as f32, (-norm.mean[ch] / norm.std[ch]) as f32);
        for (v, x) in t.iter_mut().enumerate() {
            *x = v as f32 * scale + shift;
        }
    }
    let (h, w, c) = (g.h, g.w, g.c);
    if p.dy == 0 && p.dx == 0 {
        // No crop offset (the resizing transforms, evaluation): row by row.
        for y in 0..h {
            let row = &img[y * w * c..(y + 1) * w * c];
            for x in 0..w {
                let sx = if p.flip { w - 1 - x } else { x };
                let px = &row[sx * c..sx * c + c];
                for ch in 0..c {
                    let at = if channels_last { (y * w + x) * c + ch } else { (ch * h + y) * w + x };
                    out[at] = lut[ch][px[ch] as usize];
                }
            }
        }
        return;
    }
    for y in 0..h {
        let sy = y as i64 + p.dy;
        for x in 0..w {
            // Flip after the crop: output column x shows cropped column w-1-x.
            let cx = if p.flip { w - 1 - x } else { x };
            let sx = cx as i64 + p.dx;
            let inside = sy >= 0 && sy < h as i64 && sx >= 0 && sx < w as i64;
            let src = if inside { (sy as usize * w + sx as usize) * c } else { 0 };
            for ch in 0..c {
                let v = if inside { lut[ch][img[src + ch] as usize] } else { 0.0 };
                let at = if channels_last { (y * w + x) * c + ch } else { (ch * h + y) * w + x };
                out[at] = v;
            }
        }
    }
}

/// Mixup (Zhang et al. 2018): the batch blended with a permutation of itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixup {
    pub lam: f64,
    pub perm: Vec<usize>,
}

impl Mixup {
    pub fn draw<R: Rng>(alpha: f64, batch: usize, rng: &mut R) -> Self {
        let lam = Beta::new(alpha, alpha).expect("alpha > 0").sample(rng);
        let mut perm: Vec<usize> = (0..batch).collect();
        rand::seq::SliceRandom::shuffle(&mut perm[..], rng);
        Mixup { lam, perm }
    }

    /// x_i <- lam * x_i + (1 - lam) * x_perm(i), on a batch of `per`-sized images.
    pub fn apply(&self, batch: &mut [f32], per: usize) {
        let src = batch.to_vec();
        let (a, b) = (self.lam as f32, (1.0 - self.lam) as f32);
        for (i, &j) in self.perm.iter().enumerate() {
            let (dst, other) = (&mut batch[i * per..(i + 1) * per], &src[j * per..(j + 1) * per]);
            for (d, (s, o)) in dst.iter_mut().zip(src[i * per..(i + 1) * per].iter().zip(other)) {
                *d = a * s + b * o;
            }
        }
    }
}
