//! Learning-rate schedules, per epoch, as in the authors' CIFAR scripts.

/// Stage 1: linear warm-up over the first `warmup_fraction` of the epochs (5/200), then
/// the base rate, x0.1 after 80% and x0.01 after 90% of the epochs.
pub fn stage1_lr(base: f64, epoch: usize, epochs: usize, warmup_fraction: f64, decay_at: &[f64]) -> f64 {
    let e = (epoch + 1) as f64;
    // Python's round() rounds half to even; the reference uses it.
    let warm = ((epochs as f64 * warmup_fraction).round_ties_even() as usize).max(1) as f64;
    if e <= warm {
        return base * e / warm;
    }
    let passed = decay_at.iter().filter(|&&f| e > f * epochs as f64).count();
    base * 0.1f64.powi(passed as i32)
}

/// Stage 1 with `schedule = "cosine"` (MiSLAS's large-scale recipe): the same linear warm-up
/// when `warmup_fraction` > 0, else none, then base * (1 + cos(pi * epoch / epochs)) / 2.
pub fn stage1_cosine_lr(base: f64, epoch: usize, epochs: usize, warmup_fraction: f64) -> f64 {
    let warm = (epochs as f64 * warmup_fraction).round_ties_even() as usize;
    if epoch < warm {
        return base * (epoch + 1) as f64 / warm as f64;
    }
    cosine_lr(base, epoch, epochs)
}

/// The learning rate for `batch` when `lr` is given for `lr_batch` images per step: linear
/// scaling (Goyal et al., 2017), so a recipe carries over to other batch sizes and GPU counts.
pub fn scaled_lr(lr: f64, batch: usize, lr_batch: Option<usize>) -> f64 {
    match lr_batch {
        Some(b) => lr * batch as f64 / b as f64,
        None => lr,
    }
}

/// Stage 2: cosine decay from `base` to 0 over the epochs.
pub fn cosine_lr(base: f64, epoch: usize, epochs: usize) -> f64 {
    base * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos())
}
