//! Cloud size per class: how far GCL spreads a class's logits (0 for the head class).
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CloudForm {
    /// log n_max - log n_j (the authors' choice).
    #[default]
    Log,
    /// n_j^(-1/3) (ablation).
    Pow3,
    /// n_j^(-1/4) (ablation).
    Pow4,
}

/// Per-class cloud sizes, each form divided by its maximum.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudSize(pub Vec<f64>);

impl CloudSize {
    /// Equal class counts give no cloud at all (zeros), where the authors' code divides by zero.
    pub fn new(counts: &[usize], form: CloudForm) -> Self {
        let n: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
        let d: Vec<f64> = match form {
            CloudForm::Log => {
                let max_log = n.iter().map(|v| v.ln()).fold(f64::NEG_INFINITY, f64::max);
                n.iter().map(|v| max_log - v.ln()).collect()
            }
            CloudForm::Pow3 => n.iter().map(|v| v.powf(-1.0 / 3.0)).collect(),
            CloudForm::Pow4 => n.iter().map(|v| v.powf(-1.0 / 4.0)).collect(),
        };
        let top = d.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if top == 0.0 || !top.is_finite() {
            CloudSize(vec![0.0; d.len()])
        } else {
            CloudSize(d.iter().map(|v| v / top).collect())
        }
    }
}
