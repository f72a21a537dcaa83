//! Orders in which an epoch visits the training images.
use rand::distributions::{Distribution, WeightedIndex};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Sampler {
    /// Every image once per epoch, shuffled.
    Instance,
    /// Each image drawn with probability proportional to 1 / n_class (every class equally likely).
    ClassBalanced,
    /// Classes drawn with probability proportional to sqrt(n_class) (Mahajan et al. 2018).
    Sqrt,
    /// The GCL paper's class-based effective-number sampler (stage 2).
    Cben,
}

/// Per-image weight under class-balanced re-sampling: 1 / n_class.
pub fn balanced_weights(counts: &[usize]) -> Vec<f64> {
    counts.iter().map(|&n| if n == 0 { 0.0 } else { 1.0 / n as f64 }).collect()
}

/// Per-image weight under square-root sampling: n_class^(-1/2).
pub fn sqrt_weights(counts: &[usize]) -> Vec<f64> {
    counts.iter().map(|&n| if n == 0 { 0.0 } else { (n as f64).powf(-0.5) }).collect()
}

/// CBEN: beta_j = beta_a + beta_b * d_j with d_j the normalised (log n_max - log n_j) in
/// [0, 1]; per-image weight of class j = (1 - beta_j) / (1 - beta_j^n_j).
pub fn cben_weights(counts: &[usize], beta_a: f64, beta_b: f64) -> Vec<f64> {
    let logs: Vec<f64> = counts.iter().map(|&n| (n as f64).ln()).collect();
    let top = logs.iter().cloned().fold(f64::MIN, f64::max);
    let d: Vec<f64> = logs.iter().map(|l| top - l).collect();
    let (lo, hi) = (d.iter().cloned().fold(f64::MAX, f64::min), d.iter().cloned().fold(f64::MIN, f64::max));
    counts
        .iter()
        .zip(&d)
        .map(|(&n, &dj)| {
            let norm = if hi > lo { (dj - lo) / (hi - lo) } else { 0.0 };
            let beta = beta_a + beta_b * norm;
            (1.0 - beta) / (1.0 - beta.powf(n as f64))
        })
        .collect()
}

impl Sampler {
    /// Per-image weight of each class, or None for plain shuffling.
    pub fn class_weights(self, counts: &[usize]) -> Option<Vec<f64>> {
        match self {
            Sampler::Instance => None,
            Sampler::ClassBalanced => Some(balanced_weights(counts)),
            Sampler::Sqrt => Some(sqrt_weights(counts)),
            Sampler::Cben => Some(cben_weights(counts, 0.9999, 1e-5)),
        }
    }

    /// Positions into the training set (0..labels.len()) for one epoch: a shuffle, or as
    /// many weighted draws with replacement as there are images.
    pub fn epoch_order<R: Rng>(self, labels: &[i64], counts: &[usize], rng: &mut R) -> Vec<usize> {
        let n = labels.len();
        match self.class_weights(counts) {
            None => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(rng);
                order
            }
            Some(w) => {
                let dist = WeightedIndex::new(labels.iter().map(|&l| w[l as usize])).expect("non-empty training set");
                (0..n).map(|_| dist.sample(rng)).collect()
            }
        }
    }
}
