//! Top-1 accuracy on a balanced test set, per class and per shot group.
use crate::data::augment::Normalize;
use crate::data::loader::{eval_batches, Layout, Workers};
use crate::data::transform::{TestTransform, Tte};
use crate::data::Source;
use crate::model::Classifier;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
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
    /// With experts: each expert's own accuracy (the fields above are the ensemble's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<Accuracy>,
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
            let sel: Vec<f64> = (0..c).filter(|&k| ShotGroup::of(train_counts[k], many_above, few_below) == g).map(|k| per_class[k]).collect();
            (!sel.is_empty()).then(|| sel.iter().sum::<f64>() / sel.len() as f64)
        };
        let total = hit.iter().sum::<usize>() as f64 / labels.len().max(1) as f64;
        Accuracy { top1: total, many: group(ShotGroup::Many), medium: group(ShotGroup::Medium), few: group(ShotGroup::Few), per_class, experts: Vec::new() }
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

/// How evaluation batches are made.
#[derive(Debug, Clone, Copy)]
pub struct EvalInput {
    pub norm: Normalize,
    pub transform: TestTransform,
    /// Test-time ensembling (`data.tte`): logits and features are the means over the views.
    pub tte: Tte,
    pub batch: usize,
    pub layout: Layout,
    pub workers: Workers,
}

/// The outputs (logits, post-hoc adjusted if asked) of every sample of `source`, in order,
/// in inference mode, one batch at a time to `each(samples, features, logits)` (features: what
/// the classifier takes, `Classifier::embedding`; logits: the experts' mean). Unreadable
/// samples that the source skips are not among `samples`.
pub fn forward_all(
    model: &Classifier,
    source: Arc<dyn Source>,
    input: &EvalInput,
    posthoc: Option<&PostHoc>,
    mut each: impl FnMut(&[usize], &Tensor, Tensor) -> Result<()>,
) -> Result<()> {
    forward_experts(model, source, input, posthoc, |samples, features, logits, _| each(samples, &model.embedding(features), logits))
}

/// As [`forward_all`], with the backbone's features as they are and each expert's logits too
/// (empty for a single model).
pub fn forward_experts(
    model: &Classifier,
    source: Arc<dyn Source>,
    input: &EvalInput,
    posthoc: Option<&PostHoc>,
    mut each: impl FnMut(&[usize], &Tensor, Tensor, Vec<Tensor>) -> Result<()>,
) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let frozen = model.backbone.freeze()?;
    let adjust = |logits: Tensor| match posthoc {
        Some(p) => crate::loss::margin::posthoc_adjust(&(logits * p.scale), &p.log_prior, p.tau),
        None => logits,
    };
    for b in eval_batches(source, input.norm, input.transform, input.tte, input.batch, input.layout, input.workers) {
        let b = b?;
        if b.samples.is_empty() {
            continue;
        }
        let features = frozen.features(&b.x)?;
        // With several views of each image, their logits' mean (LIFT's ensembling).
        let outputs: Vec<Tensor> = model.expert_outputs(&features).into_iter().map(|o| b.per_sample(o)).collect();
        let features = b.per_sample(features);
        let experts = if outputs.len() > 1 { outputs.iter().map(|o| adjust(o.shallow_clone())).collect() } else { Vec::new() };
        each(&b.samples, &features, adjust(crate::model::mean(outputs)), experts)?;
    }
    Ok(())
}

/// Predicted classes of every sample of `source`, in order; -1 for a sample that could not
/// be read (when unreadable samples are skipped), which counts as an error.
pub fn predict(model: &Classifier, source: Arc<dyn Source>, input: &EvalInput, posthoc: Option<&PostHoc>) -> Result<Vec<i64>> {
    Ok(predict_experts(model, source, input, posthoc)?.swap_remove(0))
}

/// As [`predict`]: the ensemble's predictions, then (with experts) each expert's.
pub fn predict_experts(model: &Classifier, source: Arc<dyn Source>, input: &EvalInput, posthoc: Option<&PostHoc>) -> Result<Vec<Vec<i64>>> {
    let n = source.len();
    let mut out = vec![vec![-1i64; n]; 1 + if model.experts() > 1 { model.experts() } else { 0 }];
    forward_experts(model, source, input, posthoc, |samples, _, logits, experts| {
        for (o, l) in out.iter_mut().zip(std::iter::once(&logits).chain(&experts)) {
            let pred = Vec::<i64>::try_from(&l.argmax(1, false).to_kind(Kind::Int64).to_device(Device::Cpu))?;
            for (&i, p) in samples.iter().zip(pred) {
                o[i] = p;
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// The accuracy of predictions `pred` ([`predict_experts`]'s: the ensemble's, then each
/// expert's) on labels `labels`, grouped by the training counts.
pub fn accuracy_of(pred: &[Vec<i64>], labels: &[i64], counts: &[usize], shots: (usize, usize)) -> Accuracy {
    let mut acc = Accuracy::from_predictions(&pred[0], labels, counts, shots.0, shots.1);
    acc.experts = pred[1..].iter().map(|p| Accuracy::from_predictions(p, labels, counts, shots.0, shots.1)).collect();
    acc
}

/// Accuracy of `model` on `source` (the test or the val set); shot groups (many-above,
/// few-below) by the training counts.
pub fn evaluate(model: &Classifier, source: &Arc<dyn Source>, counts: &[usize], input: &EvalInput, shots: (usize, usize), posthoc: Option<&PostHoc>) -> Result<Accuracy> {
    let pred = predict_experts(model, source.clone(), input, posthoc)?;
    Ok(accuracy_of(&pred, source.labels(), counts, shots))
}
