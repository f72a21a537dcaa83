//! The two training stages: what `gcl train` runs.
//!
//! Stage 1 trains backbone and classifier together (GCL-E on a cosine classifier, or
//! cross-entropy on a linear one). Stage 2 freezes the backbone, BatchNorm statistics
//! included, and re-trains only the classifier (GCL: the cosine classifier from its stage-1
//! weights, with class-balanced re-sampling and the focal form of GCL-E).
pub mod checkpoint;
pub mod log;
pub mod optim;
pub mod probe;
pub mod run_dir;
pub mod run_model;
pub mod schedule;
pub mod select;
mod session;
mod stage;

pub use session::Session;
pub use stage::{step_seed, StageRun, Step};

use crate::config::{Config, Stage2Method};
use crate::dist::Dist;
use std::sync::Arc;
use crate::data::{split, Prepared};
use crate::eval::report::Results;
use crate::runtime::Runtime;
use anyhow::{bail, Context, Result};
use checkpoint::{Checkpoint, Meta};
use run_dir::{differences, saved_config, Mode, RunDir};
use select::ValTracker;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Kind;

/// One of the two training stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Backbone and classifier.
    One,
    /// The classifier alone, on the frozen backbone.
    Two,
}

impl Stage {
    pub fn number(self) -> u64 {
        match self {
            Stage::One => 1,
            Stage::Two => 2,
        }
    }
    pub fn from_number(n: i64) -> Option<Stage> {
        match n {
            1 => Some(Stage::One),
            2 => Some(Stage::Two),
            _ => None,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stage {}", self.number())
    }
}

pub struct TrainOptions {
    pub out: PathBuf,
    /// Continue the run in OUT: stage 1 from OUT/stage1.safetensors.
    pub resume: bool,
    /// Replace the run in OUT (its files are removed first).
    pub overwrite: bool,
    /// The stages to run, in order.
    pub stages: Vec<Stage>,
    /// Stage 2 starts from this stage-1 checkpoint (default OUT/stage1.safetensors).
    pub stage1_checkpoint: Option<PathBuf>,
    /// Log lines on stderr (progress bars show only on a terminal).
    pub verbose: bool,
    /// The data-parallel workers this process is one of (`Dist::single()`: none).
    pub dist: Arc<Dist>,
}

/// Whether these settings have a stage 2 to run.
pub fn has_stage2(cfg: &Config) -> bool {
    let trains = cfg.stage2.epochs > 0 || matches!(cfg.stage2.method, Stage2Method::TauNorm { .. } | Stage2Method::Ncm);
    cfg.stage2.method != Stage2Method::None && trains
}

/// The data-parallel workers this process is one of: under a launcher (torchrun, Slurm:
/// its environment says so) it joins them; with `nproc` = N > 1 it starts N local workers,
/// waits for them and returns None; else it trains alone.
/// `oversubscribe`: start more CPU workers than cores.
pub fn workers(cfg: &Config, nproc: Option<usize>, oversubscribe: bool, timeout: std::time::Duration) -> Result<Option<Arc<Dist>>> {
    // NCCL for CUDA training; a CUDA request without a GPU falls back to the CPU (and Gloo).
    let cuda = crate::runtime::parse_device(&cfg.run.device)?.is_cuda() && tch::Cuda::is_available();
    let env = crate::dist::Env::from_process()?;
    if let Some(n) = nproc {
        if env.is_some() {
            bail!("--nproc {n} inside a launcher that already started the workers (WORLD_SIZE is set): leave out --nproc");
        }
        if n != 1 {
            crate::dist::launch::check_size(n, cuda, oversubscribe, worker_memory(cfg))?;
            let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            crate::dist::launch::run_local(n, &crate::dist::launch::worker_args(&args), cuda)?;
            return Ok(None);
        }
    }
    Ok(Some(match &env {
        None => Dist::single(),
        Some(e) => Dist::join(e, if cuda { tch::Device::Cuda(e.local_rank) } else { tch::Device::Cpu }, timeout)?,
    }))
}

/// A rough size of one training worker's memory, in bytes: 0.7 GB of libtorch, model and
/// data (the peak measured for ResNet-32 on Fashion-MNIST-LT, batch 64) plus activations
/// taken as 200 times the batch's input (ResNets keep about that much for the backward pass).
pub fn worker_memory(cfg: &Config) -> u64 {
    let r = cfg.resolved();
    let side = r.data.transforms().train.size().unwrap_or(32) as u64;
    let channels = r.data.color().channels() as u64;
    700 * (1 << 20) + r.stage1.batch_size as u64 * side * side * channels * 4 * 200
}

/// `gcl train`: reads the data, trains, prints the results table.
pub fn run_command(cfg: &Config, opts: &TrainOptions) -> Result<()> {
    if let (Some(f), true) = (&cfg.fitted, opts.verbose && opts.dist.is_writer()) {
        eprintln!("gcl: {f}");
    }
    let data = cfg.data.prepare()?;
    let res = train(cfg, &data, opts)?;
    if !opts.dist.is_writer() {
        return Ok(());
    }
    let table = crate::eval::report::table(&res, cfg.run.many_above, cfg.run.few_below);
    crate::util::out(&format!("{table}\nresults: {}\n", opts.out.join("results.json").display()))
}

/// Trains the stages asked for and writes OUT/results.json (after each stage); returns the
/// results. Everything is checked before anything is written (run_dir.rs says what is written
/// when).
pub fn train(cfg: &Config, data: &Prepared, opts: &TrainOptions) -> Result<Results> {
    cfg.validate()?;
    if opts.resume && opts.overwrite {
        bail!("--resume continues the run in the folder and --overwrite replaces it: give one of them");
    }
    let mut rt = Runtime::resolve(&cfg.run)?;
    // CUDA workers take one device each, by their rank on this machine.
    if let (true, tch::Device::Cuda(_)) = (opts.dist.is_distributed(), rt.device) {
        rt.device = tch::Device::Cuda(opts.dist.local_rank);
    }
    let run_one = opts.stages.contains(&Stage::One);
    let run_two = opts.stages.contains(&Stage::Two) && has_stage2(cfg);
    if opts.stages == [Stage::Two] && !run_two {
        bail!("--stages two: this configuration has no stage 2 (stage2.method is none or stage2.epochs is 0)");
    }
    let own = opts.out.join("stage1.safetensors");
    let from = opts.stage1_checkpoint.clone().unwrap_or_else(|| own.clone());
    // Stage 2 alone on the folder's own stage 1 goes on with that run, as --resume does.
    let on_own = !run_one && (opts.stage1_checkpoint.is_none() || same_file(&from, &own));
    let mode = if opts.resume || (on_own && own.exists()) {
        Mode::Continue
    } else if opts.overwrite {
        Mode::Overwrite
    } else {
        Mode::Fresh
    };
    // Rank 0 alone holds the folder (its lock) and writes; the other workers read what it
    // wrote (a checkpoint to resume or continue from) once it is there.
    let writer = opts.dist.is_writer();
    let dir = if writer { Some(RunDir::open(&opts.out, mode)?) } else { None };
    let file = |name: &str| opts.out.join(name);
    let mut saved = saved_config(cfg, &opts.out)?;
    // Record what ran: a CUDA request that fell back to the CPU ran on the CPU.
    if rt.device == tch::Device::Cpu {
        saved.run.device = "cpu".into();
    }
    let mut previous: Option<Results> = None;
    if mode == Mode::Continue {
        check_continues(&opts.out, &saved, data, opts.resume && run_one)?;
        previous = std::fs::read_to_string(file("results.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    }
    let new_session = || -> Result<Session> {
        Session::new(cfg, data, rt, opts.verbose).map(|s| s.among(opts.dist.clone()))
    };
    // Stage 2 alone: its checkpoint must exist, be a finished stage 1 and fit this model
    // before anything is written; the session it was loaded into then trains stage 2.
    let mut stage2_session = None;
    if run_two && !run_one {
        let mut s = new_session()?;
        check_stage1_checkpoint(&mut s, &from)?;
        stage2_session = Some(s);
    }
    // Every worker has checked; none goes on if one of them failed.
    opts.dist.barrier()?;

    // Everything checked: from here on the folder changes.
    if let Some(dir) = &dir {
        if mode == Mode::Overwrite {
            dir.clear()?;
        }
        if mode == Mode::Continue && run_one {
            // Stage 1 goes on: results and a stage 2 of its earlier state no longer belong to it.
            for stale in [dir.file("stage2.safetensors"), dir.file("results.json")] {
                if stale.exists() {
                    std::fs::remove_file(&stale).with_context(|| format!("cannot remove the stale {}", stale.display()))?;
                }
            }
        }
        crate::util::write_atomic(&dir.file("config.toml"), saved.to_toml().as_bytes())?;
        split::write_index_file(&dir.file("split.txt"), &data.indices)?;
    }
    let log = match &dir {
        Some(dir) => Some(Arc::new(log::RunLog::open(&dir.path)?)),
        None => None,
    };
    // A stage's session records into the run's log, and starts with its loss's parameters.
    let start = |s: &mut Session, stage: Stage| -> Result<()> {
        s.run_log = log.clone();
        match (&log, stage_loss(cfg, stage)) {
            (Some(log), Some(loss)) => log_loss(log, stage, &loss),
            _ => Ok(()),
        }
    };
    let mut results = Results::new(serde_json::to_value(&saved)?, data)?;
    results.runtime = rt.describe();
    if let (Some(p), false) = (&previous, run_one) {
        results.stage1 = p.stage1.clone();
        results.stage1_best_val = p.stage1_best_val.clone();
        results.stage1_val = p.stage1_val;
        results.seconds.stage1 = p.seconds.stage1;
    }
    results.runtime = match opts.dist.world {
        1 => results.runtime,
        w => format!("{}; {w} data-parallel workers ({})", results.runtime, if rt.device.is_cuda() { "NCCL" } else { "Gloo" }),
    };
    let write_results = |r: &mut Results| {
        r.note_unreadable(data);
        match &dir {
            Some(dir) => crate::util::write_atomic(&dir.file("results.json"), serde_json::to_string_pretty(r)?.as_bytes()),
            None => Ok(()),
        }
    };
    if opts.verbose && writer {
        eprintln!(
            "gcl: {} train images in {} classes (counts {:?}), {} test images; {}",
            data.train.len(),
            data.counts.len(),
            data.counts,
            data.test.len(),
            rt.describe()
        );
    }
    if run_one {
        let mut session = new_session()?;
        start(&mut session, Stage::One)?;
        let t = Instant::now();
        let mut val = ValTracker::new(&opts.out, Stage::One, opts.resume, writer)?;
        let p = crate::model::param_counts(&session.vs, session.model.experts());
        session.log(match p.experts {
            1 if p.trainable < p.total => format!("gcl: {}: {} weights, {} of them trained ({:.2}%)", session.model.backbone.arch(), p.total, p.trainable, 100.0 * p.trainable as f64 / p.total as f64),
            1 => format!("gcl: {}: {} weights", session.model.backbone.arch(), p.total),
            e => format!("gcl: {}: {} weights: {} shared + {e} experts x {}", session.model.backbone.arch(), p.total, p.shared, p.per_expert),
        });
        results.params = Some(p);
        stage1(&mut session, &own, opts.resume, &mut val)?;
        results.seconds.stage1 = Some(t.elapsed().as_secs_f64());
        let acc = session.evaluate()?;
        session.log(format!("stage 1: top-1 {:.2}%", 100.0 * acc.top1));
        results.stage1_val = val.final_top1(&session)?;
        if let Some(log) = &log {
            log_accuracy(log, Stage::One, cfg.stage1.epochs, &acc, results.stage1_val)?;
        }
        results.stage1 = Some(acc);
        results.stage1_best_val = val.finish(&mut session)?;
        write_results(&mut results)?;
    }
    if run_two {
        let mut session = match stage2_session {
            Some(s) => s,
            None => {
                let mut s = new_session()?;
                check_stage1_checkpoint(&mut s, &from)?;
                s
            }
        };
        start(&mut session, Stage::Two)?;
        results.params = Some(crate::model::param_counts(&session.vs, session.model.experts()));
        let t = Instant::now();
        let mut val = ValTracker::new(&opts.out, Stage::Two, false, writer)?;
        stage2(&mut session, &file("stage2.safetensors"), &mut val)?;
        results.seconds.stage2 = Some(t.elapsed().as_secs_f64());
        let acc = session.evaluate()?;
        session.log(format!("stage 2: top-1 {:.2}%", 100.0 * acc.top1));
        results.stage2_val = val.final_top1(&session)?;
        if let Some(log) = &log {
            log_accuracy(log, Stage::Two, cfg.stage2.epochs, &acc, results.stage2_val)?;
        }
        results.stage2 = Some(acc);
        results.stage2_best_val = val.finish(&mut session)?;
        write_results(&mut results)?;
    }
    if !results.unreadable.is_empty() && writer {
        eprintln!("gcl: warning: {} image files were skipped as unreadable (listed in results.json)", results.unreadable.len());
    }
    Ok(results)
}

/// The results of the finished run in `dir`, when it trained on exactly this: the same
/// settings as its folder keeps them, the same split and data (its fingerprint), and every
/// stage the settings have done. `gcl compare` and `gcl sweep` reuse such a run.
pub fn finished_run(cfg: &Config, dir: &Path, data: &Prepared) -> Result<Option<Results>> {
    let Ok(text) = std::fs::read_to_string(dir.join("results.json")) else { return Ok(None) };
    let Ok(r) = serde_json::from_str::<Results>(&text) else { return Ok(None) };
    let done = r.stage1.is_some() && (r.stage2.is_some() || !has_stage2(cfg));
    Ok((done && trained_with(&r, cfg, dir)? && r.data_fingerprint == data.fingerprint()?).then_some(r))
}

/// Whether `r` (results.json of run folder `dir`) was trained with `cfg`'s settings. Its
/// recorded settings are read back through the settings' defaults first, so a setting added
/// since it ran, at its default, is no difference.
pub fn trained_with(r: &Results, cfg: &Config, dir: &Path) -> Result<bool> {
    let saved = serde_json::to_value(saved_config(cfg, dir)?)?;
    let recorded = serde_json::from_value::<Config>(r.config.clone()).ok().and_then(|c| serde_json::to_value(c).ok());
    Ok(recorded.is_some_and(|v| v == saved))
}

/// The loss `stage` trains with (None: stage 2 trains nothing).
fn stage_loss(cfg: &Config, stage: Stage) -> Option<crate::loss::LossConfig> {
    match stage {
        Stage::One => Some(cfg.stage1.loss),
        Stage::Two => cfg.stage2.method.training_loss(),
    }
}

/// The loss's numeric parameters (GCL's s, m, noise_mul, ...) as scalars `loss_params/<name>` at step 0.
fn log_loss(log: &log::RunLog, stage: Stage, loss: &crate::loss::LossConfig) -> Result<()> {
    let params = serde_json::to_value(loss)?;
    let values: Vec<(String, f64)> = params.as_object().into_iter().flatten().filter_map(|(k, v)| Some((format!("loss_params/{k}"), v.as_f64()?))).collect();
    log.scalars(stage, 0, &values)
}

/// A stage's final model on the test set (overall and per shot group) and on val.
fn log_accuracy(log: &log::RunLog, stage: Stage, step: usize, acc: &crate::eval::Accuracy, val: Option<f64>) -> Result<()> {
    let mut values = vec![("test_top1", acc.top1)];
    for (name, v) in [("test_many", acc.many), ("test_medium", acc.medium), ("test_few", acc.few), ("val_top1_final", val)] {
        values.extend(v.map(|v| (name, v)));
    }
    log.scalars(stage, step, &values)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A run that goes on in its folder: same settings, same split, and for stage 1 a checkpoint.
fn check_continues(dir: &Path, saved: &Config, data: &Prepared, needs_checkpoint: bool) -> Result<()> {
    let path = dir.join("config.toml");
    if !path.exists() {
        bail!("--resume: {} holds no run to continue (no config.toml); start one without --resume", dir.display());
    }
    let before = Config::default().merge_file(&path)?;
    let diff = differences(&before.resolved(), saved);
    if !diff.is_empty() {
        bail!(
            "--resume: these settings differ from those of the run in {} (saved -> now):\n  {}\n\
             resume with the same settings, replace the run with --overwrite, or use another --out",
            dir.display(),
            diff.join("\n  ")
        );
    }
    let split_path = dir.join("split.txt");
    let indices = split::read_index_file(&split_path, usize::MAX)?;
    if indices != data.indices {
        bail!(
            "--resume: the run in {} trained on another split ({} images in {}, {} now); resume on the same data, or use another --out",
            dir.display(),
            indices.len(),
            split_path.display(),
            data.indices.len()
        );
    }
    let ck = dir.join("stage1.safetensors");
    if needs_checkpoint && !ck.exists() {
        bail!("--resume: no checkpoint {} to continue from (stage 1 ended no epoch); start afresh with --overwrite", ck.display());
    }
    // Same indices, other contents: a list file edited, images replaced or truncated.
    if ck.exists() {
        if let Some(before) = Checkpoint::load_meta(&ck)?.data {
            if before != data.fingerprint()? {
                bail!(
                    "--resume: the data changed since {} was written (the same {} training images by index, but a list file, \
                     a label or an image's size differs, train or test); resume on the data it started with, or use another --out",
                    ck.display(),
                    indices.len()
                );
            }
        }
    }
    Ok(())
}

/// `from` is a finished stage-1 checkpoint of this model and split (loaded into `session`).
fn check_stage1_checkpoint(session: &mut Session, from: &Path) -> Result<()> {
    if !from.exists() {
        bail!("--stages two: no stage-1 checkpoint at {} (train stage 1 first, or give --stage1-checkpoint)", from.display());
    }
    let ck = Checkpoint::load(from)?;
    let got = ck.meta(from)?;
    if got.stage != Stage::One {
        bail!("{} is not a stage-1 checkpoint (it was written by {})", from.display(), got.stage);
    }
    if !got.finished() {
        bail!(
            "{} was saved after epoch {} of {}: stage 1 did not finish (continue it with --resume)",
            from.display(),
            got.epochs_done,
            got.epochs_total.unwrap_or(0)
        );
    }
    let want = session_meta(session, Stage::One, 0, None);
    ck.restore_run(from, &want, &mut session.vs, None)?;
    Ok(())
}

/// What a checkpoint of `session` records, after `epochs_done` of `epochs_total` of `stage`.
fn session_meta(s: &Session, stage: Stage, epochs_done: usize, epochs_total: Option<usize>) -> Meta {
    Meta {
        stage,
        epochs_done,
        epochs_total,
        train_counts: s.data.counts.clone(),
        arch: s.model.backbone.arch(),
        head: s.model.heads[0].kind(),
        norm: s.data.norm,
        // Computed once per run (it reads every file's size); a set that cannot be read
        // through fails elsewhere with the file's name.
        data: s.data.fingerprint().ok().map(str::to_string),
        backbone_file: backbone_file(&s.cfg.model),
    }
}

/// The pretrained file a tuned ViT's checkpoints refer to instead of holding its untrained
/// weights (`Meta::backbone_file`); None when everything trains or nothing was pretrained.
pub(crate) fn backbone_file(m: &crate::model::ModelConfig) -> Option<(std::path::PathBuf, String)> {
    if m.tune == crate::model::vit::Tune::Full {
        return None;
    }
    let file = std::path::absolute(m.pretrained.as_ref()?).ok()?;
    let sha = crate::model::weights::file_sha256(&file).ok()?;
    Some((file, sha))
}

fn meta(run: &StageRun, epochs_done: usize) -> Meta {
    session_meta(run.session, run.stage, epochs_done, Some(run.epochs))
}

/// Stage 1: backbone and classifier, from scratch or resumed from `ckpt`.
fn stage1(session: &mut Session, ckpt: &Path, resume: bool, val: &mut ValTracker) -> Result<()> {
    if !(resume && ckpt.exists()) {
        session.load_pretrained()?;
        match session.cfg.model.head_init {
            crate::model::HeadInit::Random => {}
            crate::model::HeadInit::ClassMeans => session.init_head_from_class_means(false)?,
            crate::model::HeadInit::Text => session.init_head_from_text()?,
            crate::model::HeadInit::Embeddings => session.init_head_from_file()?,
        }
    }
    let mut run = StageRun::new(session, Stage::One)?;
    let mut start = 0;
    if resume && ckpt.exists() {
        let want = meta(&run, 0);
        let got = Checkpoint::load(ckpt)?.restore_run(ckpt, &want, &mut run.session.vs, Some(&mut run.opt))?;
        start = got.epochs_done.min(run.epochs);
        run.session.log(format!("stage 1: resuming from {} after epoch {start}/{}", ckpt.display(), run.epochs));
        restore_adaptive(&mut run, &ckpt.with_file_name("metrics.jsonl"), start)?;
    }
    if let Some(log) = &run.session.run_log {
        log.keep_until(Stage::One, start)?;
    }
    run.session.sync_from_writer()?;
    let probe = probe::Probe::new(run.session)?;
    if let Some(p) = &probe {
        run.session.log(format!("gcl: the embedding is measured on {}", p.what));
    }
    // The epoch's line before its checkpoint: a kill between the two leaves a line that the
    // resumed run drops (keep_until) and writes again, never a checkpoint without its line.
    for epoch in start..run.epochs {
        let mut line = fit_epoch(&mut run, epoch, ckpt)?;
        let val_top1 = val.after_epoch(run.session, epoch)?;
        if let Some(p) = &probe {
            let (due, keep) = p.due(Stage::One, epoch + 1);
            if due && run.session.dist.is_writer() {
                line["probe"] = p.measure(run.session, keep.then(|| probe::snapshot_path(ckpt.parent().unwrap_or(Path::new(".")), epoch + 1)).as_deref())?;
            }
        }
        record(run.session, Stage::One, epoch + 1, line, val_top1)?;
        save(&run, ckpt, epoch + 1)?;
    }
    if run.epochs == 0 {
        // Nothing to train (CLIP zero-shot): the starting model is the stage's model.
        save(&run, ckpt, 0)?;
    }
    Ok(())
}

/// A resumed stage's adaptive cloud weights: what its last finished epoch wrote to
/// metrics.jsonl (`adaptive_weights`), read by rank 0 and sent to the other workers.
fn restore_adaptive(run: &mut StageRun, metrics: &Path, epochs_done: usize) -> Result<()> {
    let Some(cloud) = run.cloud.as_mut().filter(|c| c.is_adaptive()) else { return Ok(()) };
    if epochs_done == 0 {
        return Ok(());
    }
    let n = cloud.weights.len();
    let mut w = vec![0.0; n];
    if run.session.dist.is_writer() {
        let text = std::fs::read_to_string(metrics).with_context(|| format!("--resume with the adaptive cloud: cannot read {}", metrics.display()))?;
        let line = text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find(|v| v["stage"] == 1 && v["epoch"] == epochs_done as u64);
        let weights: Option<Vec<f64>> = line.and_then(|v| serde_json::from_value(v["adaptive_weights"].clone()).ok());
        w = match weights {
            Some(w) if w.len() == n => w,
            _ => bail!(
                "--resume with the adaptive cloud: {} has no `adaptive_weights` of {n} classes for stage 1, epoch {epochs_done}; start afresh with --overwrite",
                metrics.display()
            ),
        };
    }
    let t = tch::Tensor::from_slice(&w);
    run.session.dist.broadcast_from_writer(std::slice::from_ref(&t))?;
    cloud.weights = Vec::<f64>::try_from(t)?;
    Ok(())
}

/// An epoch's line of numbers, with its val top-1 when there is a val set, into the run's log
/// (metrics.jsonl and TensorBoard; rank 0 only).
fn record(session: &Session, stage: Stage, epoch: usize, mut line: serde_json::Value, val_top1: Option<f64>) -> Result<()> {
    let Some(log) = &session.run_log else { return Ok(()) };
    if let Some(v) = val_top1 {
        line["val_top1"] = v.into();
    }
    log.epoch(stage, epoch, &line)
}

/// The run's checkpoint after `epochs_done` epochs (rank 0 writes it).
fn save(run: &StageRun, ckpt: &Path, epochs_done: usize) -> Result<()> {
    if !run.session.dist.is_writer() {
        return Ok(());
    }
    Checkpoint::of_run(&run.session.vs, &run.opt, &meta(run, epochs_done), &run.session.model.backbone.untuned()).save(ckpt)
}

/// Stage 2: the backbone frozen (BatchNorm statistics too), only the classifier changed:
/// re-trained from its stage-1 weights (GCL), re-initialised and re-trained (cRT), or
/// tau-normalised. `session` holds the stage-1 model (`check_stage1_checkpoint` loaded it).
fn stage2(session: &mut Session, ckpt: &Path, val: &mut ValTracker) -> Result<()> {
    let method = session.cfg.stage2.method;
    if let Some(log) = &session.run_log {
        log.keep_until(Stage::Two, 0)?;
    }
    let mut run = StageRun::new(session, Stage::Two)?;
    match method {
        Stage2Method::None => return Ok(()),
        Stage2Method::TauNorm { tau } => {
            for h in &mut run.session.model.heads {
                h.tau_normalize(tau)?;
            }
            run.session.log(format!("stage 2: tau-normalised the classifier (tau = {tau})"));
            // Nothing trains: the stage is finished whatever stage2.epochs says.
            let done = run.epochs;
            return save(&run, ckpt, done);
        }
        Stage2Method::Ncm => {
            run.session.init_head_from_class_means(true)?;
            let done = run.epochs;
            return save(&run, ckpt, done);
        }
        Stage2Method::Crt | Stage2Method::Retrain { .. } | Stage2Method::Lws => run.prepare_head(),
    }
    run.session.sync_from_writer()?;
    let probe = probe::Probe::new(run.session)?;
    for epoch in 0..run.epochs {
        let mut line = fit_epoch(&mut run, epoch, ckpt)?;
        let val_top1 = run.with_lws_folded(|s| val.after_epoch(s, epoch))?;
        if let Some(p) = &probe {
            if p.due(Stage::Two, epoch + 1).0 && run.session.dist.is_writer() {
                line["probe"] = run.with_lws_folded(|s| p.measure(s, None))?;
            }
        }
        record(run.session, Stage::Two, epoch + 1, line, val_top1)?;
    }
    run.fold_lws()?;
    let epochs = run.epochs;
    save(&run, ckpt, epochs)
}

/// A classification loss this large means the weights have blown up (at chance it is
/// ln C; GCL's scaled cosines bound it by about 2s).
const EXPLODED_LOSS: f64 = 1e3;
/// No weight or BatchNorm statistic of a trained network comes near this.
const EXPLODED_VALUE: f64 = 1e6;

/// The usual cause of a diverged stage, for the error.
fn divergence_hint(run: &StageRun) -> String {
    let c = run.session.cfg;
    let (name, lr, batch, lr_batch) = match run.stage {
        Stage::One => ("stage1", c.stage1.lr, c.stage1.batch_size, c.stage1.lr_batch),
        Stage::Two => ("stage2", c.stage2.lr, c.stage2.batch_size, c.stage2.lr_batch),
    };
    let batch = run.global_batch(batch);
    let lr = match lr_batch {
        Some(b) => format!("{name}.lr = {lr}, {} at batch {batch} by {name}.lr_batch = {b}", schedule::scaled_lr(lr, batch, lr_batch)),
        None => format!("{name}.lr = {lr}"),
    };
    format!("training diverged; the usual cause is a learning rate too high for this run ({lr}): try a lower one")
}

/// One epoch of training with a progress bar and a log line; its numbers for the run's log. Stops with an error on a
/// non-finite or exploding loss or gradient (checked every 10 steps, when the loss is read
/// anyway), on Ctrl-C, and on non-finite or exploding weights or BatchNorm statistics
/// (checked at the end of the epoch, before any checkpoint is written).
fn fit_epoch(run: &mut StageRun, epoch: usize, ckpt: &Path) -> Result<serde_json::Value> {
    let (stage, epochs, nb, lr) = (run.stage, run.epochs, run.batches_per_epoch(), run.lr(epoch));
    let device = run.session.rt.device;
    let hint = divergence_hint(run);
    let kept = match stage {
        Stage::Two => "stage 1's checkpoint and results are kept (run stage 2 again with --stages two)".to_string(),
        Stage::One if ckpt.exists() => format!("the last good checkpoint, {}, is kept (continue with --resume)", ckpt.display()),
        Stage::One => "there is no checkpoint yet (no epoch had ended)".to_string(),
    };
    let bar = progress(run.session.verbose, nb as u64, format!("{stage} epoch {}/{epochs}", epoch + 1));
    let t0 = Instant::now();
    let (mut seen, mut loss_sum) = (0i64, 0f64);
    let zero = || tch::Tensor::zeros([], (Kind::Float, device));
    let (mut pending, mut grad_max) = (zero(), zero());
    let result = run.run_epoch(epoch, |s: Step| {
        pending += s.loss.to_kind(Kind::Float);
        grad_max = grad_max.maximum(&s.grad_norm.to_kind(Kind::Float));
        seen += s.images;
        if crate::util::interrupted() {
            bail!("interrupted (Ctrl-C) in {stage}, epoch {} of {epochs}, step {}; {kept}", epoch + 1, s.index + 1);
        }
        // Reading the loss waits for the device: do it every few steps, not each one.
        if (s.index + 1) % 10 == 0 || s.index + 1 == nb {
            let (v, g) = (pending.double_value(&[]), grad_max.double_value(&[]));
            let at = format!("{stage}, epoch {} of {epochs}, near step {}", epoch + 1, s.index + 1);
            let steps = (s.index % 10 + 1) as f64;
            if !v.is_finite() || v / steps > EXPLODED_LOSS {
                bail!("the loss became {} in {at} ({hint}); {kept}", if v.is_finite() { format!("{:.3e}", v / steps) } else { v.to_string() });
            }
            if !g.is_finite() {
                bail!("the gradient became {g} in {at} ({hint}); {kept}");
            }
            loss_sum += v;
            (pending, grad_max) = (zero(), zero());
            let ips = seen as f64 / t0.elapsed().as_secs_f64();
            bar.set_message(format!("loss {:.4} {ips:.0} img/s", loss_sum / (s.index + 1) as f64));
        }
        bar.inc(1);
        Ok(true)
    });
    // Stage 2 leaves the backbone's statistics as they are.
    let result = result.and_then(|_| if stage == Stage::One { run.session.average_running_stats() } else { Ok(()) });
    let result = result.and_then(|_| check_model(run, &format!("{stage}, after epoch {} of {epochs}", epoch + 1), &hint, &kept));
    if let Err(err) = result {
        bar.abandon();
        return Err(err);
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let dist = &run.session.dist;
    let exchange = dist.take_exchange_time();
    let workers = match dist.world {
        1 => String::new(),
        w => format!(" ({w} workers; all-reduce {exchange:.1} s, {:.1}%)", 100.0 * exchange / secs),
    };
    let (loss, ips) = (loss_sum / nb.max(1) as f64, (seen * dist.world as i64) as f64 / secs);
    run.session.log(format!("{stage} epoch {:>3}/{epochs}  loss {loss:.4}  lr {lr:.5}  {ips:.0} img/s{workers}  {secs:.1} s", epoch + 1));
    let mut line = serde_json::json!({
        "stage": stage.number(),
        "epoch": epoch + 1,
        "epochs": epochs,
        "loss": loss,
        "lr": lr,
        "images_per_s": ips,
        "seconds": secs,
        "time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        "workers": dist.world,
        "all_reduce_seconds": exchange,
    });
    // A scheduled loss parameter's value this epoch (noise_mul, std, epsilon).
    for (name, v) in run.loss.scheduled(epoch, epochs) {
        line[name] = v.into();
    }
    // GCL's cloud per class this epoch (and the adaptive rule's measurements).
    for (name, v) in run.cloud.as_ref().map(|c| c.record()).unwrap_or_default() {
        line[name] = v;
    }
    Ok(line)
}

/// Every weight and BatchNorm statistic finite and not exploding; else an error naming the
/// first variable that is not.
fn check_model(run: &StageRun, at: &str, hint: &str, kept: &str) -> Result<()> {
    let mut vars: Vec<(String, tch::Tensor)> = run.session.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in vars {
        let top = t.abs().max().double_value(&[]);
        if !top.is_finite() || top > EXPLODED_VALUE {
            let what = if name.contains("running_") { "BatchNorm statistic" } else { "weight" };
            let state = if top.is_finite() { format!("values up to {top:.3e}") } else { format!("{top} values") };
            bail!("{what} `{name}` holds {state} in {at} ({hint}); it was not saved, and {kept}");
        }
    }
    Ok(())
}

fn progress(verbose: bool, len: u64, prefix: String) -> ProgressBar {
    if !verbose {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_prefix(prefix);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})").expect("template").progress_chars("=> "),
    );
    bar
}
