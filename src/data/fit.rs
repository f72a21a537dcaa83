//! Settings that fit a user's own images: what a sample of the training images looks like
//! (sizes, colour), and the image recipe that suits it.
//!
//! Small images (a median shorter side up to [`SMALL_SIDE`] px: digits, icons, CIFAR-like
//! crops) train at about their own size `S`: Resize(S) + CenterCrop(S), then the CIFAR
//! recipe's random crop of the zero-padded image and flip; tested at Resize(S) +
//! CenterCrop(S). Larger images get the ImageNet recipe: RandomResizedCrop(S) + flip, tested
//! at Resize(S * 8 / 7) + CenterCrop(S), S the median shorter side capped at 224. Images
//! whose pixels are grey (R = G = B, within JPEG's rounding) are read as one channel.
use super::image::Color;
use super::transform::{TestTransform, TrainTransform};
use super::{Sample, Source};
use anyhow::{bail, Result};

/// Up to this median shorter side (px) images count as small.
pub const SMALL_SIDE: usize = 64;
/// Training images decoded to look at the data (evenly spread over the set).
pub const SAMPLE: usize = 100;
/// A pixel whose channels differ by at most this much is grey (JPEG's chroma rounding).
const GREY_TOLERANCE: u8 = 6;

/// Whether every pixel of `s` is grey (its channels equal within JPEG's rounding).
pub fn is_grey(s: &Sample) -> bool {
    s.geometry.c == 1 || s.pixels.chunks_exact(3).all(|p| p[0].abs_diff(p[1]) <= GREY_TOLERANCE && p[1].abs_diff(p[2]) <= GREY_TOLERANCE)
}

/// What a sample of a set's images looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageStats {
    /// Images looked at.
    pub sampled: usize,
    /// Shorter sides: smallest, median, largest (px).
    pub short: [usize; 3],
    /// Median width and height (px).
    pub median_wh: (usize, usize),
    /// Whether every sampled image has the same width and height.
    pub one_size: bool,
    /// Sampled images whose pixels are all grey.
    pub grey: usize,
}

impl ImageStats {
    /// Decodes up to [`SAMPLE`] images of `source` (RGB), evenly spread; unreadable ones are
    /// passed over (the run names them when it reads them).
    pub fn sample(source: &dyn Source) -> Result<Self> {
        let n = source.len();
        let take = n.min(SAMPLE);
        let (mut sizes, mut grey, mut first_err) = (Vec::with_capacity(take), 0, None);
        for k in 0..take {
            let i = k * n / take.max(1);
            match source.sample(i) {
                Ok(s) => {
                    let g = s.geometry;
                    sizes.push((g.w, g.h));
                    if is_grey(&s) {
                        grey += 1;
                    }
                }
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if sizes.is_empty() {
            match first_err {
                Some(e) => return Err(e.context("none of the sampled training images could be read")),
                None => bail!("the training set holds no images"),
            }
        }
        Ok(Self::of(&sizes, grey))
    }

    /// From (width, height) pairs and how many of the images are grey.
    pub fn of(sizes: &[(usize, usize)], grey: usize) -> Self {
        let median = |mut v: Vec<usize>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let mut short: Vec<usize> = sizes.iter().map(|&(w, h)| w.min(h)).collect();
        short.sort_unstable();
        ImageStats {
            sampled: sizes.len(),
            short: [short[0], short[short.len() / 2], short[short.len() - 1]],
            median_wh: (median(sizes.iter().map(|s| s.0).collect()), median(sizes.iter().map(|s| s.1).collect())),
            one_size: sizes.iter().all(|&s| s == sizes[0]),
            grey,
        }
    }

    pub fn small(&self) -> bool {
        self.short[1] <= SMALL_SIDE
    }

    /// Grey content: every sampled image grey.
    pub fn color(&self) -> Color {
        if self.grey == self.sampled {
            Color::Grey
        } else {
            Color::Rgb
        }
    }

    /// The side images are trained at: small ones at their median shorter side (a multiple
    /// of 4, 16 to 64), larger ones at it too as a multiple of 16, at most ImageNet's 224.
    pub fn side(&self) -> usize {
        let m = self.short[1];
        if self.small() {
            ((m + 2) / 4 * 4).clamp(16, SMALL_SIDE)
        } else {
            (m / 16 * 16).clamp(SMALL_SIDE, 224)
        }
    }

    /// The transforms that suit the images.
    pub fn transforms(&self) -> (TrainTransform, TestTransform) {
        let s = self.side();
        if self.small() {
            (TrainTransform::ResizePadCrop { size: s }, TestTransform::ResizeCrop { resize: s, size: s })
        } else {
            (TrainTransform::imagenet(s), TestTransform::ResizeCrop { resize: (s * 8 + 3) / 7, size: s })
        }
    }

    /// One line: how many images were looked at and what they are.
    pub fn describe(&self) -> String {
        let [lo, med, hi] = self.short;
        let colour = match (self.grey, self.sampled) {
            (g, n) if g == n => "all grey".to_string(),
            (0, _) => "colour".to_string(),
            (g, n) => format!("{g} of {n} grey"),
        };
        let sizes = if self.one_size { format!("all {}x{}", self.median_wh.0, self.median_wh.1) } else { format!("shorter side {lo}-{hi} px, median {med}") };
        format!("{} training images sampled: {sizes}, {colour}", self.sampled)
    }
}
