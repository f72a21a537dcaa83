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
    /// Each image drawn with probability proportional to 1 / n_class, as many draws as
    /// images, with replacement: every class equally likely.
    ClassBalanced,
}

/// Per-class sampling weight of each image under class-balanced re-sampling.
pub fn balanced_weights(counts: &[usize]) -> Vec<f64> {
    counts.iter().map(|&n| if n == 0 { 0.0 } else { 1.0 / n as f64 }).collect()
}

impl Sampler {
    /// Positions into the training set (0..labels.len()) for one epoch.
    pub fn epoch_order<R: Rng>(self, labels: &[i64], counts: &[usize], rng: &mut R) -> Vec<usize> {
        let n = labels.len();
        match self {
            Sampler::Instance => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(rng);
                order
            }
            Sampler::ClassBalanced => {
                let w = balanced_weights(counts);
                let dist = WeightedIndex::new(labels.iter().map(|&l| w[l as usize])).expect("non-empty training set");
                (0..n).map(|_| dist.sample(rng)).collect()
            }
        }
    }
}
