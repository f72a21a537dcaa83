//! The results table and results.json.
use super::{Accuracy, ShotGroup};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// What `gcl train --out DIR` writes to DIR/results.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub stage1: Option<Accuracy>,
    pub stage2: Option<Accuracy>,
    pub train_counts: Vec<usize>,
    pub config: serde_json::Value,
    /// Wall-clock seconds of each stage's training.
    #[serde(default)]
    pub seconds: StageSeconds,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageSeconds {
    pub stage1: Option<f64>,
    pub stage2: Option<f64>,
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v))
}

/// Overall and per-shot-group accuracy after each stage, then per class.
pub fn table(res: &Results, many_above: usize, few_below: usize) -> String {
    let counts = &res.train_counts;
    let n_in = |g: ShotGroup| counts.iter().filter(|&&n| ShotGroup::of(n, many_above, few_below) == g).count();
    let mut s = String::new();
    let _ = writeln!(s, "\nTop-1 accuracy (%) on the balanced test set, final model of each stage");
    let _ = writeln!(
        s,
        "{:<22} {:>8} {:>12} {:>14} {:>10}",
        "",
        "overall",
        format!("many ({})", n_in(ShotGroup::Many)),
        format!("medium ({})", n_in(ShotGroup::Medium)),
        format!("few ({})", n_in(ShotGroup::Few))
    );
    let stages = [("stage 1", &res.stage1), ("stage 2 (re-trained)", &res.stage2)];
    for (name, acc) in stages.iter().filter_map(|(n, a)| a.as_ref().map(|a| (n, a))) {
        let _ = writeln!(s, "{:<22} {:>8} {:>12} {:>14} {:>10}", name, pct(Some(acc.top1)), pct(acc.many), pct(acc.medium), pct(acc.few));
    }
    let _ = writeln!(s, "\nPer class (%)\n{:>5} {:>7} {:>7} {:>9} {:>9}", "class", "train", "group", "stage 1", "stage 2");
    for (k, &n) in counts.iter().enumerate() {
        let g = match ShotGroup::of(n, many_above, few_below) {
            ShotGroup::Many => "many",
            ShotGroup::Medium => "medium",
            ShotGroup::Few => "few",
        };
        let at = |a: &Option<Accuracy>| pct(a.as_ref().map(|a| a.per_class[k]));
        let _ = writeln!(s, "{:>5} {:>7} {:>7} {:>9} {:>9}", k, n, g, at(&res.stage1), at(&res.stage2));
    }
    s
}
