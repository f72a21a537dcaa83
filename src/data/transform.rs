//! The benchmarks' image transforms, on 8-bit interleaved pixels (H x W x C), as torchvision
//! applies them to PIL images: RandomResizedCrop, Resize + CenterCrop, ColorJitter. Given the
//! same crop box, size and factors, the pixels equal torchvision's within the tolerance that
//! tests/transforms.rs states (fixtures from scripts/gen_transform_fixtures.py).
//!
//! Resizing is Pillow's convolution resampling with its bilinear filter (antialiased when
//! shrinking), by fast_image_resize, which reproduces Pillow's fixed-point arithmetic.
//! The random draws come from the caller's generator, not torch's.
use super::augment::{Geometry, Placement};
use super::Sample;
use anyhow::{anyhow, Result};
use fast_image_resize as fr;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// What is done to a training image before normalisation (the stage's `flip` applies to both).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TrainTransform {
    /// The CIFAR recipe: a random crop of the image padded by the stage's `crop_pad` pixels
    /// (zeros after normalisation). Needs images of one size.
    PadCrop,
    /// Small images of any size: torchvision's Resize(size) + CenterCrop(size), then
    /// `pad-crop`'s random crop of the zero-padded image (the stage's `crop_pad`).
    ResizePadCrop {
        #[serde(default = "default_small_size")]
        size: usize,
    },
    /// The ImageNet recipe: torchvision's RandomResizedCrop(size, scale, ratio), then
    /// ColorJitter(brightness, contrast, saturation) when `jitter` is set. Fields left out
    /// take these defaults: 224, [0.08, 1], [3/4, 4/3], no jitter.
    ResizedCrop {
        #[serde(default = "default_size")]
        size: usize,
        #[serde(default = "default_scale")]
        scale: [f64; 2],
        #[serde(default = "default_ratio")]
        ratio: [f64; 2],
        #[serde(default)]
        jitter: Option<[f64; 3]>,
    },
}

// The defaults of fields a settings table leaves out: torchvision's and ImageNet's.
fn default_size() -> usize {
    224
}
fn default_resize() -> usize {
    256
}
fn default_small_size() -> usize {
    32
}
fn default_scale() -> [f64; 2] {
    [0.08, 1.0]
}
fn default_ratio() -> [f64; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}

/// What is done to an evaluation image before normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TestTransform {
    /// The image as it is (images of one size).
    None,
    /// torchvision's Resize(resize) (the shorter side) then CenterCrop(size); left out:
    /// 256 and 224.
    ResizeCrop {
        #[serde(default = "default_resize")]
        resize: usize,
        #[serde(default = "default_size")]
        size: usize,
    },
    /// CLIP's preprocessing (OpenAI's CLIP, OpenCLIP's `image_transform` for evaluation):
    /// the shorter side resized to `size` bicubically (PIL's, antialiased), then
    /// CenterCrop(size); left out: 224.
    Clip {
        #[serde(default = "default_size")]
        size: usize,
    },
}

impl TrainTransform {
    /// ImageNet-LT's training transform at `size` (224 in the benchmarks).
    pub fn imagenet(size: usize) -> Self {
        TrainTransform::ResizedCrop { size, scale: default_scale(), ratio: default_ratio(), jitter: None }
    }
    /// Checks the parameters (each problem under `prefix`).
    pub fn check_ranges(&self, prefix: &str, r: &mut crate::util::Ranges) {
        if let TrainTransform::ResizePadCrop { size } = self {
            r.check(format!("{prefix}.size"), size, (1..=4096).contains(size), "1 to 4096 pixels");
        }
        if let TrainTransform::ResizedCrop { size, scale, ratio, jitter } = self {
            r.check(format!("{prefix}.size"), size, (1..=4096).contains(size), "1 to 4096 pixels");
            r.check(format!("{prefix}.scale"), format!("{scale:?}"), 0.0 < scale[0] && scale[0] <= scale[1] && scale[1] <= 1.0, "0 < min <= max <= 1");
            r.check(format!("{prefix}.ratio"), format!("{ratio:?}"), 0.0 < ratio[0] && ratio[0] <= ratio[1] && ratio[1].is_finite(), "0 < min <= max");
            if let Some(j) = jitter {
                r.check(
                    format!("{prefix}.jitter"),
                    format!("{j:?}"),
                    j.iter().all(|&v| (0.0..=1.0).contains(&v)),
                    "each of brightness, contrast, saturation in 0..1",
                );
            }
        }
    }
}

impl TrainTransform {
    /// The side of the images it makes (None: as they come).
    pub fn size(&self) -> Option<usize> {
        match *self {
            TrainTransform::PadCrop => None,
            TrainTransform::ResizePadCrop { size } | TrainTransform::ResizedCrop { size, .. } => Some(size),
        }
    }
    /// In words, for logs.
    pub fn describe(&self) -> String {
        match *self {
            TrainTransform::PadCrop => "pad-crop (random crop of the zero-padded image, flip)".into(),
            TrainTransform::ResizePadCrop { size } => format!("resize-pad-crop {size} px (Resize + CenterCrop, random crop of the zero-padded image, flip)"),
            TrainTransform::ResizedCrop { size, scale, .. } => format!("resized-crop {size} px (RandomResizedCrop, scale {}-{}, flip)", scale[0], scale[1]),
        }
    }
}

impl TestTransform {
    /// In words, for logs.
    pub fn describe(&self) -> String {
        match *self {
            TestTransform::None => "none".into(),
            TestTransform::ResizeCrop { resize, size } => format!("resize-crop (Resize {resize} + CenterCrop {size})"),
            TestTransform::Clip { size } => format!("clip (bicubic Resize {size} + CenterCrop {size})"),
        }
    }

    pub fn check_ranges(&self, prefix: &str, r: &mut crate::util::Ranges) {
        if let TestTransform::ResizeCrop { resize, .. } = self {
            r.check(format!("{prefix}.resize"), resize, (1..=8192).contains(resize), "1 to 8192 pixels");
        }
        if let TestTransform::ResizeCrop { size, .. } | TestTransform::Clip { size } = self {
            r.check(format!("{prefix}.size"), size, (1..=4096).contains(size), "1 to 4096 pixels");
        }
    }
    /// The evaluation image for sample `s`.
    pub fn apply<'a>(&self, s: Sample<'a>) -> Result<Sample<'a>> {
        match *self {
            TestTransform::None => Ok(s),
            TestTransform::ResizeCrop { resize, size } => {
                let r = resize_shorter(&s, resize)?;
                Ok(crop(&r, center_crop_box(r.geometry, size)))
            }
            TestTransform::Clip { size } => {
                let r = resize_shorter_with(&s, size, fr::FilterType::CatmullRom)?;
                Ok(crop(&r, center_crop_box(r.geometry, size)))
            }
        }
    }
}

/// `data.tte`: test-time ensembling (LIFT's `tte`, Shi et al. 2024): each test image's logits
/// are the mean over views: the image before the test transform's crop, its shorter side
/// resized to the crop's size + `expand` (as the test transform resizes: bilinear, bicubic for
/// `clip`; for `none`, the image's own shorter side + `expand`), and torchvision's FiveCrop of
/// it (centre and corners at the crop's size), with their mirror images for `ten-crop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Tte {
    #[default]
    None,
    FiveCrop {
        #[serde(default = "default_expand")]
        expand: usize,
    },
    TenCrop {
        #[serde(default = "default_expand")]
        expand: usize,
    },
}

/// LIFT's `expand`, for 224 px crops.
fn default_expand() -> usize {
    24
}

impl Tte {
    /// Views per image.
    pub fn views(&self) -> usize {
        match self {
            Tte::None => 1,
            Tte::FiveCrop { .. } => 5,
            Tte::TenCrop { .. } => 10,
        }
    }

    /// The views of sample `s` under the test transform `t`, each with how to place it.
    pub fn apply<'a>(&self, t: &TestTransform, s: Sample<'a>) -> Result<Vec<(Sample<'a>, Placement)>> {
        let expand = match *self {
            Tte::None => return Ok(vec![(t.apply(s)?, Placement::IDENTITY)]),
            Tte::FiveCrop { expand } | Tte::TenCrop { expand } => expand,
        };
        let (size, filter) = match *t {
            TestTransform::None => (s.geometry.h.min(s.geometry.w), fr::FilterType::Bilinear),
            TestTransform::ResizeCrop { size, .. } => (size, fr::FilterType::Bilinear),
            TestTransform::Clip { size } => (size, fr::FilterType::CatmullRom),
        };
        let r = resize_shorter_with(&s, size + expand, filter)?;
        let g = r.geometry;
        let (bottom, right) = ((g.h - size) as i64, (g.w - size) as i64);
        let corner = |top, left| CropBox { top, left, h: size, w: size };
        let boxes = [center_crop_box(g, size), corner(0, 0), corner(0, right), corner(bottom, 0), corner(bottom, right)];
        let flips: &[bool] = if matches!(self, Tte::TenCrop { .. }) { &[false, true] } else { &[false] };
        let r = &r;
        Ok(flips.iter().flat_map(|&flip| boxes.iter().map(move |&b| (crop(r, b), Placement { dy: 0, dx: 0, flip }))).collect())
    }
}

/// A crop box in image coordinates; it may reach outside the image (zeros there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub top: i64,
    pub left: i64,
    pub h: usize,
    pub w: usize,
}

/// Python's round() of n / 2 (halves to even), as torchvision's center_crop computes offsets.
fn round_half(n: i64) -> i64 {
    let q = n.div_euclid(2);
    if n.rem_euclid(2) == 1 && q % 2 != 0 {
        q + 1
    } else {
        q
    }
}

/// Python's round() (halves to even) of a non-negative float.
fn py_round(x: f64) -> i64 {
    let r = x.round() as i64;
    if x - x.floor() == 0.5 && r % 2 != 0 {
        r - 1
    } else {
        r
    }
}

/// torchvision's CenterCrop box, with its zero padding when the image is smaller.
pub fn center_crop_box(g: Geometry, size: usize) -> CropBox {
    let (h, w, s) = (g.h as i64, g.w as i64, size as i64);
    let (pad_top, pad_left) = (if s > h { (s - h) / 2 } else { 0 }, if s > w { (s - w) / 2 } else { 0 });
    let (ph, pw) = (if s > h { h + (s - h) / 2 + (s - h + 1) / 2 } else { h }, if s > w { w + (s - w) / 2 + (s - w + 1) / 2 } else { w });
    CropBox { top: round_half(ph - s) - pad_top, left: round_half(pw - s) - pad_left, h: size, w: size }
}

/// torchvision's RandomResizedCrop.get_params: ten tries at a box of random area fraction
/// (`scale`) and aspect ratio (`ratio`, drawn log-uniformly), else the central crop.
pub fn random_resized_crop_box<R: Rng>(g: Geometry, scale: [f64; 2], ratio: [f64; 2], rng: &mut R) -> CropBox {
    let (height, width) = (g.h as i64, g.w as i64);
    let area = (height * width) as f64;
    let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, lr0, lr1).exp();
        let w = py_round((target * aspect).sqrt());
        let h = py_round((target / aspect).sqrt());
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.gen_range(0..=height - h);
            let left = rng.gen_range(0..=width - w);
            return CropBox { top, left, h: h as usize, w: w as usize };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio[0] {
        (width, py_round(width as f64 / ratio[0]))
    } else if in_ratio > ratio[1] {
        (py_round(height as f64 * ratio[1]), height)
    } else {
        (width, height)
    };
    CropBox { top: (height - h) / 2, left: (width - w) / 2, h: h as usize, w: w as usize }
}

fn uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        rng.gen_range(lo..hi)
    } else {
        lo
    }
}

/// The pixels of `b` (zeros where it leaves the image).
pub fn crop<'a>(s: &Sample, b: CropBox) -> Sample<'a> {
    let g = s.geometry;
    let c = g.c;
    let mut out = vec![0u8; b.h * b.w * c];
    // Columns of the box inside the image.
    let x0 = b.left.clamp(0, g.w as i64);
    let x1 = (b.left + b.w as i64).clamp(0, g.w as i64);
    if x1 > x0 {
        let (n, dst_x) = ((x1 - x0) as usize * c, (x0 - b.left) as usize * c);
        for y in 0..b.h {
            let sy = b.top + y as i64;
            if sy < 0 || sy >= g.h as i64 {
                continue;
            }
            let src = (sy as usize * g.w + x0 as usize) * c;
            out[y * b.w * c + dst_x..][..n].copy_from_slice(&s.pixels[src..src + n]);
        }
    }
    Sample { pixels: Cow::Owned(out), geometry: Geometry { c, h: b.h, w: b.w } }
}

/// Pillow's `resize((w, h), BILINEAR)`.
pub fn resize<'a>(s: &Sample, h: usize, w: usize) -> Result<Sample<'a>> {
    resize_with(s, h, w, fr::FilterType::Bilinear)
}

/// As [`resize`] with another filter (CatmullRom: PIL's bicubic, a = -0.5).
pub fn resize_with<'a>(s: &Sample, h: usize, w: usize, filter: fr::FilterType) -> Result<Sample<'a>> {
    let g = s.geometry;
    if (g.h, g.w) == (h, w) {
        return Ok(Sample { pixels: Cow::Owned(s.pixels.to_vec()), geometry: g });
    }
    let pt = match g.c {
        1 => fr::PixelType::U8,
        3 => fr::PixelType::U8x3,
        c => return Err(anyhow!("cannot resize images of {c} channels")),
    };
    let src = fr::images::ImageRef::new(g.w as u32, g.h as u32, &s.pixels, pt).map_err(|e| anyhow!("resize: {e:?}"))?;
    let mut dst = fr::images::Image::new(w as u32, h as u32, pt);
    let opts = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(filter));
    RESIZER.with(|r| r.borrow_mut().resize(&src, &mut dst, &opts)).map_err(|e| anyhow!("resize: {e:?}"))?;
    Ok(Sample { pixels: Cow::Owned(dst.into_vec()), geometry: Geometry { c: g.c, h, w } })
}

thread_local! {
    // Its buffers are reused from image to image.
    static RESIZER: std::cell::RefCell<fr::Resizer> = std::cell::RefCell::new(fr::Resizer::new());
}

/// torchvision's Resize(size) with an int: the shorter side becomes `size`, the longer
/// int(size * long / short).
pub fn resize_shorter<'a>(s: &Sample, size: usize) -> Result<Sample<'a>> {
    resize_shorter_with(s, size, fr::FilterType::Bilinear)
}

fn resize_shorter_with<'a>(s: &Sample, size: usize, filter: fr::FilterType) -> Result<Sample<'a>> {
    let g = s.geometry;
    let (short, long) = (g.h.min(g.w), g.h.max(g.w));
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    let (h, w) = if g.w <= g.h { (new_long, size) } else { (size, new_long) };
    resize_with(s, h, w, filter)
}

/// RandomResizedCrop: a random box resized to `size` x `size`.
pub fn random_resized_crop<'a, R: Rng>(s: &Sample, size: usize, scale: [f64; 2], ratio: [f64; 2], rng: &mut R) -> Result<Sample<'a>> {
    let b = random_resized_crop_box(s.geometry, scale, ratio, rng);
    resize(&crop(s, b), size, size)
}

/// The three enhancements of ColorJitter (hue is not among the benchmarks' settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Enhance {
    Brightness(f64),
    Contrast(f64),
    Saturation(f64),
}

/// ColorJitter's draw: the factors uniform in [max(0, 1 - v), 1 + v], applied in random order.
pub fn draw_jitter<R: Rng>(strength: [f64; 3], rng: &mut R) -> Vec<Enhance> {
    let mut order = [0usize, 1, 2];
    rand::seq::SliceRandom::shuffle(&mut order[..], rng);
    order
        .iter()
        .filter(|&&k| strength[k] > 0.0)
        .map(|&k| {
            let f = uniform(rng, (1.0 - strength[k]).max(0.0), 1.0 + strength[k]);
            [Enhance::Brightness(f), Enhance::Contrast(f), Enhance::Saturation(f)][k]
        })
        .collect()
}

/// PIL's ImageEnhance: Image.blend(degenerate, image, factor), in f32 and truncated to u8.
pub fn enhance(px: &mut [u8], c: usize, e: Enhance) {
    let blend = |deg: f32, v: u8, a: f32| -> u8 {
        let t = deg + a * (v as f32 - deg);
        if (0.0..=1.0).contains(&a) {
            t as u8
        } else if t <= 0.0 {
            0
        } else if t >= 255.0 {
            255
        } else {
            t as u8
        }
    };
    match e {
        Enhance::Brightness(f) => px.iter_mut().for_each(|v| *v = blend(0.0, *v, f as f32)),
        Enhance::Contrast(f) => {
            // The degenerate image is the mean grey level, int(mean + 0.5), of the L image.
            let (sum, n) = if c == 3 {
                (px.chunks_exact(3).map(|p| super::image::luma(p) as u64).sum::<u64>(), px.len() / 3)
            } else {
                (px.iter().map(|&v| v as u64).sum::<u64>(), px.len())
            };
            let mean = (sum as f64 / n.max(1) as f64 + 0.5) as u8 as f32;
            px.iter_mut().for_each(|v| *v = blend(mean, *v, f as f32));
        }
        Enhance::Saturation(f) => {
            if c == 3 {
                for p in px.chunks_exact_mut(3) {
                    let l = super::image::luma(p) as f32;
                    for v in p.iter_mut() {
                        *v = blend(l, *v, f as f32);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_crop_takes_the_centre_and_the_corners_and_ten_crop_their_mirrors() {
        // A 10 x 14 grey image whose pixel is its column: each crop's first pixel tells where
        // it starts (expand 0 keeps the size, so nothing is resampled).
        let pixels: Vec<u8> = (0..10).flat_map(|_| 0..14u8).collect();
        let s = Sample { pixels: Cow::Owned(pixels), geometry: Geometry { c: 1, h: 10, w: 14 } };
        let copy = |s: &Sample| Sample { pixels: Cow::Owned(s.pixels.to_vec()), geometry: s.geometry };
        let views = Tte::FiveCrop { expand: 0 }.apply(&TestTransform::None, copy(&s)).unwrap();
        let firsts: Vec<u8> = views.iter().map(|(v, _)| v.pixels[0]).collect();
        assert_eq!(firsts, [2, 0, 4, 0, 4]);
        assert!(views.iter().all(|(v, p)| (v.geometry.h, v.geometry.w) == (10, 10) && !p.flip));
        let ten = Tte::TenCrop { expand: 0 }.apply(&TestTransform::None, copy(&s)).unwrap();
        assert_eq!(ten.iter().filter(|(_, p)| p.flip).count(), 5);
        // Expanded: the shorter side becomes size + expand before cropping.
        let views = Tte::FiveCrop { expand: 4 }.apply(&TestTransform::ResizeCrop { resize: 12, size: 8 }, s).unwrap();
        assert!(views.iter().all(|(v, _)| (v.geometry.h, v.geometry.w) == (8, 8)));
    }
}
