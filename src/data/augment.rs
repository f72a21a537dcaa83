//! Batched augmentation as tensor ops: normalisation, random crop with zero padding,
//! horizontal flip and mixup. The random draws come from the caller's RNG so that a
//! run is repeatable whatever thread prepares the batch.
use rand::Rng;
use rand_distr::{Beta, Distribution};
use tch::{Kind, Tensor};

/// Per-pixel normalisation with one mean and standard deviation (over all training pixels,
/// as the reference computes them), in [0, 1] units.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    pub mean: f64,
    pub std: f64,
}

impl Normalize {
    pub fn fit(images_u8: &Tensor) -> Self {
        let x = images_u8.to_kind(Kind::Float) / 255.0;
        let mean = x.mean(Kind::Double).double_value(&[]);
        let std = x.std(true).double_value(&[]);
        Normalize { mean, std: if std > 0.0 { std } else { 1.0 } }
    }
    pub fn apply(&self, images_u8: &Tensor) -> Tensor {
        (images_u8.to_kind(Kind::Float) / 255.0 - self.mean) / self.std
    }
}

/// Random crop of the original size from the image padded by `pad` zeros on each side.
pub fn random_crop<R: Rng>(x: &Tensor, pad: i64, rng: &mut R) -> Tensor {
    if pad == 0 {
        return x.shallow_clone();
    }
    let (b, c, h, w) = x.size4().expect("images are B x C x H x W");
    let dev = x.device();
    let padded = x.constant_pad_nd([pad, pad, pad, pad]);
    let oy: Vec<i64> = (0..b).map(|_| rng.gen_range(0..=2 * pad)).collect();
    let ox: Vec<i64> = (0..b).map(|_| rng.gen_range(0..=2 * pad)).collect();
    let rows = Tensor::from_slice(&oy).to_device(dev).view([b, 1]) + Tensor::arange(h, (Kind::Int64, dev)).view([1, h]);
    let cols = Tensor::from_slice(&ox).to_device(dev).view([b, 1]) + Tensor::arange(w, (Kind::Int64, dev)).view([1, w]);
    let wp = w + 2 * pad;
    let rows = rows.view([b, 1, h, 1]).expand([b, c, h, wp], false);
    let picked_rows = padded.gather(2, &rows, false);
    let cols = cols.view([b, 1, 1, w]).expand([b, c, h, w], false);
    picked_rows.gather(3, &cols, false)
}

/// Flips each image left-right with probability 1/2.
pub fn random_flip<R: Rng>(x: &Tensor, rng: &mut R) -> Tensor {
    let b = x.size()[0];
    let mask: Vec<bool> = (0..b).map(|_| rng.gen_bool(0.5)).collect();
    let mask = Tensor::from_slice(&mask).to_device(x.device()).view([b, 1, 1, 1]);
    x.flip([3]).where_self(&mask, x)
}

/// Mixup (Zhang et al. 2018): the batch blended with a permutation of itself.
#[derive(Debug)]
pub struct Mixup {
    pub lam: f64,
    pub perm: Vec<i64>,
}

impl Mixup {
    pub fn draw<R: Rng>(alpha: f64, batch: usize, rng: &mut R) -> Self {
        let lam = if alpha > 0.0 { Beta::new(alpha, alpha).expect("alpha > 0").sample(rng) } else { 1.0 };
        let mut perm: Vec<i64> = (0..batch as i64).collect();
        rand::seq::SliceRandom::shuffle(&mut perm[..], rng);
        Mixup { lam, perm }
    }
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let perm = Tensor::from_slice(&self.perm).to_device(x.device());
        x * self.lam + x.index_select(0, &perm) * (1.0 - self.lam)
    }
}

/// What a stage does to each training batch.
#[derive(Debug, Clone, Copy)]
pub struct Augment {
    pub crop_pad: i64,
    pub flip: bool,
    pub mixup_alpha: Option<f64>,
}

/// Moves a normalised batch through crop and flip.
pub fn augment<R: Rng>(x: &Tensor, aug: &Augment, rng: &mut R) -> Tensor {
    let x = random_crop(x, aug.crop_pad, rng);
    if aug.flip {
        random_flip(&x, rng)
    } else {
        x
    }
}
