//! The two training stages, their optimiser, schedules and checkpoints.
//!
//! Stage 1 trains backbone and classifier together (GCL-E on a cosine classifier, or
//! cross-entropy on a linear one). Stage 2 freezes the backbone, BatchNorm statistics
//! included, and re-trains only the cosine classifier with class-balanced re-sampling
//! and the focal form of GCL-E.
pub mod checkpoint;
pub mod optim;
pub mod schedule;

use crate::config::{Config, Stage2Method};
use crate::data::augment::{Augment, Normalize};
use crate::data::loader::{batches_per_epoch, epoch_rng, Batch, EpochPlan};
use crate::data::sampler::Sampler;
use crate::data::{split, Dataset, ImageSet};
use crate::eval::report::Results;
use crate::eval::{evaluate, Accuracy};
use crate::loss::{margin, Criterion, LossConfig};
use crate::model::Classifier;
use crate::precision::AutocastGuard;
use anyhow::{bail, Context, Result};
use checkpoint::Checkpoint;
use indicatif::{ProgressBar, ProgressStyle};
use optim::Sgd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// The long-tailed training set and the balanced test set, ready to train on.
pub struct Prepared {
    pub train: ImageSet,
    pub test: ImageSet,
    /// Indices of `train` in the original training file.
    pub indices: Vec<i64>,
    pub counts: Vec<usize>,
    pub norm: Normalize,
    /// `train`'s pixels on the host, which every epoch's batches are cut from.
    pub pixels: Arc<Vec<u8>>,
    pub geometry: crate::data::augment::Geometry,
}

pub fn prepare(cfg: &Config, data: Dataset) -> Result<Prepared> {
    let d = &cfg.data;
    let indices = split::longtail_indices(&data.train.labels, data.train.num_classes, d.ratio, d.profile, &d.split)?;
    let train = data.train.subset(&indices);
    let counts = train.counts();
    if let Some(empty) = counts.iter().position(|&n| n == 0) {
        bail!("the long-tailed split leaves class {empty} with no training image");
    }
    let norm = Normalize::fit(&train.images);
    let (pixels, geometry) = crate::data::loader::host_pixels(&train.images);
    Ok(Prepared { train, test: data.test, indices, counts, norm, pixels, geometry })
}

/// Which stages `gcl train` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stages {
    Both,
    /// Stage 1 only.
    One,
    /// Stage 2 only, from a stage-1 checkpoint.
    Two,
}

pub struct TrainOptions {
    pub out: PathBuf,
    /// Continue stage 1 from OUT/stage1.safetensors when it is there.
    pub resume: bool,
    pub stages: Stages,
    /// Stage 2 starts from this stage-1 checkpoint (default OUT/stage1.safetensors).
    pub stage1_checkpoint: Option<PathBuf>,
    /// Log lines on stderr (progress bars show only on a terminal).
    pub verbose: bool,
}

/// The model and everything a stage needs around it.
pub struct Session<'a> {
    pub cfg: &'a Config,
    pub data: &'a Prepared,
    pub device: Device,
    pub vs: nn::VarStore,
    pub model: Classifier,
    pub verbose: bool,
    /// The frozen backbone with BatchNorm folded in, while stage 2 trains.
    frozen: Option<crate::model::FrozenResNet>,
    /// Channels-last images and convolution weights (the CPU's layout).
    channels_last: bool,
}

static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl<'a> Session<'a> {
    pub fn new(cfg: &'a Config, data: &'a Prepared, device: Device, verbose: bool) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        // Initial weights come from libtorch's one global generator: hold it while seeding
        // and drawing, so that runs in other threads cannot interleave their draws.
        let mut model = {
            let _lock = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(cfg.run.seed as i64);
            Classifier::new(&vs.root(), cfg.model.depth, data.train.channels(), data.counts.len() as i64, cfg.stage1.loss.head())?
        };
        let channels_last = cfg.run.channels_last && device == Device::Cpu;
        model.backbone.fused = cfg.run.fused && channels_last;
        model.backbone.winograd = cfg.run.winograd && device == Device::Cpu;
        if channels_last {
            let mut weights: Vec<Tensor> = vs.variables().into_values().collect();
            crate::precision::params_channels_last(&mut weights);
        }
        Ok(Self { cfg, data, device, vs, model, verbose, frozen: None, channels_last })
    }

    /// SGD over every trainable variable (stage 1).
    pub fn stage1_optimizer(&self) -> Sgd {
        let c = &self.cfg.stage1;
        Sgd::new(self.params(""), c.momentum, c.weight_decay)
    }

    /// Freezes the backbone (no gradients; BatchNorm runs on its stored statistics in
    /// stage 2) and returns SGD over the classifier alone.
    pub fn freeze_backbone(&mut self) -> Sgd {
        for (_, p) in self.params("backbone.") {
            let _ = p.set_requires_grad(false);
        }
        self.frozen = Some(self.model.backbone.fold());
        let c = &self.cfg.stage2;
        Sgd::new(self.params("head."), c.momentum, c.weight_decay)
    }

    fn params(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().filter(|(n, t)| n.starts_with(prefix) && t.requires_grad()).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn evaluate(&self) -> Accuracy {
        let r = &self.cfg.run;
        let _autocast = AutocastGuard::new(r.precision, self.device);
        let posthoc = r.posthoc_tau.map(|tau| crate::eval::metrics::PostHoc {
            log_prior: margin::log_prior(&self.data.counts, self.device),
            tau,
            scale: self.cfg.stage1.loss.logit_scale(),
        });
        evaluate(
            &self.model,
            &self.data.test.images,
            &self.data.test.labels,
            self.data.norm,
            &self.data.counts,
            r.eval_batch_for(self.device) as i64,
            self.device,
            (r.many_above, r.few_below),
            posthoc.as_ref(),
        )
    }

    fn checkpoint(&self, stage: i64, epochs_done: usize, opt: &Sgd) -> Checkpoint {
        let mut ck = Checkpoint::new();
        ck.put_model(&self.vs);
        for (name, buf) in opt.named_buffers() {
            ck.put(&format!("opt.{name}"), &buf);
        }
        ck.put_i64("meta.stage", &[stage]);
        ck.put_i64("meta.epochs_done", &[epochs_done as i64]);
        ck.put_i64("meta.train_counts", &self.data.counts.iter().map(|&n| n as i64).collect::<Vec<_>>());
        ck.put_i64("meta.depth", &[self.cfg.model.depth as i64]);
        ck.put_f64("meta.norm", &[self.data.norm.mean, self.data.norm.std]);
        ck
    }

    /// Loads model weights from a checkpoint after checking it belongs to this split.
    fn restore(&mut self, path: &Path, opt: Option<&mut Sgd>) -> Result<(Checkpoint, usize)> {
        let ck = Checkpoint::load(path)?;
        let counts: Vec<usize> = ck.get_i64("meta.train_counts", path)?.into_iter().map(|n| n as usize).collect();
        if counts != self.data.counts {
            bail!(
                "checkpoint {} was trained on a split with class counts {counts:?}, this run's split has {:?}",
                path.display(),
                self.data.counts
            );
        }
        ck.restore_model(&mut self.vs, path)?;
        if let Some(opt) = opt {
            for (name, t) in ck.tensors.iter().filter_map(|(n, t)| n.strip_prefix("opt.").map(|n| (n, t))) {
                if !opt.set_buffer(name, t) {
                    bail!("checkpoint {}: optimiser state for unknown parameter `{name}`", path.display());
                }
            }
        }
        let done = ck.get_i64("meta.epochs_done", path)?[0] as usize;
        Ok((ck, done))
    }

    pub fn plan(&self, aug: Augment, sampler: Sampler, batch_size: usize, loss: &LossConfig) -> EpochPlan {
        EpochPlan {
            pixels: self.data.pixels.clone(),
            geometry: self.data.geometry,
            label_list: self.data.train.labels.clone(),
            counts: self.data.counts.clone(),
            norm: self.data.norm,
            aug,
            sampler,
            batch_size,
            device: self.device,
            channels_last: self.channels_last,
            noise_classes: loss.stochastic().then_some(self.data.counts.len() as i64),
        }
    }

    /// Stage 1: backbone and classifier, from scratch or resumed from `ckpt`.
    pub fn stage1(&mut self, ckpt: &Path, resume: bool) -> Result<()> {
        let c = &self.cfg.stage1;
        let mut opt = self.stage1_optimizer();
        let mut start = 0;
        if resume && ckpt.exists() {
            let (_, done) = self.restore(ckpt, Some(&mut opt))?;
            start = done.min(c.epochs);
            self.log(format!("stage 1: resuming from {} after epoch {start}/{}", ckpt.display(), c.epochs));
        }
        let plan = self.plan(c.augment(), c.sampler, c.batch_size, &c.loss);
        for epoch in start..c.epochs {
            let lr = schedule::stage1_lr(c.lr, epoch, c.epochs, c.warmup_fraction, &c.decay_at);
            let crit = c.loss.build(&self.data.counts, self.device, epoch, c.epochs);
            self.run_epoch(1, epoch, c.epochs, lr, &plan, &mut opt, crit.as_ref(), ckpt, true)?;
            self.checkpoint(1, epoch + 1, &opt).save(ckpt)?;
        }
        Ok(())
    }

    /// Stage 2: the backbone frozen (BatchNorm statistics too), only the classifier
    /// changed: re-trained from its stage-1 weights (GCL), re-initialised and re-trained
    /// (cRT), or tau-normalised. The stage-1 model comes from checkpoint `from`.
    pub fn stage2(&mut self, from: &Path, ckpt: &Path) -> Result<()> {
        let (ck, _) = self.restore(from, None)?;
        if ck.get_i64("meta.stage", from)?[0] != 1 {
            bail!("{} is not a stage-1 checkpoint", from.display());
        }
        let mut opt = self.freeze_backbone();
        let c = &self.cfg.stage2;
        match c.method {
            Stage2Method::None => return Ok(()),
            Stage2Method::TauNorm { tau } => {
                self.model.head.tau_normalize(tau)?;
                self.log(format!("stage 2: tau-normalised the classifier (tau = {tau})"));
                return Checkpoint::save(&self.checkpoint(2, 0, &Sgd::new(vec![], 0.0, 0.0)), ckpt);
            }
            Stage2Method::Crt => self.model.head.reset(),
            Stage2Method::Retrain { .. } => {}
        }
        let loss = c.method.training_loss().expect("a training stage-2 method");
        let plan = self.plan(c.augment(), c.sampler, c.batch_size, &loss);
        for epoch in 0..c.epochs {
            let lr = schedule::cosine_lr(c.lr, epoch, c.epochs);
            let crit = loss.build(&self.data.counts, self.device, epoch, c.epochs);
            self.run_epoch(2, epoch, c.epochs, lr, &plan, &mut opt, crit.as_ref(), ckpt, false)?;
        }
        self.checkpoint(2, c.epochs, &opt).save(ckpt)?;
        Ok(())
    }

    /// One optimiser step on `batch`; returns the (detached) loss.
    pub fn train_step(&self, batch: &Batch, crit: &dyn Criterion, opt: &mut Sgd, lr: f64, train_backbone: bool) -> Tensor {
        let loss = self.step_loss(batch, crit, train_backbone);
        opt.backward_step(&loss, lr);
        loss.detach()
    }

    fn step_loss(&self, batch: &Batch, crit: &dyn Criterion, train_backbone: bool) -> Tensor {
        let _autocast = AutocastGuard::new(self.cfg.run.precision, self.device);
        let logits = if train_backbone {
            self.model.forward(&batch.x, true)
        } else {
            let feats = match &self.frozen {
                Some(f) => f.features(&batch.x),
                None => tch::no_grad(|| self.model.backbone.features(&batch.x, false)),
            };
            self.model.head.forward(&feats)
        };
        let noise = |i: usize| batch.noise.get(i);
        match &batch.mix {
            Some((lam, y2)) => crit.loss(&logits, &batch.y, noise(0)) * *lam + crit.loss(&logits, y2, noise(1)) * (1.0 - lam),
            None => crit.loss(&logits, &batch.y, noise(0)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_epoch(
        &self,
        stage: u64,
        epoch: usize,
        epochs: usize,
        lr: f64,
        plan: &EpochPlan,
        opt: &mut Sgd,
        crit: &dyn Criterion,
        ckpt: &Path,
        train_backbone: bool,
    ) -> Result<()> {
        let seed = self.cfg.run.seed;
        let nb = batches_per_epoch(plan.label_list.len(), plan.batch_size);
        let batches = plan.epoch(epoch_rng(seed, stage, epoch as u64), self.cfg.run.prefetch_for(self.device));
        let bar = self.progress(nb as u64, format!("stage {stage} epoch {}/{epochs}", epoch + 1));
        let t0 = Instant::now();
        let (mut seen, mut loss_sum, mut pending) = (0i64, 0f64, Tensor::zeros([], (Kind::Float, self.device)));
        for (step, batch) in batches.enumerate() {
            let loss = self.train_step(&batch, crit, opt, lr, train_backbone);
            pending += loss.to_kind(Kind::Float);
            seen += batch.len();
            // Reading the loss waits for the device: do it every few steps, not each one.
            if (step + 1) % 10 == 0 || step + 1 == nb {
                let v = pending.double_value(&[]);
                if !v.is_finite() {
                    bar.abandon();
                    bail!(
                        "stage {stage}: the loss became {v} in epoch {} near step {} (training diverged; try a lower lr). \
                         The last good checkpoint, if any, is kept at {}",
                        epoch + 1,
                        step + 1,
                        ckpt.display()
                    );
                }
                loss_sum += v;
                pending = Tensor::zeros([], (Kind::Float, self.device));
                let ips = seen as f64 / t0.elapsed().as_secs_f64();
                bar.set_message(format!("loss {:.4} {ips:.0} img/s", loss_sum / (step + 1) as f64));
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let secs = t0.elapsed().as_secs_f64();
        self.log(format!(
            "stage {stage} epoch {:>3}/{epochs}  loss {:.4}  lr {lr:.5}  {:.0} img/s  {secs:.1} s",
            epoch + 1,
            loss_sum / nb.max(1) as f64,
            seen as f64 / secs
        ));
        Ok(())
    }

    fn progress(&self, len: u64, prefix: String) -> ProgressBar {
        if !self.verbose {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len).with_prefix(prefix);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
                .expect("template")
                .progress_chars("=> "),
        );
        bar
    }

    fn log(&self, line: String) {
        if self.verbose {
            eprintln!("{line}");
        }
    }
}

/// Trains the stages asked for and writes OUT/results.json; returns the results.
pub fn train(cfg: &Config, data: &Prepared, opts: &TrainOptions) -> Result<Results> {
    cfg.validate()?;
    if cfg.run.threads > 0 {
        tch::set_num_threads(cfg.run.threads as i32);
    }
    let device = crate::device::resolve(&cfg.run.device)?;
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

    let s1_ckpt = opts.out.join("stage1.safetensors");
    let mut results = Results {
        stage1: None,
        stage2: None,
        train_counts: data.counts.clone(),
        config: serde_json::to_value(cfg)?,
        seconds: Default::default(),
    };
    let mut session = Session::new(cfg, data, device, opts.verbose)?;
    session.log(format!(
        "gcl: {} train images in {} classes (counts {:?}), {} test images, device {:?}",
        data.train.len(),
        data.counts.len(),
        data.counts,
        data.test.len(),
        device
    ));
    if opts.stages != Stages::Two {
        let t = Instant::now();
        session.stage1(&s1_ckpt, opts.resume)?;
        results.seconds.stage1 = Some(t.elapsed().as_secs_f64());
        results.stage1 = Some(session.evaluate());
        session.log(format!("stage 1: top-1 {:.2}%", 100.0 * results.stage1.as_ref().unwrap().top1));
    }
    let trains = cfg.stage2.epochs > 0 || matches!(cfg.stage2.method, Stage2Method::TauNorm { .. });
    let run_two = opts.stages != Stages::One && cfg.stage2.method != Stage2Method::None && trains;
    if opts.stages == Stages::Two && !run_two {
        bail!("--stages two: this configuration has no stage 2 (stage2.method is none or stage2.epochs is 0)");
    }
    if run_two {
        let from = opts.stage1_checkpoint.clone().unwrap_or(s1_ckpt);
        let mut s2 = Session::new(cfg, data, device, opts.verbose)?;
        let t = Instant::now();
        s2.stage2(&from, &opts.out.join("stage2.safetensors"))?;
        results.seconds.stage2 = Some(t.elapsed().as_secs_f64());
        results.stage2 = Some(s2.evaluate());
        s2.log(format!("stage 2: top-1 {:.2}%", 100.0 * results.stage2.as_ref().unwrap().top1));
    }
    crate::util::write_atomic(&opts.out.join("results.json"), serde_json::to_string_pretty(&results)?.as_bytes())?;
    Ok(results)
}
