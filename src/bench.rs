//! `gcl bench`: training and evaluation throughput and peak memory, optionally side by
//! side with the PyTorch reference (shared/reference/train_reference.py).
//!
//! Each measurement runs in a fresh process (`gcl bench-worker`, or the reference's
//! harness scripts/bench_reference.py), so peak memory is the process's own; rounds
//! alternate ours and the reference's, so both see the same machine load.
use crate::config::Config;
use crate::data::augment::Augment;
use crate::loss::LossConfig;
use crate::train::{Prepared, Session};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// How much to measure.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Budget {
    /// Untimed training steps first (allocator, oneDNN kernels, caches).
    pub warmup_steps: usize,
    /// Timed windows per phase; the median is reported.
    pub windows: usize,
    pub steps_per_window: usize,
    /// Timed passes over the test set.
    pub eval_passes: usize,
}

/// One process's measurements (images/s per window; peak resident memory).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measurement {
    pub stage1: Vec<f64>,
    pub stage2: Vec<f64>,
    pub eval: Vec<f64>,
    pub peak_rss_mib: f64,
    /// Peak GPU memory allocated by the framework, on CUDA runs.
    #[serde(default)]
    pub peak_gpu_mib: Option<f64>,
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Images/s of `windows` windows of `steps` training steps each, after `warmup` steps,
/// fed by the real loader thread.
fn time_training(
    session: &mut Session,
    loss: &LossConfig,
    aug: Augment,
    stage: u64,
    budget: &Budget,
    train_backbone: bool,
) -> Result<Vec<f64>> {
    let cfg = session.cfg;
    let (sampler, batch, lr) = if stage == 1 {
        (cfg.stage1.sampler, cfg.stage1.batch_size, cfg.stage1.lr)
    } else {
        (cfg.stage2.sampler, cfg.stage2.batch_size, cfg.stage2.lr)
    };
    let mut opt = if stage == 1 { session.stage1_optimizer() } else { session.freeze_backbone() };
    let plan = session.plan(aug, sampler, batch, loss);
    let crit = loss.build(&session.data.counts, session.device, 0, 1);
    let mut out = Vec::new();
    let ahead = cfg.run.prefetch_for(session.device);
    let epoch_of = |e: u64| plan.epoch(crate::data::loader::epoch_rng(cfg.run.seed, stage, e), ahead);
    let mut epoch = 0u64;
    let mut batches = epoch_of(epoch);
    let mut next = || loop {
        if let Some(b) = batches.next() {
            return b;
        }
        epoch += 1; // epoch over: start the next one
        batches = epoch_of(epoch);
    };
    for _ in 0..budget.warmup_steps {
        let b = next();
        let _ = session.train_step(&b, crit.as_ref(), &mut opt, lr, train_backbone).double_value(&[]);
    }
    for _ in 0..budget.windows {
        let t = Instant::now();
        let mut seen = 0;
        let mut last = None;
        for _ in 0..budget.steps_per_window {
            let b = next();
            seen += b.len();
            last = Some(session.train_step(&b, crit.as_ref(), &mut opt, lr, train_backbone));
        }
        // Wait for the device before stopping the clock.
        let v = last.map_or(0.0, |l| l.double_value(&[]));
        if !v.is_finite() {
            bail!("bench: the loss became {v}");
        }
        out.push(seen as f64 / t.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// Measures this process: stage 1, stage 2 and evaluation.
pub fn measure(cfg: &Config, data: &Prepared, budget: &Budget) -> Result<Measurement> {
    if cfg.run.threads > 0 {
        tch::set_num_threads(cfg.run.threads as i32);
    }
    let device = crate::device::resolve(&cfg.run.device)?;
    let mut session = Session::new(cfg, data, device, false)?;
    let stage1 = time_training(&mut session, &cfg.stage1.loss, cfg.stage1.augment(), 1, budget, true)?;
    // Stage 2 as configured; a method that does not train (none, tau-norm) is timed as cRT.
    let loss2 = cfg.stage2.method.training_loss().unwrap_or(LossConfig::Ce(Default::default()));
    let stage2 = time_training(&mut session, &loss2, cfg.stage2.augment(), 2, budget, false)?;
    let mut eval = Vec::new();
    let _ = session.evaluate(); // warm-up
    for _ in 0..budget.eval_passes {
        let t = Instant::now();
        let _ = session.evaluate();
        eval.push(data.test.len() as f64 / t.elapsed().as_secs_f64());
    }
    Ok(Measurement { stage1, stage2, eval, peak_rss_mib: peak_rss_mib(), peak_gpu_mib: None })
}

/// The reference's harness, run with `python`.
pub struct Reference {
    pub python: PathBuf,
    pub script: PathBuf,
    pub reference_dir: PathBuf,
}

fn run_json(cmd: &mut Command, what: &str) -> Result<Measurement> {
    let out = cmd.output().with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).with_context(|| format!("{what} printed no result"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: unreadable result `{line}`"))
}

/// Our measurement in a fresh process.
pub fn run_ours(config_path: &Path, budget: &Budget) -> Result<Measurement> {
    let exe = std::env::current_exe()?;
    run_json(
        Command::new(exe).arg("bench-worker").arg("--config-file").arg(config_path).arg("--budget").arg(serde_json::to_string(budget)?),
        "gcl bench-worker",
    )
}

/// The reference's measurement in a fresh process, same data, split, batch and steps.
pub fn run_reference(r: &Reference, cfg: &Config, data_dir: &Path, split_file: &Path, budget: &Budget) -> Result<Measurement> {
    let format = match cfg.data.dataset {
        crate::data::DatasetKind::FashionMnist | crate::data::DatasetKind::Mnist => "idx",
        crate::data::DatasetKind::Cifar10 => "cifar10",
        crate::data::DatasetKind::Cifar100 => "cifar100",
    };
    let threads = if cfg.run.threads > 0 { cfg.run.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    let mut cmd = Command::new(&r.python);
    cmd.arg(&r.script)
        .arg("--reference-dir")
        .arg(&r.reference_dir)
        .args(["--data"])
        .arg(data_dir)
        .args(["--format", format, "--split"])
        .arg(split_file)
        .args(["--batch", &cfg.stage1.batch_size.to_string(), "--threads", &threads.to_string()])
        .args(["--warmup-steps", &budget.warmup_steps.to_string(), "--windows", &budget.windows.to_string()])
        .args(["--steps-per-window", &budget.steps_per_window.to_string(), "--eval-passes", &budget.eval_passes.to_string()])
        .args(["--device", if cfg.run.device.starts_with("cuda") { "cuda" } else { "cpu" }])
        .env_remove("PYTHONPATH");
    if !cfg.stage1.flip {
        cmd.arg("--no-flip");
    }
    if !cfg.stage1.mixup {
        cmd.arg("--no-mixup");
    }
    run_json(&mut cmd, "the reference harness")
}
