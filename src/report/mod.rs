//! `gcl report RUN [RUN ...] --out DIR`: what training did to the embedding, the classifier
//! and the calibration, with numbers behind every picture.
//!
//! For each run (a `gcl train` folder) and each of its stages, the model is read back and
//! applied to the test set; from its features and logits come: a t-SNE picture of the
//! features; the per-class geometry on the unit sphere (`eval::geometry`: spread, distance to
//! the nearest other class, classifier weight norm and angle); per-class accuracy, the
//! row-normalised confusion matrix and the shot groups; calibration (`eval::calibration`: ECE
//! over 15 bins and the reliability diagram, overall and per shot group); and the training
//! curves of `metrics.jsonl`. Out come `report.html` (one file, figures inline, opens
//! offline), every figure as SVG and PNG, and `report.json` with every number shown.
mod html;
pub mod tsne;

use crate::data::loader::Layout;
use crate::data::Source;
use crate::eval::calibration::{calibration, Calibration, BINS};
use crate::eval::collapse::NeuralCollapse;
use crate::eval::geometry::{class_geometry, ClassGeometry};
use crate::eval::metrics::{forward_all, EvalInput};
use crate::eval::{Accuracy, ShotGroup};
use crate::runtime::{RunConfig, Runtime};
use crate::train::run_model::{self, RunModel};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
pub use html::MIN_BIN_IMAGES;
pub use tsne::TsneSettings;

pub struct ReportOptions {
    pub runs: Vec<PathBuf>,
    pub out: PathBuf,
    pub tsne: TsneSettings,
    pub run_cfg: RunConfig,
    pub verbose: bool,
}

/// One stage's model on the test set.
#[derive(Debug, Serialize)]
pub struct StageReport {
    pub stage: u64,
    pub top1: f64,
    pub many: Option<f64>,
    pub medium: Option<f64>,
    pub few: Option<f64>,
    pub per_class: Vec<f64>,
    /// Row c: how class c's test images were classified (fractions).
    pub confusion: Vec<Vec<f64>>,
    pub calibration: Calibration,
    /// By shot group (many, medium, few; groups without classes left out).
    pub calibration_by_group: BTreeMap<String, Calibration>,
    pub geometry: Vec<ClassGeometry>,
    /// Mean spread (degrees) of the tail classes and of the others.
    pub tail_spread_deg: f64,
    pub head_spread_deg: f64,
    /// Neural-collapse measures of the test features (`eval::collapse`).
    pub neural_collapse: NeuralCollapse,
    pub tsne: TsneReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct TsneReport {
    /// Test images in the picture, of how many.
    pub points: usize,
    pub of: usize,
    pub seconds: f64,
    /// Leave-one-out 10-NN accuracy in the picture.
    pub knn10: f64,
    pub xy: Vec<[f32; 2]>,
    pub labels: Vec<i64>,
}

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub name: String,
    pub path: PathBuf,
    pub train_counts: Vec<usize>,
    pub class_names: Vec<String>,
    /// The tail classes: the few-shot ones, or where there are none, medium and few.
    pub tail_classes: Vec<usize>,
    pub tail_rule: String,
    pub stages: Vec<StageReport>,
    /// metrics.jsonl, one object per epoch (empty for runs that predate it); with
    /// `run.probe_every`, the embedding's measures per epoch under `probe`.
    pub curves: Vec<serde_json::Value>,
    /// The probe features kept at `run.snapshots`, as t-SNE pictures.
    pub snapshots: Vec<SnapshotReport>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotReport {
    pub epoch: usize,
    /// The t-SNE perplexity used: the report's, or less for a probe set too small for it.
    pub perplexity: f64,
    pub tsne: TsneReport,
}

/// The t-SNE of each probe snapshot (`probe-stage1-epoch<E>.safetensors`) in run folder `dir`, by epoch.
fn snapshots(dir: &Path, classes: usize, s: &TsneSettings) -> Result<Vec<SnapshotReport>> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let epoch = name.strip_prefix("probe-stage1-epoch")?.strip_suffix(".safetensors")?.parse().ok()?;
            Some((epoch, e.path()))
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|(epoch, path)| {
            let tensors = Tensor::read_safetensors(&path).with_context(|| format!("cannot read the probe snapshot {}", path.display()))?;
            let get = |n: &str| tensors.iter().find(|(k, _)| k == n).map(|(_, t)| t.shallow_clone()).with_context(|| format!("{}: no `{n}` tensor", path.display()));
            let (f, y) = (get("features")?.to_kind(Kind::Float), get("labels")?);
            let dim = f.size()[1] as usize;
            let features: Vec<f32> = Vec::try_from(&f.flatten(0, -1))?;
            let labels: Vec<i64> = Vec::try_from(&y)?;
            let sample = tsne::sample_per_class(&labels, classes, s.max_points, s.seed);
            let x: Vec<f32> = sample.iter().flat_map(|&i| features[i * dim..(i + 1) * dim].iter().copied()).collect();
            let labels: Vec<i64> = sample.iter().map(|&i| labels[i]).collect();
            // A small probe set (a small val set) takes a smaller perplexity than the test set's.
            let s = TsneSettings { perplexity: s.perplexity.min((sample.len() as f64 - 1.0) / 3.0 - 0.5).max(1.0), ..*s };
            let (xy, seconds) = tsne::embed(&x, dim, &s)?;
            let knn10 = tsne::knn_accuracy(&xy, &labels, 10);
            Ok(SnapshotReport { epoch, perplexity: s.perplexity, tsne: TsneReport { points: sample.len(), of: features.len() / dim, seconds, knn10, xy, labels } })
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub runs: Vec<RunReport>,
    pub perplexity: f64,
    pub seed: u64,
    pub max_points: usize,
    pub seconds: f64,
}

/// Features (before the classifier), scaled logits and labels of every test image.
struct Outputs {
    features: Vec<f32>,
    dim: usize,
    /// Softmax probabilities of the logits the model was trained with (s x cosine).
    probs: Vec<f32>,
    classes: usize,
    labels: Vec<i64>,
}

fn outputs(r: &RunModel, test: &Arc<dyn Source>, rt: &Runtime) -> Result<Outputs> {
    let input = EvalInput {
        norm: r.norm,
        transform: r.transform,
        tte: r.cfg.data.tte,
        batch: rt.eval_batch,
        layout: Layout { device: rt.device, channels_last: rt.channels_last },
        workers: rt.loader(test.from_files()),
    };
    let (mut feats, mut probs, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    forward_all(&r.model, test.clone(), &input, None, |samples, f, logits| {
        feats.push(f.to_kind(Kind::Float).to_device(Device::Cpu));
        probs.push((logits * r.scale).softmax(1, Kind::Float).to_device(Device::Cpu));
        labels.extend(samples.iter().map(|&i| test.labels()[i]));
        Ok(())
    })?;
    if labels.is_empty() {
        bail!("the test set has no readable images");
    }
    let f = Tensor::cat(&feats, 0);
    let p = Tensor::cat(&probs, 0);
    let (dim, classes) = (f.size()[1] as usize, p.size()[1] as usize);
    Ok(Outputs { features: Vec::try_from(&f.flatten(0, -1))?, dim, probs: Vec::try_from(&p.flatten(0, -1))?, classes, labels })
}

/// `same`: the t-SNE of identical features (stage 2's frozen backbone gives stage 1's).
fn stage_report(r: &RunModel, o: &Outputs, counts: &[usize], shots: (usize, usize), tail: &[usize], s: &TsneSettings, same: Option<&TsneReport>) -> Result<StageReport> {
    let c = o.classes;
    let mut pred = Vec::with_capacity(o.labels.len());
    let mut conf = Vec::with_capacity(o.labels.len());
    for (row, &y) in o.probs.chunks(c).zip(&o.labels) {
        let (k, p) = row.iter().enumerate().fold((0, f32::MIN), |best, (k, &p)| if p > best.1 { (k, p) } else { best });
        pred.push(k as i64);
        conf.push((p as f64, k as i64 == y));
    }
    let acc = Accuracy::from_predictions(&pred, &o.labels, counts, shots.0, shots.1);
    let mut confusion = vec![vec![0f64; c]; c];
    for (&y, &p) in o.labels.iter().zip(&pred) {
        confusion[y as usize][p as usize] += 1.0;
    }
    for row in &mut confusion {
        let n: f64 = row.iter().sum();
        if n > 0.0 {
            row.iter_mut().for_each(|v| *v /= n);
        }
    }
    let mut by_group = BTreeMap::new();
    for g in [ShotGroup::Many, ShotGroup::Medium, ShotGroup::Few] {
        let part: Vec<(f64, bool)> = conf.iter().zip(&o.labels).filter(|(_, &y)| ShotGroup::of(counts[y as usize], shots.0, shots.1) == g).map(|(&x, _)| x).collect();
        if !part.is_empty() {
            by_group.insert(g.name().to_string(), calibration(&part, BINS));
        }
    }
    let weights: Vec<f32> = Vec::try_from(&r.model.class_weights().to_kind(Kind::Float).to_device(Device::Cpu).contiguous().flatten(0, -1))?;
    let weights = (weights.len() == c * o.dim).then_some(weights);
    let geometry = class_geometry(&o.features, o.dim, &o.labels, c, weights.as_deref());
    // Neural collapse on what the classifier applies: a cosine classifier's normalised
    // features and rows, a linear one's raw ones.
    let cosine = r.model.heads[0].kind() == crate::model::HeadKind::Cosine;
    let nc_features = crate::eval::collapse::as_applied(&o.features, o.dim, cosine);
    let nc_weights = weights.as_deref().map(|w| crate::eval::collapse::as_applied(w, o.dim, cosine));
    let groups: Vec<ShotGroup> = counts.iter().map(|&n| ShotGroup::of(n, shots.0, shots.1)).collect();
    let neural_collapse = crate::eval::collapse::neural_collapse(&nc_features, o.dim, &o.labels, c, nc_weights.as_deref(), &pred, &groups, tail);
    let mean_spread = |keep: &dyn Fn(usize) -> bool| {
        let v: Vec<f64> = geometry.iter().filter(|g| keep(g.class) && g.samples > 0).map(|g| g.spread_deg).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let tsne = match same {
        Some(t) => t.clone(),
        None => {
            let sample = tsne::sample_per_class(&o.labels, c, s.max_points, s.seed);
            let x: Vec<f32> = sample.iter().flat_map(|&i| o.features[i * o.dim..(i + 1) * o.dim].iter().copied()).collect();
            let labels: Vec<i64> = sample.iter().map(|&i| o.labels[i]).collect();
            let (xy, seconds) = tsne::embed(&x, o.dim, s)?;
            let knn10 = tsne::knn_accuracy(&xy, &labels, 10);
            TsneReport { points: sample.len(), of: o.labels.len(), seconds, knn10, xy, labels }
        }
    };
    Ok(StageReport {
        stage: r.meta.stage.number(),
        top1: acc.top1,
        many: acc.group(ShotGroup::Many),
        medium: acc.group(ShotGroup::Medium),
        few: acc.group(ShotGroup::Few),
        per_class: acc.per_class.clone(),
        confusion,
        calibration: calibration(&conf, BINS),
        calibration_by_group: by_group,
        tail_spread_deg: mean_spread(&|k| tail.contains(&k)),
        head_spread_deg: mean_spread(&|k| !tail.contains(&k)),
        neural_collapse,
        geometry,
        tsne,
    })
}

/// A name for each run: its folder's name, made unique.
fn run_names(runs: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = runs
        .iter()
        .map(|p| p.canonicalize().unwrap_or(p.clone()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into()))
        .collect();
    for i in 0..names.len() {
        if names.iter().filter(|n| **n == names[i]).count() > 1 {
            names[i] = format!("{}-{}", names[i], i + 1);
        }
    }
    names
}

/// metrics.jsonl's lines. A torn last line (no newline after it: what a full disk or a kill
/// during the write leaves) is skipped with a warning; any other line that is not a JSON
/// object is an error naming it.
pub fn read_curves(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let path = dir.join("metrics.jsonl");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let torn_tail = !bytes.is_empty() && !bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let mut out = Vec::new();
    for (no, line) in lines.iter().enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => out.push(v),
            _ if torn_tail && no + 1 == lines.len() => {
                crate::util::warn_once(&format!("{}:{}: the last line is cut short (a full disk, or the run was killed while writing it); left out", path.display(), no + 1));
            }
            Ok(_) => bail!("{}:{}: not a JSON object", path.display(), no + 1),
            Err(e) => bail!("{}:{}: not a JSON object ({e})", path.display(), no + 1),
        }
    }
    Ok(out)
}

/// `gcl report`: writes the report and prints a line per run and stage.
pub fn run_command(o: &ReportOptions) -> Result<()> {
    let r = run(o)?;
    let mut lines = String::new();
    for run in &r.runs {
        for s in &run.stages {
            lines += &format!(
                "{} stage {}: top-1 {:.2}%, ECE {:.2}%, tail spread {:.2} deg (head {:.2}), t-SNE {} points in {:.1} s\n",
                run.name,
                s.stage,
                100.0 * s.top1,
                100.0 * s.calibration.ece,
                s.tail_spread_deg,
                s.head_spread_deg,
                s.tsne.points,
                s.tsne.seconds
            );
        }
    }
    crate::util::out(&format!("{lines}report: {} ({:.1} s)\n", o.out.join("report.html").display(), r.seconds))
}

pub fn run(o: &ReportOptions) -> Result<Report> {
    if o.runs.is_empty() {
        bail!("name at least one run folder (what gcl train --out writes)");
    }
    let t0 = Instant::now();
    let rt = Runtime::resolve(&o.run_cfg)?;
    crate::eval::plots::register_font()?;
    let names = run_names(&o.runs);
    // Every input is read and checked, and the output folder made, before the long work
    // (features, t-SNE) starts.
    std::fs::create_dir_all(&o.out).with_context(|| format!("cannot create {}", o.out.display()))?;
    let mut inputs = Vec::new();
    for dir in &o.runs {
        let curves = read_curves(dir).with_context(|| format!("run {}", dir.display()))?;
        let mut models = Vec::new();
        for stage in [1, 2] {
            if stage == 2 && !dir.join("stage2.safetensors").exists() {
                continue;
            }
            models.push(run_model::load(dir, Some(stage), &rt).with_context(|| format!("run {}", dir.display()))?);
        }
        let Some(first) = models.first() else { bail!("{} has no finished stage to report", dir.display()) };
        let data = first.cfg.data.prepare().with_context(|| format!("run {}: reading its data", dir.display()))?;
        let counts = data.counts.clone();
        let (many, few) = (first.cfg.run.many_above, first.cfg.run.few_below);
        let (tail, rule) = crate::eval::collapse::tail_classes(&counts, many, few);
        let test: Arc<dyn Source> = data.test.clone();
        inputs.push((curves, models, (test, counts, tail, rule)));
    }
    let mut reports = Vec::new();
    for ((dir, name), (curves, models, info)) in o.runs.iter().zip(&names).zip(inputs) {
        let mut stages: Vec<(StageReport, Vec<String>)> = Vec::new();
        let mut stage1_features: Option<Vec<f32>> = None;
        for r in models {
            let stage = r.meta.stage.number();
            let (test, counts, tail, _) = &info;
            if o.verbose {
                eprintln!("report: {name}, stage {stage}: features of {} test images", test.len());
            }
            let out = outputs(&r, test, &rt)?;
            let shots = (r.cfg.run.many_above, r.cfg.run.few_below);
            let same = match (&stage1_features, stages.first()) {
                (Some(f), Some((s1, _))) if *f == out.features => Some(&s1.tsne),
                _ => None,
            };
            let reused = same.is_some();
            let s = stage_report(&r, &out, counts, shots, tail, &o.tsne, same)?;
            if stage == 1 {
                stage1_features = Some(out.features);
            }
            if o.verbose && !reused {
                eprintln!("report: {name}, stage {stage}: t-SNE of {} points in {:.1} s", s.tsne.points, s.tsne.seconds);
            }
            stages.push((s, r.class_names.clone()));
        }
        let (_, counts, tail, rule) = info;
        let counts_len = counts.len();
        let class_names = stages.first().map(|s| s.1.clone()).unwrap_or_default();
        reports.push(RunReport {
            name: name.clone(),
            path: dir.canonicalize().unwrap_or(dir.clone()),
            train_counts: counts,
            class_names,
            tail_classes: tail,
            tail_rule: rule,
            stages: stages.into_iter().map(|s| s.0).collect(),
            snapshots: snapshots(dir, counts_len, &o.tsne)?,
            curves,
        });
    }
    let mut report = Report { runs: reports, perplexity: o.tsne.perplexity, seed: o.tsne.seed, max_points: o.tsne.max_points, seconds: 0.0 };
    let figures = html::figures(&report, &o.out)?;
    report.seconds = t0.elapsed().as_secs_f64();
    crate::util::write_atomic(&o.out.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    crate::util::write_atomic(&o.out.join("report.html"), html::page(&report, &figures).as_bytes())?;
    Ok(report)
}
