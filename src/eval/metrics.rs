//! Top-1 accuracy on a balanced test set, per class and per shot group.
use crate::data::augment::Normalize;
use crate::data::loader::{eval_batches, Layout};
use crate::data::{Prepared, Source};
use crate::model::Classifier;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Many-shot: more than `many_above` training images; few-shot: fewer than `few_below`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShotGroup {
    Many,
    Medium,
    Few,
}

impl ShotGroup {
    pub fn of(train_count: usize, many_above: usize, few_below: usize) -> Self {
        if train_count > many_above {
            ShotGroup::Many
        } else if train_count < few_below {
            ShotGroup::Few
        } else {
            ShotGroup::Medium
        }
    }
    pub const ALL: [ShotGroup; 3] = [ShotGroup::Many, ShotGroup::Medium, ShotGroup::Few];
    /// As results.json writes it.
    pub fn name(self) -> &'static str {
        match self {
            ShotGroup::Many => "many",
            ShotGroup::Medium => "medium",
            ShotGroup::Few => "few",
        }
    }
}

/// Accuracies as fractions in [0, 1]; a group with no class is `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub top1: f64,
    pub many: Option<f64>,
    pub medium: Option<f64>,
    pub few: Option<f64>,
    pub per_class: Vec<f64>,
}

impl Accuracy {
    /// From predictions and labels of the test set; groups by the training counts.
    pub fn from_predictions(pred: &[i64], labels: &[i64], train_counts: &[usize], many_above: usize, few_below: usize) -> Self {
        let c = train_counts.len();
        let (mut hit, mut seen) = (vec![0usize; c], vec![0usize; c]);
        for (&p, &y) in pred.iter().zip(labels) {
            seen[y as usize] += 1;
            hit[y as usize] += (p == y) as usize;
        }
        let per_class: Vec<f64> = (0..c).map(|k| if seen[k] == 0 { 0.0 } else { hit[k] as f64 / seen[k] as f64 }).collect();
        let group = |g: ShotGroup| {
            let sel: Vec<f64> = (0..c)
                .filter(|&k| ShotGroup::of(train_counts[k], many_above, few_below) == g)
                .map(|k| per_class[k])
                .collect();
            (!sel.is_empty()).then(|| sel.iter().sum::<f64>() / sel.len() as f64)
        };
        let total = hit.iter().sum::<usize>() as f64 / labels.len().max(1) as f64;
        Accuracy { top1: total, many: group(ShotGroup::Many), medium: group(ShotGroup::Medium), few: group(ShotGroup::Few), per_class }
    }
    pub fn group(&self, g: ShotGroup) -> Option<f64> {
        match g {
            ShotGroup::Many => self.many,
            ShotGroup::Medium => self.medium,
            ShotGroup::Few => self.few,
        }
    }
}

/// Post-hoc logit adjustment: predict argmax(scale * output - tau * log prior).
pub struct PostHoc {
    pub log_prior: Tensor,
    pub tau: f64,
    /// Turns a cosine head's output into the logits it was trained on (s).
    pub scale: f64,
}

/// Predicted classes of every sample of `source`, in order, in inference mode.
pub fn predict(model: &Classifier, source: &dyn Source, norm: Normalize, batch: usize, layout: Layout, posthoc: Option<&PostHoc>) -> Result<Vec<i64>> {
    let _guard = tch::no_grad_guard();
    let frozen = model.backbone.freeze()?;
    let mut out = Vec::with_capacity(source.len());
    for x in eval_batches(source, norm, batch, layout) {
        let mut logits = model.head.forward(&frozen.features(&x?)?);
        if let Some(p) = posthoc {
            logits = crate::loss::margin::posthoc_adjust(&(logits * p.scale), &p.log_prior, p.tau);
        }
        let pred = logits.argmax(1, false).to_kind(Kind::Int64).to_device(Device::Cpu);
        out.extend(Vec::<i64>::try_from(&pred)?);
    }
    Ok(out)
}

/// Accuracy of `model` on `data`'s test set; shot groups (many-above, few-below) by the
/// training counts.
pub fn evaluate(model: &Classifier, data: &Prepared, batch: usize, layout: Layout, shots: (usize, usize), posthoc: Option<&PostHoc>) -> Result<Accuracy> {
    let pred = predict(model, data.test.as_ref(), data.norm, batch, layout, posthoc)?;
    Ok(Accuracy::from_predictions(&pred, data.test.labels(), &data.counts, shots.0, shots.1))
}
