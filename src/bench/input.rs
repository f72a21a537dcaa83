//! `gcl bench --input`: the input pipeline alone (read + decode + training transform +
//! normalisation into batches), against torchvision's ImageFolder loader and transforms in
//! a DataLoader (scripts/bench_input_reference.py) on the same files with the same number
//! of workers, in the same invocation. Also the bare decode rate on one thread, the limit
//! the pipeline can approach.
use crate::config::Config;
use crate::data::augment::Augment;
use crate::data::loader::{epoch_rng, EpochPlan, Layout, Workers};
use crate::data::sampler::Sampler;
use crate::data::transform::TrainTransform;
use crate::data::{Source, Subset};
use super::median;
use crate::eval::Table;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

pub struct InputOptions {
    pub cfg: Config,
    /// Images timed per pass (spread evenly over the training set).
    pub images: usize,
    pub passes: usize,
    /// Worker counts to time (default: 1 and all cores).
    pub workers: Vec<usize>,
    pub vs_reference: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

pub fn run_command(o: &InputOptions) -> Result<()> {
    let data = o.cfg.data.prepare()?;
    let source = data.train.clone();
    if !source.from_files() {
        bail!("gcl bench --input times image files (--dataset list or folder); `{}` is held in memory", o.cfg.data.dataset.name());
    }
    let n = o.images.min(source.len()).max(1);
    let idx: Vec<i64> = (0..n).map(|k| (k * source.len() / n) as i64).collect();
    let subset: Arc<dyn Source> = Arc::new(Subset::new(source, &idx)?);
    let transform = data.train_transform;
    let TrainTransform::ResizedCrop { size, scale, ratio, jitter } = transform else {
        bail!("gcl bench --input times the ImageNet training transform (data.train_transform = resized-crop)");
    };
    let batch = o.cfg.stage1.batch_size;
    eprintln!(
        "gcl bench --input: {n} images of {}, {} passes, batch {batch}, RandomResizedCrop({size}) + flip{}",
        o.cfg.data.dataset.name(),
        o.passes,
        if jitter.is_some() { " + ColorJitter" } else { "" }
    );

    // The bare decode: read + decode, one thread.
    let mut decode = Vec::new();
    for _ in 0..o.passes {
        let t = Instant::now();
        for i in 0..subset.len() {
            subset.sample(i)?;
        }
        decode.push(subset.len() as f64 / t.elapsed().as_secs_f64());
    }
    let counts = crate::data::class_counts(subset.labels(), subset.num_classes());
    let mut pipeline = Vec::new();
    for &w in &o.workers {
        let plan = EpochPlan {
            source: subset.clone(),
            counts: counts.clone(),
            norm: data.norm,
            aug: Augment { transform, crop_pad: 0, flip: true, mixup_alpha: None },
            sampler: Sampler::Instance,
            batch_size: batch,
            layout: Layout { device: tch::Device::Cpu, channels_last: false },
            workers: Workers { workers: w, ahead: 2 },
            shard: crate::data::loader::Shard::ALL,
        };
        let mut rates = Vec::new();
        for pass in 0..o.passes {
            let t = Instant::now();
            let mut images = 0;
            for b in plan.epoch(epoch_rng(0, 1, pass as u64)) {
                images += b?.len();
            }
            rates.push(images as f64 / t.elapsed().as_secs_f64());
        }
        pipeline.push((w, rates));
    }

    let mut reference: Option<(Vec<f64>, Vec<(usize, Vec<f64>)>)> = None;
    if let Some(python) = &o.vs_reference {
        let list = std::env::temp_dir().join(format!("gcl-bench-input-{}.txt", std::process::id()));
        let paths: Vec<String> = (0..subset.len())
            .map(|i| subset.path(i).map(|p| std::path::absolute(p).unwrap_or_default().display().to_string()))
            .collect::<Option<_>>()
            .context("a sample without a file")?;
        std::fs::write(&list, paths.join("\n"))?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_input_reference.py");
        let mut dec = Vec::new();
        let mut per = Vec::new();
        for &w in &o.workers {
            let n = data.norm;
            let mut cmd = Command::new(python);
            cmd.arg(&script).arg("--files").arg(&list);
            cmd.args(["--size", &size.to_string(), "--workers", &w.to_string(), "--batch", &batch.to_string(), "--passes", &o.passes.to_string()]);
            cmd.args(["--scale", &scale[0].to_string(), &scale[1].to_string(), "--ratio", &ratio[0].to_string(), &ratio[1].to_string()]);
            cmd.arg("--mean").args(n.mean.iter().map(|v| v.to_string())).arg("--std").args(n.std.iter().map(|v| v.to_string()));
            if let Some(j) = jitter {
                cmd.arg("--jitter").args(j.iter().map(|v| v.to_string()));
            }
            let out = cmd.output().with_context(|| format!("cannot start {}", python.display()))?;
            if !out.status.success() {
                let _ = std::fs::remove_file(&list);
                bail!("the torchvision input benchmark failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text.lines().rev().find(|l| l.starts_with('{')).context("the torchvision input benchmark printed no result")?;
            let v: serde_json::Value = serde_json::from_str(line)?;
            let nums = |k: &str| v[k].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect::<Vec<f64>>()).unwrap_or_default();
            dec = nums("decode");
            per.push((w, nums("pipeline")));
        }
        let _ = std::fs::remove_file(&list);
        reference = Some((dec, per));
    }

    let mut t = Table::new(&["images/s (median)", "gcl", "torchvision", "ratio"]);
    let mut json = serde_json::Map::new();
    let mut row = |name: String, ours: &[f64], theirs: Option<&[f64]>| {
        let (o, r) = (median(ours), theirs.map(median));
        t.row(&[name.clone(), format!("{o:.1}"), r.map_or("-".into(), |r| format!("{r:.1}")), r.map_or("-".into(), |r| format!("{:.2}x", o / r))]);
        json.insert(name, serde_json::json!({"gcl": ours, "torchvision": theirs}));
    };
    row("decode only, 1 thread".into(), &decode, reference.as_ref().map(|r| r.0.as_slice()));
    for (w, rates) in &pipeline {
        let theirs = reference.as_ref().and_then(|r| r.1.iter().find(|(x, _)| x == w).map(|(_, v)| v.as_slice()));
        row(format!("decode + transform + batch, {w} worker{}", if *w == 1 { "" } else { "s" }), rates, theirs);
    }
    let mut text = t.text();
    if let Some((_, one)) = pipeline.iter().find(|(w, _)| *w == 1) {
        text += &format!("decode alone / pipeline with 1 worker: {:.2}x\n", median(&decode) / median(one));
    }
    text += &format!("CPU: {}\n", crate::util::cpu_name());
    if let Some(path) = &o.json {
        crate::util::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    crate::util::out(&text)
}
