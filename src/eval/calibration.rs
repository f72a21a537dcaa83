//! Calibration: how far a model's confidence is from its accuracy.
//!
//! Expected calibration error (Guo et al., 2017), with B equal-width bins of confidence
//! (the top softmax probability): ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|. The bins
//! themselves are the reliability diagram.
use serde::Serialize;

/// One bin of a reliability diagram: confidences in [lo, hi).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean confidence and accuracy of the bin's samples (0 when empty).
    pub confidence: f64,
    pub accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    pub ece: f64,
    pub samples: usize,
    pub bins: Vec<Bin>,
}

/// The bins used throughout (the common choice since Guo et al.).
pub const BINS: usize = 15;

/// ECE and reliability bins of (confidence, correct) pairs; a confidence of exactly 1 falls
/// in the last bin.
pub fn calibration(samples: &[(f64, bool)], bins: usize) -> Calibration {
    let mut acc = vec![(0usize, 0f64, 0usize); bins];
    for &(c, ok) in samples {
        let b = ((c * bins as f64) as usize).min(bins - 1);
        acc[b].0 += 1;
        acc[b].1 += c;
        acc[b].2 += ok as usize;
    }
    let n = samples.len().max(1) as f64;
    let mut ece = 0.0;
    let bins: Vec<Bin> = acc
        .iter()
        .enumerate()
        .map(|(i, &(count, conf_sum, correct))| {
            let (confidence, accuracy) = if count > 0 { (conf_sum / count as f64, correct as f64 / count as f64) } else { (0.0, 0.0) };
            ece += count as f64 / n * (accuracy - confidence).abs();
            Bin { lo: i as f64 / bins as f64, hi: (i + 1) as f64 / bins as f64, count, confidence, accuracy }
        })
        .collect();
    Calibration { ece, samples: samples.len(), bins }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_of_a_hand_computed_case() {
        // Two bins. [0, 0.5): confidences 0.2 and 0.4, one right: |0.5 - 0.3| = 0.2, weight 2/5.
        // [0.5, 1]: 0.6, 0.9, 1.0, two right: |2/3 - 2.5/3| = 1/6, weight 3/5.
        let c = calibration(&[(0.2, true), (0.4, false), (0.6, true), (0.9, false), (1.0, true)], 2);
        let want = 0.4 * 0.2 + 0.6 * (1.0 / 6.0);
        assert!((c.ece - want).abs() < 1e-12, "{} vs {want}", c.ece);
        assert_eq!(c.bins[1].count, 3);
        assert!((c.bins[0].confidence - 0.3).abs() < 1e-12 && (c.bins[0].accuracy - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_calibrated_model_has_no_error_and_an_overconfident_one_does() {
        // 80% confident, 80% right, all in one bin.
        let calibrated: Vec<(f64, bool)> = (0..10).map(|i| (0.8, i < 8)).collect();
        assert!(calibration(&calibrated, BINS).ece < 1e-12);
        let over: Vec<(f64, bool)> = (0..10).map(|i| (0.99, i < 5)).collect();
        assert!((calibration(&over, BINS).ece - 0.49).abs() < 1e-12);
    }
}
