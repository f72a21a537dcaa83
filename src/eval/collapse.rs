//! Neural collapse (Papyan, Han, Donoho, PNAS 2020) and minority collapse (Fang et al., PNAS
//! 2021), measured on features h_i with labels y_i, globally centred: g = mean_i h_i,
//! mu_c = mean of class c's h_i, M the C x d matrix of centred means mu_c - g.
//!
//! - **NC1**, within-class variability against between-class: (1/C) tr(S_W S_B^+), with
//!   S_W = mean_i (h_i - mu_y)(h_i - mu_y)^T, S_B = (1/C) sum_c (mu_c - g)(mu_c - g)^T; per
//!   shot group, (1/C) mean over the group's classes c of tr(S_W^c S_B^+) (S_W^c: class c's
//!   own covariance), so that on a balanced set the overall value is the groups' weighted mean.
//! - **NC2**, the centred means towards a simplex ETF: equal norms (std / mean of |mu_c - g|),
//!   equal angles (std over pairs c != c' of their cosine), maximal angles (mean over pairs of
//!   |cos + 1/(C-1)|). All three are 0 for a simplex.
//! - **NC3**, the classifier against the means: | W / |W|_F - M / |M|_F |_F with W the rows
//!   the classifier applies (a cosine classifier's normalised rows).
//! - **NC4**, the fraction of samples where the model's prediction is the nearest class mean.
//! - **Minority collapse**: the mean pairwise angle of the tail classes' centred means against
//!   that of the other classes (the tail's shrinks when minority classes collapse together).
use super::metrics::ShotGroup;
use serde::Serialize;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeuralCollapse {
    pub nc1: f64,
    /// NC1 of each shot group's classes (many, medium, few; groups without classes left out).
    pub nc1_by_group: BTreeMap<String, f64>,
    pub nc2_equinorm: f64,
    pub nc2_equiangular: f64,
    pub nc2_max_angle: f64,
    pub nc3: Option<f64>,
    pub nc4: f64,
    /// Mean pairwise angle (degrees) of the centred means of the tail classes, and of the
    /// other classes (None with fewer than two of them).
    pub tail_angle_deg: Option<f64>,
    pub head_angle_deg: Option<f64>,
}

/// The measures of `features` (N x `dim`, row-major) with `labels` among `classes`;
/// `weights` the classifier's C x `dim` rows as it applies them; `predictions` the model's;
/// `group` each class's shot group; `tail` the tail classes. Classes without samples are left
/// out.
pub fn neural_collapse(features: &[f32], dim: usize, labels: &[i64], classes: usize, weights: Option<&[f32]>, predictions: &[i64], group: &[ShotGroup], tail: &[usize]) -> NeuralCollapse {
    let n = labels.len() as i64;
    let h = Tensor::from_slice(features).view([n, dim as i64]).to_kind(Kind::Double);
    let y = Tensor::from_slice(labels);
    let counts: Vec<usize> = (0..classes).map(|c| labels.iter().filter(|&&l| l as usize == c).count()).collect();
    let present: Vec<usize> = (0..classes).filter(|&c| counts[c] > 0).collect();
    let k = present.len() as f64;
    let sums = Tensor::zeros([classes as i64, dim as i64], (Kind::Double, Device::Cpu)).index_add(0, &y, &h);
    let cnt = Tensor::from_slice(&counts.iter().map(|&c| c.max(1) as f64).collect::<Vec<_>>()).unsqueeze(1);
    let means = sums / cnt;
    let g = h.mean_dim(0, true, Kind::Double);
    let idx = Tensor::from_slice(&present.iter().map(|&c| c as i64).collect::<Vec<_>>());
    let m = means.index_select(0, &idx) - &g;
    // NC1: per sample (h - mu_y)^T S_B^+ (h - mu_y), averaged per class.
    let sb = m.transpose(0, 1).matmul(&m) / k;
    let sb_pinv = sb.linalg_pinv(1e-9, true);
    let d = &h - means.index_select(0, &y);
    let q = (d.matmul(&sb_pinv) * &d).sum_dim_intlist(1, false, Kind::Double);
    let per_sample = Vec::<f64>::try_from(q).unwrap_or_default();
    let mut per_class = vec![0f64; classes];
    for (v, &l) in per_sample.iter().zip(labels) {
        per_class[l as usize] += v / counts[l as usize] as f64;
    }
    let nc1 = per_sample.iter().sum::<f64>() / n as f64 / k;
    let mut nc1_by_group = BTreeMap::new();
    for gr in [ShotGroup::Many, ShotGroup::Medium, ShotGroup::Few] {
        let of: Vec<f64> = present.iter().filter(|&&c| group[c] == gr).map(|&c| per_class[c]).collect();
        if !of.is_empty() {
            nc1_by_group.insert(gr.name().to_string(), of.iter().sum::<f64>() / of.len() as f64 / k);
        }
    }
    // NC2 on the centred means.
    let norms = Vec::<f64>::try_from(m.norm_scalaropt_dim(2.0, [1], false)).unwrap_or_default();
    let unit = &m / m.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-300);
    let cos = Vec::<Vec<f64>>::try_from(unit.matmul(&unit.transpose(0, 1))).unwrap_or_default();
    let pairs: Vec<f64> = (0..present.len()).flat_map(|a| (0..present.len()).filter(move |&b| b != a).map(move |b| (a, b))).map(|(a, b)| cos[a][b]).collect();
    let (mean_norm, std_norm) = mean_std(&norms);
    let nc2_max_angle = pairs.iter().map(|c| (c + 1.0 / (k - 1.0)).abs()).sum::<f64>() / pairs.len().max(1) as f64;
    // NC3 with the classifier's rows of the present classes.
    let nc3 = weights.map(|w| {
        let w = Tensor::from_slice(w).view([classes as i64, dim as i64]).to_kind(Kind::Double).index_select(0, &idx);
        let a = &w / w.norm().clamp_min(1e-300);
        let b = &m / m.norm().clamp_min(1e-300);
        (a - b).norm().double_value(&[])
    });
    // NC4: the nearest class mean against the prediction.
    let dist = h.unsqueeze(1) - means.index_select(0, &idx).unsqueeze(0);
    let nearest = Vec::<i64>::try_from(dist.square().sum_dim_intlist(2, false, Kind::Double).argmin(1, false)).unwrap_or_default();
    let agree = nearest.iter().zip(predictions).filter(|(&a, &p)| present[a as usize] as i64 == p).count();
    // Minority collapse: mean pairwise angle within the tail and within the rest.
    let angle_within = |keep: &dyn Fn(usize) -> bool| {
        let pos: Vec<usize> = (0..present.len()).filter(|&i| keep(present[i])).collect();
        let a: Vec<f64> = pos.iter().flat_map(|&i| pos.iter().filter(move |&&j| j > i).map(move |&j| (i, j))).map(|(i, j)| cos[i][j].clamp(-1.0, 1.0).acos().to_degrees()).collect();
        (!a.is_empty()).then(|| a.iter().sum::<f64>() / a.len() as f64)
    };
    NeuralCollapse {
        nc1,
        nc1_by_group,
        nc2_equinorm: std_norm / mean_norm.max(1e-300),
        nc2_equiangular: mean_std(&pairs).1,
        nc2_max_angle,
        nc3,
        nc4: agree as f64 / n.max(1) as f64,
        tail_angle_deg: angle_within(&|c| tail.contains(&c)),
        head_angle_deg: angle_within(&|c| !tail.contains(&c)),
    }
}

/// Rows of `dim` values as a classifier applies them: L2-normalised for a cosine classifier,
/// as they are for a linear one.
pub fn as_applied(rows: &[f32], dim: usize, cosine: bool) -> Vec<f32> {
    if !cosine {
        return rows.to_vec();
    }
    rows.chunks(dim)
        .flat_map(|row| {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter().map(move |x| x / n)
        })
        .collect()
}

/// The tail classes by their training counts: the few-shot ones, or where there are none,
/// the medium and few ones; and that rule in words.
pub fn tail_classes(counts: &[usize], many_above: usize, few_below: usize) -> (Vec<usize>, String) {
    let group = |k: usize| ShotGroup::of(counts[k], many_above, few_below);
    let few: Vec<usize> = (0..counts.len()).filter(|&k| group(k) == ShotGroup::Few).collect();
    if !few.is_empty() {
        return (few, format!("few-shot classes (< {few_below} training images)"));
    }
    ((0..counts.len()).filter(|&k| group(k) != ShotGroup::Many).collect(), format!("no class is few-shot, so the medium and few ones (<= {many_above} training images)"))
}

/// Mean and population standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    const MANY: ShotGroup = ShotGroup::Many;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn a_collapsed_simplex_measures_zero_on_every_count() {
        // Three classes at 120 degrees on a circle around (5, 5) (the offset is the shared
        // direction that centring removes), every sample on its class mean.
        let at = |deg: f64| [5.0 + deg.to_radians().cos() as f32, 5.0 + deg.to_radians().sin() as f32];
        let f: Vec<f32> = [90.0, 90.0, 210.0, 210.0, 330.0, 330.0].iter().flat_map(|&d| at(d)).collect();
        let labels = [0, 0, 1, 1, 2, 2];
        let w: Vec<f32> = [90.0f64, 210.0, 330.0].iter().flat_map(|d| [3.0 * d.to_radians().cos() as f32, 3.0 * d.to_radians().sin() as f32]).collect();
        let nc = neural_collapse(&f, 2, &labels, 3, Some(&w), &labels, &[MANY, MANY, ShotGroup::Few], &[2]);
        assert!(nc.nc1.abs() < 1e-9 && nc.nc2_equinorm.abs() < 1e-6 && nc.nc2_equiangular.abs() < 1e-6 && nc.nc2_max_angle.abs() < 1e-6, "{nc:?}");
        assert!(nc.nc3.unwrap().abs() < 1e-6 && nc.nc4 == 1.0, "{nc:?}");
        assert!((nc.head_angle_deg.unwrap() - 120.0).abs() < 1e-4 && nc.tail_angle_deg.is_none(), "{nc:?}");
    }

    #[test]
    fn known_variability_norms_classifier_and_agreement() {
        // Two classes in one dimension: means +-1, samples +-0.5 around them: S_W = 0.25,
        // S_B = 1, NC1 = (1/2) 0.25. A classifier (1, 1) is as far from the means' (1, -1)
        // as can be: NC3 = sqrt 2. One prediction off the nearest mean: NC4 = 3/4.
        let f = [1.5f32, 0.5, -0.5, -1.5];
        let labels = [0i64, 0, 1, 1];
        let nc = neural_collapse(&f, 1, &labels, 2, Some(&[1.0, 1.0]), &[0, 1, 1, 1], &[MANY, ShotGroup::Medium], &[1]);
        assert!(close(nc.nc1, 0.125) && close(nc.nc1_by_group["many"], 0.125) && close(nc.nc1_by_group["medium"], 0.125), "{nc:?}");
        assert!(close(nc.nc3.unwrap(), 2f64.sqrt()) && nc.nc4 == 0.75, "{nc:?}");
        assert!(nc.nc2_equinorm.abs() < 1e-9 && nc.nc2_max_angle.abs() < 1e-9, "{nc:?}");
        // Unequal spreads: class 1's samples 1.0 from its mean instead: its NC1 is 4 times class 0's.
        let f = [1.5f32, 0.5, 0.0, -2.0];
        let nc = neural_collapse(&f, 1, &labels, 2, None, &labels, &[MANY, ShotGroup::Medium], &[1]);
        assert!(close(nc.nc1_by_group["medium"] / nc.nc1_by_group["many"], 4.0), "{nc:?}");
        // Means at 2 and 1 units from the centre in a plane, 90 degrees apart ... and a third
        // class making it a triangle: the norms' std / mean and the cosines are those of the points.
        let f = [2.0f32, 0.0, 0.0, 1.0, -1.0, -1.0];
        let nc = neural_collapse(&f, 2, &[0, 1, 2], 3, None, &[0, 1, 2], &[MANY; 3], &[2]);
        let g = [1.0 / 3.0, 0.0];
        let c: Vec<[f64; 2]> = [[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]].iter().map(|p| [p[0] - g[0], p[1] - g[1]]).collect();
        let norms: Vec<f64> = c.iter().map(|p| (p[0] * p[0] + p[1] * p[1]).sqrt()).collect();
        let (m, s) = mean_std(&norms);
        assert!(close(nc.nc2_equinorm, s / m), "{} vs {}", nc.nc2_equinorm, s / m);
    }
}
