//! The two training stages: what `gcl train` runs.
//!
//! Stage 1 trains backbone and classifier together (GCL-E on a cosine classifier, or
//! cross-entropy on a linear one). Stage 2 freezes the backbone, BatchNorm statistics
//! included, and re-trains only the classifier (GCL: the cosine classifier from its stage-1
//! weights, with class-balanced re-sampling and the focal form of GCL-E).
pub mod checkpoint;
pub mod optim;
pub mod schedule;
mod session;
mod stage;

pub use session::Session;
pub use stage::{step_seed, StageRun};

use crate::config::{Config, Stage2Method};
use crate::data::{split, Prepared};
use crate::eval::report::Results;
use crate::runtime::Runtime;
use anyhow::{bail, Context, Result};
use checkpoint::{Checkpoint, Meta};
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
    /// Continue stage 1 from OUT/stage1.safetensors.
    pub resume: bool,
    /// The stages to run, in order.
    pub stages: Vec<Stage>,
    /// Stage 2 starts from this stage-1 checkpoint (default OUT/stage1.safetensors).
    pub stage1_checkpoint: Option<PathBuf>,
    /// Log lines on stderr (progress bars show only on a terminal).
    pub verbose: bool,
}

/// Whether these settings have a stage 2 to run.
pub fn has_stage2(cfg: &Config) -> bool {
    let trains = cfg.stage2.epochs > 0 || matches!(cfg.stage2.method, Stage2Method::TauNorm { .. });
    cfg.stage2.method != Stage2Method::None && trains
}

/// `gcl train`: reads the data, trains, prints the results table.
pub fn run_command(cfg: &Config, opts: &TrainOptions) -> Result<()> {
    let data = cfg.data.prepare()?;
    let res = train(cfg, &data, opts)?;
    print!("{}", crate::eval::report::table(&res, cfg.run.many_above, cfg.run.few_below));
    println!("\nresults: {}", opts.out.join("results.json").display());
    Ok(())
}

/// Trains the stages asked for and writes OUT/results.json (after each stage); returns the results.
pub fn train(cfg: &Config, data: &Prepared, opts: &TrainOptions) -> Result<Results> {
    cfg.validate()?;
    let rt = Runtime::resolve(&cfg.run)?;
    let run_two = opts.stages.contains(&Stage::Two) && has_stage2(cfg);
    if opts.stages == [Stage::Two] && !run_two {
        bail!("--stages two: this configuration has no stage 2 (stage2.method is none or stage2.epochs is 0)");
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create output folder {}", opts.out.display()))?;
    let saved = opts.out.join("config.toml");
    if opts.resume && saved.exists() {
        let before = Config::default().merge_file(&saved)?;
        if &before != cfg {
            bail!(
                "--resume: the settings differ from those saved in {} by the run being resumed; \
                 resume with the same settings, or use another --out",
                saved.display()
            );
        }
    }
    crate::util::write_atomic(&saved, cfg.to_toml().as_bytes())?;
    split::write_index_file(&opts.out.join("split.txt"), &data.indices)?;

    let mut results = Results::new(serde_json::to_value(cfg)?, data);
    let write_results = |r: &Results| crate::util::write_atomic(&opts.out.join("results.json"), serde_json::to_string_pretty(r)?.as_bytes());
    let s1_ckpt = opts.out.join("stage1.safetensors");
    if opts.verbose {
        eprintln!(
            "gcl: {} train images in {} classes (counts {:?}), {} test images; {}",
            data.train.len(),
            data.counts.len(),
            data.counts,
            data.test.len(),
            rt.describe()
        );
    }
    if opts.stages.contains(&Stage::One) {
        let mut session = Session::new(cfg, data, rt, opts.verbose)?;
        let t = Instant::now();
        stage1(&mut session, &s1_ckpt, opts.resume)?;
        results.seconds.stage1 = Some(t.elapsed().as_secs_f64());
        let acc = session.evaluate()?;
        session.log(format!("stage 1: top-1 {:.2}%", 100.0 * acc.top1));
        results.stage1 = Some(acc);
        write_results(&results)?;
    }
    if run_two {
        let from = opts.stage1_checkpoint.clone().unwrap_or(s1_ckpt);
        let mut session = Session::new(cfg, data, rt, opts.verbose)?;
        let t = Instant::now();
        stage2(&mut session, &from, &opts.out.join("stage2.safetensors"))?;
        results.seconds.stage2 = Some(t.elapsed().as_secs_f64());
        let acc = session.evaluate()?;
        session.log(format!("stage 2: top-1 {:.2}%", 100.0 * acc.top1));
        results.stage2 = Some(acc);
        write_results(&results)?;
    }
    Ok(results)
}

/// What a checkpoint of `session` records, after `epochs_done` of `epochs_total` of `stage`.
fn session_meta(s: &Session, stage: Stage, epochs_done: usize, epochs_total: Option<usize>) -> Meta {
    Meta {
        stage,
        epochs_done,
        epochs_total,
        train_counts: s.data.counts.clone(),
        arch: s.model.backbone.arch(),
        head: s.model.head.kind(),
        norm: s.data.norm,
    }
}

fn meta(run: &StageRun, epochs_done: usize) -> Meta {
    session_meta(run.session, run.stage, epochs_done, Some(run.epochs))
}

/// Stage 1: backbone and classifier, from scratch or resumed from `ckpt`.
fn stage1(session: &mut Session, ckpt: &Path, resume: bool) -> Result<()> {
    let mut run = StageRun::new(session, Stage::One)?;
    let mut start = 0;
    if resume && ckpt.exists() {
        let want = meta(&run, 0);
        let got = Checkpoint::load(ckpt)?.restore_run(ckpt, &want, &mut run.session.vs, Some(&mut run.opt))?;
        start = got.epochs_done.min(run.epochs);
        run.session.log(format!("stage 1: resuming from {} after epoch {start}/{}", ckpt.display(), run.epochs));
    }
    for epoch in start..run.epochs {
        fit_epoch(&mut run, epoch, ckpt)?;
        Checkpoint::of_run(&run.session.vs, &run.opt, &meta(&run, epoch + 1)).save(ckpt)?;
    }
    Ok(())
}

/// Stage 2: the backbone frozen (BatchNorm statistics too), only the classifier changed:
/// re-trained from its stage-1 weights (GCL), re-initialised and re-trained (cRT), or
/// tau-normalised. The stage-1 model comes from checkpoint `from`.
fn stage2(session: &mut Session, from: &Path, ckpt: &Path) -> Result<()> {
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
    let method = session.cfg.stage2.method;
    let mut run = StageRun::new(session, Stage::Two)?;
    match method {
        Stage2Method::None => return Ok(()),
        Stage2Method::TauNorm { tau } => {
            run.session.model.head.tau_normalize(tau)?;
            run.session.log(format!("stage 2: tau-normalised the classifier (tau = {tau})"));
            return Checkpoint::of_run(&run.session.vs, &run.opt, &meta(&run, 0)).save(ckpt);
        }
        Stage2Method::Crt | Stage2Method::Retrain { .. } => run.prepare_head(),
    }
    for epoch in 0..run.epochs {
        fit_epoch(&mut run, epoch, ckpt)?;
    }
    Checkpoint::of_run(&run.session.vs, &run.opt, &meta(&run, run.epochs)).save(ckpt)
}

/// One epoch of training with a progress bar and a log line; stops on a non-finite loss.
fn fit_epoch(run: &mut StageRun, epoch: usize, ckpt: &Path) -> Result<()> {
    let (stage, epochs, nb, lr) = (run.stage, run.epochs, run.batches_per_epoch(), run.lr(epoch));
    let device = run.session.rt.device;
    let bar = progress(run.session.verbose, nb as u64, format!("{stage} epoch {}/{epochs}", epoch + 1));
    let t0 = Instant::now();
    let (mut seen, mut loss_sum) = (0i64, 0f64);
    let mut pending = tch::Tensor::zeros([], (Kind::Float, device));
    let result = run.run_epoch(epoch, |step, images, loss| {
        pending += loss.to_kind(Kind::Float);
        seen += images;
        // Reading the loss waits for the device: do it every few steps, not each one.
        if (step + 1) % 10 == 0 || step + 1 == nb {
            let v = pending.double_value(&[]);
            if !v.is_finite() {
                bail!(
                    "{stage}: the loss became {v} in epoch {} near step {} (training diverged; try a lower lr). \
                     The last good checkpoint, if any, is kept at {}",
                    epoch + 1,
                    step + 1,
                    ckpt.display()
                );
            }
            loss_sum += v;
            pending = tch::Tensor::zeros([], (Kind::Float, device));
            let ips = seen as f64 / t0.elapsed().as_secs_f64();
            bar.set_message(format!("loss {:.4} {ips:.0} img/s", loss_sum / (step + 1) as f64));
        }
        bar.inc(1);
        Ok(true)
    });
    if result.is_err() {
        bar.abandon();
        return result;
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    run.session.log(format!(
        "{stage} epoch {:>3}/{epochs}  loss {:.4}  lr {lr:.5}  {:.0} img/s  {secs:.1} s",
        epoch + 1,
        loss_sum / nb.max(1) as f64,
        seen as f64 / secs
    ));
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
