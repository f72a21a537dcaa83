//! One stage's training: its optimiser, loss, learning-rate schedule and batches, and the one
//! epoch loop that `gcl train` and `gcl bench` both run.
use super::optim::Sgd;
use super::schedule;
use super::session::Session;
use super::Stage;
use crate::config::{Schedule, Stage2Method};
use crate::data::loader::{batches_per_epoch, epoch_rng, Batch, EpochPlan, Shard};
use crate::kernels::autocast::AutocastGuard;
use crate::eval::metrics::ShotGroup;
use crate::loss::{Adaptive, Criterion, Diversity, LossConfig};
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
    /// GCL's cloud per class (`group_scale`, `adaptive`); None when the loss has neither.
    pub cloud: Option<CloudScaling>,
    /// Stage 2's LWS: the per-class logit scales f_j that train in place of the classifier.
    lws: Option<Tensor>,
}

/// GCL's per-class cloud factors: each class's shot-group factor times its adaptive weight
/// (`loss::Adaptive`), which is updated after every epoch from that epoch's per-class
/// training accuracy.
pub struct CloudScaling {
    group: Vec<f64>,
    adaptive: Option<Adaptive>,
    /// The adaptive weights w_j (1 before the first epoch).
    pub weights: Vec<f64>,
    /// This epoch's hits and images per class (on the device).
    tally: Option<(Tensor, Tensor)>,
    /// The last finished epoch: the factors it trained with and its per-class training accuracy.
    last: Option<(Vec<f64>, Vec<Option<f64>>)>,
}

impl CloudScaling {
    fn new(loss: &LossConfig, counts: &[usize], many_above: usize, few_below: usize) -> Option<Self> {
        let (group, adaptive) = loss.class_scaling();
        if group.is_none() && adaptive.is_none() {
            return None;
        }
        let g = group.unwrap_or_default();
        let group = counts
            .iter()
            .map(|&n| match ShotGroup::of(n, many_above, few_below) {
                ShotGroup::Many => g.many,
                ShotGroup::Medium => g.medium,
                ShotGroup::Few => g.few,
            })
            .collect();
        Some(CloudScaling { group, adaptive, weights: vec![1.0; counts.len()], tally: None, last: None })
    }

    pub fn is_adaptive(&self) -> bool {
        self.adaptive.is_some()
    }

    /// The factor of each class this epoch.
    pub fn factors(&self) -> Vec<f64> {
        self.group.iter().zip(&self.weights).map(|(g, w)| g * w).collect()
    }

    /// Counts a step's hits per class (adaptive rule only): argmax of the clean outputs
    /// against `label`.
    fn count(&mut self, outputs: &Tensor, label: &Tensor) {
        if self.adaptive.is_none() {
            return;
        }
        let c = self.group.len() as i64;
        let hit = outputs.argmax(1, false).eq_tensor(label).to_kind(tch::Kind::Float);
        let (hits, seen) = self.tally.get_or_insert_with(|| {
            let z = Tensor::zeros([c], (tch::Kind::Float, outputs.device()));
            (z.copy(), z)
        });
        let _ = hits.index_add_(0, label, &hit);
        let _ = seen.index_add_(0, label, &hit.ones_like());
    }

    /// After an epoch: the per-class accuracies (summed over the workers) update the weights.
    fn end_epoch(&mut self, dist: &crate::dist::Dist) -> Result<()> {
        let used = self.factors();
        let acc = match (self.adaptive, self.tally.take()) {
            (Some(rule), Some((hits, seen))) => {
                dist.sum(&[&hits, &seen])?;
                let (h, n) = (Vec::<f64>::try_from(hits.to_kind(tch::Kind::Double))?, Vec::<f64>::try_from(seen.to_kind(tch::Kind::Double))?);
                let acc: Vec<Option<f64>> = h.iter().zip(&n).map(|(h, n)| (*n > 0.0).then(|| h / n)).collect();
                self.weights = rule.update(&self.weights, &acc);
                acc
            }
            _ => Vec::new(),
        };
        self.last = Some((used, acc));
        Ok(())
    }

    /// The last epoch's numbers for its metrics.jsonl line: `cloud_scale` (the factors it
    /// trained with), and with the adaptive rule `train_class_accuracy` and
    /// `adaptive_weights` (after the update: what a resumed run starts from).
    pub fn record(&self) -> Vec<(&'static str, serde_json::Value)> {
        let Some((used, acc)) = &self.last else { return Vec::new() };
        let mut out = vec![("cloud_scale", serde_json::json!(used))];
        if self.adaptive.is_some() {
            out.push(("train_class_accuracy", serde_json::json!(acc)));
            out.push(("adaptive_weights", serde_json::json!(self.weights)));
        }
        out
    }
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
        let mut lws = None;
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
                let params = match c.method {
                    // LWS trains one scale per class and keeps the classifier.
                    Stage2Method::Lws => {
                        for (_, p) in session.params("head.") {
                            let _ = p.set_requires_grad(false);
                        }
                        let f = Tensor::ones([session.data.counts.len() as i64], (tch::Kind::Float, session.rt.device)).set_requires_grad(true);
                        lws = Some(f.shallow_clone());
                        vec![("head.lws_scale".to_string(), f)]
                    }
                    _ => session.params("head."),
                };
                let opt = Sgd::new(params, c.momentum, c.weight_decay);
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
        let cloud = CloudScaling::new(&loss, &session.data.counts, cfg.run.many_above, cfg.run.few_below);
        Ok(Self { session, stage, opt, loss, plan, epochs, frozen, diversity, cloud, lws })
    }

    /// Stage 2's heads before training: re-initialised for cRT, unchanged otherwise.
    pub fn prepare_head(&mut self) {
        if self.stage == Stage::Two && self.session.cfg.stage2.method == Stage2Method::Crt {
            self.session.model.heads.iter_mut().for_each(|h| h.reset());
        }
    }

    /// LWS's end: each class's scale f_j folded into its weights and bias (exactly the scaled
    /// logits), so the stage-2 model is an ordinary linear classifier.
    pub fn fold_lws(&mut self) -> Result<()> {
        let Some(f) = self.lws.take() else { return Ok(()) };
        let f = f.detach();
        for h in &mut self.session.model.heads {
            h.scale_classes(&f)?;
        }
        let scales = Vec::<f64>::try_from(f.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu))?;
        let (lo, hi) = scales.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
        self.session.log(format!("stage 2: learnt weight scales from {lo:.3} to {hi:.3}, folded into the classifier"));
        Ok(())
    }

    /// `check` on the model as it stands, LWS's scales folded in (and taken out again after):
    /// what the val set sees mid-training.
    pub fn with_lws_folded<T>(&mut self, check: impl FnOnce(&mut Session<'a>) -> Result<T>) -> Result<T> {
        let Some(f) = &self.lws else { return check(self.session) };
        let heads: Vec<(String, Tensor)> = self.session.vs.variables().into_iter().filter(|(n, _)| n.starts_with("head.")).collect();
        let saved: Vec<Tensor> = heads.iter().map(|(_, t)| t.detach().copy()).collect();
        let f = f.detach();
        for h in &mut self.session.model.heads {
            h.scale_classes(&f)?;
        }
        let out = check(self.session);
        tch::no_grad(|| {
            for ((_, t), s) in heads.iter().zip(&saved) {
                let _ = t.shallow_clone().copy_(s);
            }
        });
        out
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
        let seed = self.session.cfg.run.seed;
        let lr = self.lr(epoch);
        let crit = self.criterion(epoch);
        let batches = self.plan.epoch(epoch_rng(seed, self.stage.number(), epoch as u64));
        for (step, batch) in batches.enumerate() {
            let batch = batch?;
            crit.seed_step(self.plan.shard.seed(step_seed(seed, self.stage, epoch, step)));
            let (loss, outputs) = self.step_loss(&batch, crit.as_ref())?;
            if let Some(c) = &mut self.cloud {
                // Under mixup the larger part of the blend is the image's label.
                let label = match &batch.mix {
                    Some((lam, y2)) if *lam < 0.5 => y2,
                    _ => &batch.y,
                };
                c.count(&outputs, label);
            }
            let grad_norm = self.opt.backward_step(&loss, lr)?;
            if !each(Step { index: step, images: batch.len(), loss: &loss.detach(), grad_norm: &grad_norm })? {
                break;
            }
        }
        if let Some(c) = &mut self.cloud {
            c.end_epoch(&self.session.dist)?;
        }
        Ok(())
    }

    /// The loss of `epoch`: its schedules' values, GCL's cloud scaled per class.
    fn criterion(&self, epoch: usize) -> Box<dyn Criterion> {
        let scale = self.cloud.as_ref().map(CloudScaling::factors);
        self.loss.build(&self.session.data.counts, self.session.rt.device, epoch, self.epochs, scale.as_deref())
    }

    /// The flat gradient (`Sgd::flat_grad`) that rank `shard.rank` of `shard.world` workers
    /// computes at step `step` of `epoch`, before the workers average theirs: one process can
    /// so reproduce what data-parallel training does (tests/distributed.rs).
    pub fn shard_gradient(&mut self, epoch: usize, step: usize, shard: Shard) -> Result<Tensor> {
        let seed = self.session.cfg.run.seed;
        let crit = self.criterion(epoch);
        let plan = EpochPlan { source: self.plan.source.clone(), counts: self.plan.counts.clone(), shard, ..self.plan };
        let batch = plan.epoch(epoch_rng(seed, self.stage.number(), epoch as u64)).nth(step).context("no such step in the epoch")??;
        crit.seed_step(shard.seed(step_seed(seed, self.stage, epoch, step)));
        let (loss, _) = self.step_loss(&batch, crit.as_ref())?;
        self.opt.flat_grad(&loss)
    }

    /// The loss of one batch (mixup: the blend of the two targets' losses). With experts:
    /// the sum of each expert's loss (each with its own draw of GCL's noise: the criterion
    /// draws afresh at each call), plus, in stage 1, RIDE's diversity term. Also the first
    /// head's outputs, detached.
    fn step_loss(&self, batch: &Batch, crit: &dyn Criterion) -> Result<(Tensor, Tensor)> {
        let s = &self.session;
        let _autocast = AutocastGuard::new(s.rt.precision, s.rt.device)?;
        let features = match &self.frozen {
            None => s.model.backbone.features(&batch.x, true)?,
            Some(f) => f.features(&batch.x)?,
        };
        let mut outputs = s.model.expert_outputs(&features);
        if let Some(f) = &self.lws {
            outputs = outputs.iter().map(|o| o * f).collect();
        }
        let loss = crate::loss::sum(outputs.iter().map(|out| match &batch.mix {
            Some((lam, y2)) => crit.loss(out, &batch.y) * *lam + crit.loss(out, y2) * (1.0 - lam),
            None => crit.loss(out, &batch.y),
        }));
        let loss = match &self.diversity {
            Some((d, scale)) => loss + d.term(&outputs.iter().map(|o| o * *scale).collect::<Vec<_>>()),
            None => loss,
        };
        Ok((loss, outputs[0].detach()))
    }
}
