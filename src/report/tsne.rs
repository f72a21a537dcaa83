//! t-SNE of feature vectors (Barnes-Hut, the `bhtsne` crate), on at most a given number of
//! points sampled evenly per class.
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand::rngs::StdRng;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct TsneSettings {
    pub perplexity: f64,
    pub seed: u64,
    /// At most this many points (sampled evenly per class).
    pub max_points: usize,
    pub epochs: usize,
    /// Barnes-Hut's accuracy trade-off (0: exact).
    pub theta: f64,
}

impl Default for TsneSettings {
    fn default() -> Self {
        Self { perplexity: 30.0, seed: 0, max_points: 3000, epochs: 1000, theta: 0.5 }
    }
}

/// At most `max` indices of `labels`, as evenly per class as the classes allow (a class
/// with fewer images than its share gives all it has; the rest goes to the others), drawn
/// with `seed`; in ascending order.
pub fn sample_per_class(labels: &[i64], classes: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    by_class.iter_mut().for_each(|v| v.shuffle(&mut rng));
    // Water-filling: raise a common per-class quota until `max` is reached.
    let mut take = vec![0usize; classes];
    let mut left = max.min(labels.len());
    loop {
        let open: Vec<usize> = (0..classes).filter(|&c| take[c] < by_class[c].len()).collect();
        if left == 0 || open.is_empty() {
            break;
        }
        let share = (left / open.len()).max(1);
        for &c in &open {
            let add = share.min(by_class[c].len() - take[c]).min(left);
            take[c] += add;
            left -= add;
        }
    }
    let mut out: Vec<usize> = by_class.iter().zip(&take).flat_map(|(v, &n)| v[..n].iter().copied()).collect();
    out.sort_unstable();
    out
}

/// The 2-d t-SNE embedding of the rows of `x` (n x `dim`); (embedding, seconds).
pub fn embed(x: &[f32], dim: usize, s: &TsneSettings) -> Result<(Vec<[f32; 2]>, f64)> {
    let n = x.len() / dim.max(1);
    // Perplexity must leave each point 3 x perplexity neighbours.
    if n < 4 || (n as f64) <= 3.0 * s.perplexity {
        bail!("t-SNE: {n} points are too few for perplexity {} (it needs more than 3 x perplexity)", s.perplexity);
    }
    let t = Instant::now();
    let rows: Vec<&[f32]> = x.chunks(dim).collect();
    // The initial embedding from the seed (N(0, 1e-4), as van der Maaten's code), so that a
    // seed gives one picture.
    let mut rng = StdRng::seed_from_u64(s.seed);
    let init: Vec<f32> = (0..n * 2).map(|_| (rng.gen::<f32>() - 0.5) * 1e-2).collect();
    let mut tsne: bhtsne::tSNE<f32, &[f32]> = bhtsne::tSNE::new(&rows);
    tsne.perplexity(s.perplexity as f32).epochs(s.epochs).initial_embedding(init).barnes_hut(s.theta as f32, |a, b| {
        a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
    });
    let y = tsne.embedding();
    Ok((y.chunks(2).map(|p| [p[0], p[1]]).collect(), t.elapsed().as_secs_f64()))
}

/// Accuracy of k-nearest-neighbour classification in the embedding, each point by the
/// others (leave-one-out): how well the picture keeps classes apart.
pub fn knn_accuracy(points: &[[f32; 2]], labels: &[i64], k: usize) -> f64 {
    let mut right = 0;
    for (i, p) in points.iter().enumerate() {
        let mut d: Vec<(f32, i64)> = points.iter().enumerate().filter(|&(j, _)| j != i).map(|(j, q)| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2), labels[j])).collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut votes = std::collections::HashMap::new();
        for &(_, l) in d.iter().take(k) {
            *votes.entry(l).or_insert(0) += 1;
        }
        let best = votes.into_iter().max_by_key(|&(l, v)| (v, -l)).map(|(l, _)| l);
        right += usize::from(best == Some(labels[i]));
    }
    right as f64 / points.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_even_per_class_and_gives_small_classes_all_they_have() {
        let labels: Vec<i64> = (0..1000).map(|i| if i < 900 { 0 } else if i < 990 { 1 } else { 2 }).collect();
        let s = sample_per_class(&labels, 3, 100, 7);
        let count = |c| s.iter().filter(|&&i| labels[i] == c).count();
        assert_eq!(s.len(), 100);
        assert_eq!(count(2), 10);
        assert_eq!((count(0), count(1)), (45, 45));
        assert_eq!(sample_per_class(&labels, 3, 5000, 7).len(), 1000);
        assert_eq!(s, sample_per_class(&labels, 3, 100, 7), "one seed, one sample");
    }

    #[test]
    fn tsne_keeps_well_separated_gaussian_clusters_apart() {
        // Five clusters in 64 dimensions, centres 10 apart, unit spread: k-NN accuracy in
        // the 2-d picture must stay at least 0.9.
        let (k, per, dim) = (5usize, 60usize, 64usize);
        let mut rng = StdRng::seed_from_u64(1);
        let mut gauss = || {
            let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        };
        let centres: Vec<Vec<f32>> = (0..k).map(|_| (0..dim).map(|_| 10.0 * gauss() / (dim as f32).sqrt() * 3.0).collect()).collect();
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for (c, centre) in centres.iter().enumerate() {
            for _ in 0..per {
                x.extend(centre.iter().map(|m| m + gauss() / (dim as f32).sqrt()));
                labels.push(c as i64);
            }
        }
        let (y, _) = embed(&x, dim, &TsneSettings { perplexity: 20.0, epochs: 500, ..Default::default() }).unwrap();
        let acc = knn_accuracy(&y, &labels, 5);
        assert!(acc >= 0.9, "k-NN accuracy in the t-SNE picture {acc}");
        assert!(embed(&x[..10 * dim], dim, &TsneSettings::default()).is_err(), "10 points cannot have perplexity 30");
    }
}
