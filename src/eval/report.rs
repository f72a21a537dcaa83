//! results.json and the results table.
use super::table::{pct, Table};
use super::{Accuracy, ShotGroup};
use crate::data::Prepared;
use serde::{Deserialize, Serialize};

/// What `gcl train --out DIR` writes to DIR/results.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// The final model of each stage on the test set.
    pub stage1: Option<Accuracy>,
    pub stage2: Option<Accuracy>,
    /// With a validation set: the epoch of each stage that was best on val, and its test
    /// accuracy (beside the final model's; chosen on val, never on test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage1_best_val: Option<BestOnVal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage2_best_val: Option<BestOnVal>,
    /// With a validation set: the final model of each stage on it (top-1), which tells
    /// whether stage 2 helped without looking at the test set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage1_val: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage2_val: Option<f64>,
    pub train_counts: Vec<usize>,
    #[serde(default)]
    pub class_names: Vec<String>,
    pub config: serde_json::Value,
    /// SHA-256 of what the run trained and was tested on (`Prepared::fingerprint`).
    #[serde(default)]
    pub data_fingerprint: String,
    /// What the run ran on (device, threads, kernels).
    #[serde(default)]
    pub runtime: String,
    /// Wall-clock seconds of each stage's training.
    #[serde(default)]
    pub seconds: StageSeconds,
    /// Image files that were missing or could not be read and were skipped
    /// (`data.unreadable = "skip"`), each with what was wrong. Unreadable test images count
    /// as errors in the accuracy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    /// The model's weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<crate::model::ParamCounts>,
}

/// The epoch of a stage that was best on the validation set, and that model's test accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestOnVal {
    /// 1-based, as the log counts epochs.
    pub epoch: usize,
    pub val_top1: f64,
    pub test: Accuracy,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageSeconds {
    pub stage1: Option<f64>,
    pub stage2: Option<f64>,
}

impl Results {
    /// No stage done yet; `config`: the run's settings.
    pub fn new(config: serde_json::Value, data: &Prepared) -> anyhow::Result<Self> {
        Ok(Results {
            stage1: None,
            stage2: None,
            stage1_best_val: None,
            stage2_best_val: None,
            stage1_val: None,
            stage2_val: None,
            train_counts: data.counts.clone(),
            class_names: data.class_names().to_vec(),
            config,
            data_fingerprint: data.fingerprint()?.to_string(),
            runtime: String::new(),
            seconds: Default::default(),
            unreadable: Vec::new(),
            params: None,
        })
    }

    /// Notes the files `data`'s sources have skipped so far.
    pub fn note_unreadable(&mut self, data: &Prepared) {
        let mut all: Vec<String> = data.train.unreadable();
        all.extend(data.test.unreadable());
        if let Some(v) = &data.val {
            all.extend(v.unreadable());
        }
        all.sort();
        all.dedup();
        self.unreadable = all;
    }

    /// The accuracy of the last stage that ran.
    pub fn final_accuracy(&self) -> Option<&Accuracy> {
        self.stage2.as_ref().or(self.stage1.as_ref())
    }

    /// Whether stage 2 did harm: its final model is worse than stage 1's on val (None
    /// without a val set or a stage 2).
    pub fn stage2_harmed(&self) -> Option<bool> {
        self.stage2.as_ref()?;
        Some(self.stage2_val? < self.stage1_val?)
    }
}

/// What the table says under itself about stage 2: checked on val and worse, or not checked.
fn stage2_note(res: &Results) -> String {
    if res.stage2.is_none() || res.stage1.is_none() {
        return String::new();
    }
    match (res.stage2_harmed(), res.stage1_val, res.stage2_val) {
        (Some(true), Some(v1), Some(v2)) => format!(
            "Note: stage 2 is WORSE than stage 1 on the validation set ({} against {}): keep stage 1's model \
             (stage1.safetensors), or re-train the classifier otherwise (fewer stage2.epochs, a lower stage2.lr, \
             stage2.sampler = \"instance\")\n",
            pct(Some(v2)),
            pct(Some(v1))
        ),
        (Some(false), Some(v1), Some(v2)) => format!("Stage 2 checked on the validation set: {} against stage 1's {}\n", pct(Some(v2)), pct(Some(v1))),
        _ => "Note: stage 2 was not checked (no validation set). To check it without the test set, give one: \
              `gcl data make --val-per-class N`, a --val-list, a val/ folder, or --set data.val_fraction=0.2 to hold \
              out part of each class's training images\n"
            .to_string(),
    }
}

/// Overall and per-shot-group accuracy after each stage, then per class.
pub fn table(res: &Results, many_above: usize, few_below: usize) -> String {
    let counts = &res.train_counts;
    let n_in = |g: ShotGroup| counts.iter().filter(|&&n| ShotGroup::of(n, many_above, few_below) == g).count();
    let mut t = Table::new(&[String::new(), "overall".into(), format!("many ({})", n_in(ShotGroup::Many)), format!("medium ({})", n_in(ShotGroup::Medium)), format!("few ({})", n_in(ShotGroup::Few))]);
    let harmed = res.stage2_harmed() == Some(true);
    for (name, acc, best) in [("stage 1", &res.stage1, &res.stage1_best_val), ("stage 2 (re-trained)", &res.stage2, &res.stage2_best_val)] {
        if let Some(a) = acc {
            let mut label = if a.experts.is_empty() { name.to_string() } else { format!("{name} ({} experts' mean)", a.experts.len()) };
            if harmed && name.starts_with("stage 2") {
                label += " [worse than stage 1 on val]";
            }
            t.row(&[label, pct(Some(a.top1)), pct(a.many), pct(a.medium), pct(a.few)]);
            for (e, a) in a.experts.iter().enumerate() {
                t.row(&[format!("  expert {} alone", e + 1), pct(Some(a.top1)), pct(a.many), pct(a.medium), pct(a.few)]);
            }
        }
        if let Some(b) = best {
            let a = &b.test;
            let label = format!("  best on val (epoch {}, val {})", b.epoch, pct(Some(b.val_top1)));
            t.row(&[label, pct(Some(a.top1)), pct(a.many), pct(a.medium), pct(a.few)]);
        }
    }
    let mut per_class = Table::new(&["class", "name", "train", "group", "stage 1", "stage 2"]);
    for (k, &n) in counts.iter().enumerate() {
        let at = |a: &Option<Accuracy>| pct(a.as_ref().map(|a| a.per_class[k]));
        let name = res.class_names.get(k).cloned().unwrap_or_default();
        per_class.row(&[k.to_string(), name, n.to_string(), ShotGroup::of(n, many_above, few_below).name().into(), at(&res.stage1), at(&res.stage2)]);
    }
    format!(
        "\nTop-1 accuracy (%) on the balanced test set, final model of each stage\n{}{}\nPer class (%)\n{}",
        t.text(),
        stage2_note(res),
        per_class.text()
    )
}
