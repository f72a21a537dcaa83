//! Per-class geometry of the embedding, as the cosine classifier sees it (every feature
//! L2-normalised), globally centred: with ReLU features every class mean shares one large
//! direction, which would make every angle between classes small. So g = the mean of all
//! normalised features is taken off each of them first (as neural collapse is measured,
//! `collapse.rs`).
//!
//! For class c with centred features f_i: the mean direction mu_c = normalise(sum_i f_i);
//! its **spread** is the mean angle between f_i and mu_c (how much room the class takes: the
//! number behind "tail classes are compressed under cross-entropy and expanded by GCL's
//! clouds"); its **margin** is the angle from mu_c to the nearest other class's mean
//! direction. Of the classifier's weight w_c: its norm, and its angle to mu_c. Angles in
//! degrees.
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassGeometry {
    pub class: usize,
    pub samples: usize,
    pub spread_deg: f64,
    pub nearest_mean_deg: f64,
    pub weight_norm: Option<f64>,
    pub weight_angle_deg: Option<f64>,
}

fn normalise(v: &mut [f64]) {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// The angle between two unit vectors.
fn angle(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot.clamp(-1.0, 1.0).acos().to_degrees()
}

/// The geometry of each class among `classes`: `features` row-major N x `dim` (normalised
/// and centred here), `labels` N; `weights` the classifier's C x `dim` rows when it has them.
pub fn class_geometry(features: &[f32], dim: usize, labels: &[i64], classes: usize, weights: Option<&[f32]>) -> Vec<ClassGeometry> {
    let mut rows: Vec<Vec<f64>> = features
        .chunks(dim)
        .map(|r| {
            let mut v: Vec<f64> = r.iter().map(|&x| x as f64).collect();
            normalise(&mut v);
            v
        })
        .collect();
    let centre: Vec<f64> = (0..dim).map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / rows.len().max(1) as f64).collect();
    for r in &mut rows {
        r.iter_mut().zip(&centre).for_each(|(x, g)| *x -= g);
    }
    let mut means = vec![vec![0f64; dim]; classes];
    let mut counts = vec![0usize; classes];
    for (r, &l) in rows.iter().zip(labels) {
        let l = l as usize;
        counts[l] += 1;
        means[l].iter_mut().zip(r).for_each(|(m, x)| *m += x);
    }
    means.iter_mut().for_each(|m| normalise(m));
    let mut spread = vec![0f64; classes];
    for (r, &l) in rows.iter().zip(labels) {
        spread[l as usize] += angle(r, &means[l as usize]);
    }
    (0..classes)
        .map(|c| {
            let nearest = (0..classes).filter(|&o| o != c && counts[o] > 0).map(|o| angle(&means[c], &means[o])).fold(f64::NAN, f64::min);
            let w: Option<Vec<f64>> = weights.map(|w| w[c * dim..(c + 1) * dim].iter().map(|&x| x as f64).collect());
            ClassGeometry {
                class: c,
                samples: counts[c],
                spread_deg: if counts[c] > 0 { spread[c] / counts[c] as f64 } else { f64::NAN },
                nearest_mean_deg: nearest,
                weight_norm: w.as_ref().map(|w| w.iter().map(|x| x * x).sum::<f64>().sqrt()),
                weight_angle_deg: w.map(|mut w| {
                    normalise(&mut w);
                    angle(&w, &means[c])
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_a_known_point_set() {
        // Class 0: directions at +-30 degrees around +x (spread 30); class 1 the same around
        // -x; class 2 exactly +y (spread 0), class 3 exactly -y. Lengths do not matter
        // (normalised); the set is symmetric, so centring moves nothing.
        let (a, b) = (30f64.to_radians().cos() as f32, 30f64.to_radians().sin() as f32);
        let f = [2.0 * a, 2.0 * b, a, -b, -a, b, -a, -b, 0.0, 5.0, 0.0, 1.0, 0.0, -1.0, 0.0, -2.0];
        let w = [3.0, 0.0, -1.0, 0.0, 1.0, 1.0, 0.0, -1.0];
        let g = class_geometry(&f, 2, &[0, 0, 1, 1, 2, 2, 3, 3], 4, Some(&w));
        assert!((g[0].spread_deg - 30.0).abs() < 1e-4 && (g[1].spread_deg - 30.0).abs() < 1e-4, "{:?}", &g[..2]);
        assert!(g[2].spread_deg.abs() < 1e-4, "{:?}", g[2]);
        assert!((g[0].nearest_mean_deg - 90.0).abs() < 1e-4, "{:?}", g[0]);
        assert!((g[0].weight_norm.unwrap() - 3.0).abs() < 1e-9 && g[0].weight_angle_deg.unwrap().abs() < 1e-4);
        assert!((g[2].weight_angle_deg.unwrap() - 45.0).abs() < 1e-4, "{:?}", g[2]);
    }

    #[test]
    fn a_shared_direction_is_centred_away() {
        // Two classes at +-10 degrees around a common direction: 20 degrees apart on the
        // sphere, opposite (180) once the shared direction is taken off.
        let at = |deg: f64| [deg.to_radians().cos() as f32, deg.to_radians().sin() as f32];
        let f: Vec<f32> = [10.0, 10.0, -10.0, -10.0].iter().flat_map(|&d| at(d)).collect();
        let g = class_geometry(&f, 2, &[0, 0, 1, 1], 2, None);
        assert!((g[0].nearest_mean_deg - 180.0).abs() < 1e-3, "{:?}", g[0]);
    }
}
