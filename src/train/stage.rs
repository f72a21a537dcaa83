//! One stage's training: its optimiser, loss, learning-rate schedule and batches, and the one
//! epoch loop that `gcl train` and `gcl bench` both run.
use super::optim::Sgd;
use super::schedule;
use super::session::Session;
use super::Stage;
use crate::config::{Schedule, Stage2Method};
use crate::data::loader::{batches_per_epoch, epoch_rng, Batch, EpochPlan, Shard};
use crate::kernels::autocast::AutocastGuard;
use crate::loss::{Criterion, Diversity, LossConfig};
use crate::model::FrozenBackbone;
use anyhow::{Context, Result};
use tch::Tensor;

pub struct StageRun<'s, 'a> {
    pub session: &'s mut Session<'a>,
    pub stage: Stage,
    pub opt: Sgd,
    pub loss: LossConfig,
    plan: EpochPlan,
    pub epochs: usize,
    /// Stage 2: the backbone's frozen (folded) form, which the head trains on.
    frozen: Option<Box<dyn FrozenBackbone>>,
    /// Stage 1 with experts: RIDE's diversity term, and the scale that turns the heads'
    /// outputs into logits for it.
    diversity: Option<(Diversity, f64)>,
}

/// What one training step hands to the epoch loop's caller.
pub struct Step<'a> {
    /// The step's index in its epoch.
    pub index: usize,
    pub images: i64,
    /// The loss, detached (not yet read from the device).
    pub loss: &'a Tensor,
    /// The gradient's L2 norm (not yet read from the device).
    pub grad_norm: &'a Tensor,
}

/// The seed of one step's random draws in the loss (GCL's noise), from (seed, stage, epoch, step).
pub fn step_seed(seed: u64, stage: Stage, epoch: usize, step: usize) -> u64 {
    let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    mix(mix(mix(mix(0x5EED, seed), stage.number()), epoch as u64), step as u64)
}

impl<'s, 'a> StageRun<'s, 'a> {
    /// Stage 1 trains the whole model. Stage 2 freezes the backbone (no gradients; BatchNorm
    /// on its stored statistics, folded into the convolutions) and trains the head alone with
    /// the stage-2 method's loss (a method that trains nothing is timed as cRT by `gcl bench`).
    pub fn new(session: &'s mut Session<'a>, stage: Stage) -> Result<Self> {
        let cfg = session.cfg;
        let (opt, loss, frozen, sampler, batch_size, aug, epochs) = match stage {
            Stage::One => {
                let c = &cfg.stage1;
                let opt = Sgd::new(session.params(""), c.momentum, c.weight_decay);
                (opt, c.loss, None, c.sampler, c.batch_size, c.augment(session.data.train_transform), c.epochs)
            }
            Stage::Two => {
                let c = &cfg.stage2;
                for (_, p) in session.params("backbone.") {
                    let _ = p.set_requires_grad(false);
                }
                let frozen = Some(session.model.backbone.freeze()?);
                let opt = Sgd::new(session.params("head."), c.momentum, c.weight_decay);
                let loss = c.method.training_loss().unwrap_or(LossConfig::Ce(Default::default()));
                (opt, loss, frozen, c.sampler, c.batch_size, c.augment(session.data.train_transform), c.epochs)
            }
        };
        let plan = EpochPlan {
            source: session.data.train.clone(),
            counts: session.data.counts.clone(),
            norm: session.data.norm,
            aug,
            sampler,
            batch_size,
            layout: session.layout(),
            workers: session.rt.loader(session.data.train.from_files()),
            shard: session.shard(),
        };
        let mut opt = opt;
        opt.dist = Some(session.dist.clone());
        let d = &cfg.stage1.diversity;
        let diversity = (stage == Stage::One && session.model.experts() > 1 && d.factor != 0.0)
            .then(|| (Diversity::new(d, &session.data.counts, session.rt.device), loss.logit_scale()));
        Ok(Self { session, stage, opt, loss, plan, epochs, frozen, diversity })
    }

    /// Stage 2's heads before training: re-initialised for cRT, unchanged otherwise.
    pub fn prepare_head(&mut self) {
        if self.stage == Stage::Two && self.session.cfg.stage2.method == Stage2Method::Crt {
            self.session.model.heads.iter_mut().for_each(|h| h.reset());
        }
    }

    /// The learning rate of `epoch`: stage 1 warm-up and step decay (or cosine), stage 2
    /// cosine; scaled to the batch size when `lr_batch` is set.
    pub fn lr(&self, epoch: usize) -> f64 {
        let cfg = self.session.cfg;
        match self.stage {
            Stage::One => {
                let c = &cfg.stage1;
                let base = schedule::scaled_lr(c.lr, self.global_batch(c.batch_size), c.lr_batch);
                match c.schedule {
                    Schedule::Step => schedule::stage1_lr(base, epoch, c.epochs, c.warmup_fraction, &c.decay_at),
                    Schedule::Cosine => schedule::stage1_cosine_lr(base, epoch, c.epochs, c.warmup_fraction),
                }
            }
            Stage::Two => {
                let c = &cfg.stage2;
                schedule::cosine_lr(schedule::scaled_lr(c.lr, self.global_batch(c.batch_size), c.lr_batch), epoch, c.epochs)
            }
        }
    }

    /// Images per step over all data-parallel workers (each takes `batch_size`).
    pub fn global_batch(&self, batch_size: usize) -> usize {
        batch_size * self.session.dist.world
    }

    pub fn batches_per_epoch(&self) -> usize {
        batches_per_epoch(self.plan.shard.len(self.plan.source.len()), self.plan.batch_size)
    }

    /// Runs the steps of `epoch`; after each, `each` sees its [`Step`] and may stop the epoch
    /// early by returning false.
    pub fn run_epoch(&mut self, epoch: usize, mut each: impl FnMut(Step) -> Result<bool>) -> Result<()> {
        let (seed, rt) = (self.session.cfg.run.seed, self.session.rt);
        let lr = self.lr(epoch);
        let crit = self.loss.build(&self.session.data.counts, rt.device, epoch, self.epochs);
        let batches = self.plan.epoch(epoch_rng(seed, self.stage.number(), epoch as u64));
        for (step, batch) in batches.enumerate() {
            let batch = batch?;
            crit.seed_step(self.plan.shard.seed(step_seed(seed, self.stage, epoch, step)));
            let loss = self.step_loss(&batch, crit.as_ref())?;
            let grad_norm = self.opt.backward_step(&loss, lr)?;
            if !each(Step { index: step, images: batch.len(), loss: &loss.detach(), grad_norm: &grad_norm })? {
                break;
            }
        }
        Ok(())
    }

    /// The flat gradient (`Sgd::flat_grad`) that rank `shard.rank` of `shard.world` workers
    /// computes at step `step` of `epoch`, before the workers average theirs: one process can
    /// so reproduce what data-parallel training does (tests/distributed.rs).
    pub fn shard_gradient(&mut self, epoch: usize, step: usize, shard: Shard) -> Result<Tensor> {
        let seed = self.session.cfg.run.seed;
        let crit = self.loss.build(&self.session.data.counts, self.session.rt.device, epoch, self.epochs);
        let plan = EpochPlan { source: self.plan.source.clone(), counts: self.plan.counts.clone(), shard, ..self.plan };
        let batch = plan.epoch(epoch_rng(seed, self.stage.number(), epoch as u64)).nth(step).context("no such step in the epoch")??;
        crit.seed_step(shard.seed(step_seed(seed, self.stage, epoch, step)));
        let loss = self.step_loss(&batch, crit.as_ref())?;
        self.opt.flat_grad(&loss)
    }

    /// The loss of one batch (mixup: the blend of the two targets' losses). With experts:
    /// the sum of each expert's loss (each with its own draw of GCL's noise: the criterion
    /// draws afresh at each call), plus, in stage 1, RIDE's diversity term.
    fn step_loss(&self, batch: &Batch, crit: &dyn Criterion) -> Result<Tensor> {
        let s = &self.session;
        let _autocast = AutocastGuard::new(s.rt.precision, s.rt.device)?;
        let features = match &self.frozen {
            None => s.model.backbone.features(&batch.x, true)?,
            Some(f) => f.features(&batch.x)?,
        };
        let outputs = s.model.expert_outputs(&features);
        let loss = crate::loss::sum(outputs.iter().map(|out| match &batch.mix {
            Some((lam, y2)) => crit.loss(out, &batch.y) * *lam + crit.loss(out, y2) * (1.0 - lam),
            None => crit.loss(out, &batch.y),
        }));
        Ok(match &self.diversity {
            Some((d, scale)) => loss + d.term(&outputs.iter().map(|o| o * *scale).collect::<Vec<_>>()),
            None => loss,
        })
    }
}
