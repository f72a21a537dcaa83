//! The model of a run and what it is trained and evaluated with.
use crate::config::Config;
use crate::data::loader::{Layout, Shard};
use crate::data::{Prepared, Source, Subset};
use crate::dist::Dist;
use std::sync::Arc;
use crate::eval::metrics::{accuracy_of, evaluate, predict_experts, EvalInput, PostHoc};
use crate::eval::Accuracy;
use crate::kernels::autocast::AutocastGuard;
use crate::kernels::layout::params_channels_last;
use crate::loss::margin;
use crate::model::Classifier;
use crate::runtime::Runtime;
use anyhow::{bail, Context, Result};
use tch::{nn, Tensor};

pub struct Session<'a> {
    pub cfg: &'a Config,
    pub data: &'a Prepared,
    pub rt: Runtime,
    pub vs: nn::VarStore,
    pub model: Classifier,
    pub verbose: bool,
    /// The data-parallel workers this process is one of (a single process by default).
    pub dist: Arc<Dist>,
    /// Where each epoch's numbers are recorded (the run folder's metrics.jsonl and
    /// TensorBoard events; None: nowhere, as in `gcl bench` and on workers other than rank 0).
    pub run_log: Option<Arc<super::log::RunLog>>,
}

static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl<'a> Session<'a> {
    /// A freshly initialised model (seeded by `run.seed`) on the runtime's device.
    pub fn new(cfg: &'a Config, data: &'a Prepared, rt: Runtime, verbose: bool) -> Result<Self> {
        let vs = nn::VarStore::new(rt.device);
        // Initial weights come from libtorch's one global generator: hold it while seeding
        // and drawing, so that runs in other threads cannot interleave their draws.
        let model = {
            let _lock = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(cfg.run.seed as i64);
            let (channels, classes) = (data.train.channels() as i64, data.counts.len() as i64);
            Classifier::new(&vs.root(), &cfg.model, channels, classes, cfg.stage1.loss.head(), rt.kernels)?
        };
        let mut model = model;
        crate::model::weights::freeze(&mut model, &cfg.model)?;
        if rt.channels_last {
            let mut weights: Vec<Tensor> = vs.variables().into_values().collect();
            params_channels_last(&mut weights)?;
        }
        Ok(Self { cfg, data, rt, vs, model, verbose, dist: Dist::single(), run_log: None })
    }

    /// The same session as one of the data-parallel workers `dist` (logging on rank 0 only).
    pub fn among(mut self, dist: Arc<Dist>) -> Self {
        self.verbose &= dist.is_writer();
        self.dist = dist;
        self
    }

    /// This process's part of each epoch.
    pub fn shard(&self) -> Shard {
        Shard { rank: self.dist.rank, world: self.dist.world }
    }

    /// Sets every weight and buffer to rank 0's (where training starts: from scratch, from
    /// pretrained weights or from a checkpoint, all workers then hold one model).
    pub fn sync_from_writer(&self) -> Result<()> {
        if !self.dist.is_distributed() {
            return Ok(());
        }
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        self.dist.broadcast_from_writer(&vars.into_iter().map(|(_, t)| t).collect::<Vec<_>>())
    }

    /// Replaces the BatchNorm running statistics by their mean over the workers (each
    /// worker's batches moved its own), so that all evaluate and save one model.
    pub fn average_running_stats(&self) -> Result<()> {
        if !self.dist.is_distributed() {
            return Ok(());
        }
        let mut stats: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(n, _)| n.contains("running_")).collect();
        stats.sort_by(|a, b| a.0.cmp(&b.0));
        self.dist.average(&stats.into_iter().map(|(_, t)| t).collect::<Vec<_>>())
    }

    /// How batches are laid out for this model.
    pub fn layout(&self) -> Layout {
        Layout { device: self.rt.device, channels_last: self.rt.channels_last }
    }

    /// The trainable variables whose names start with `prefix` (`backbone.`, `head.`, or
    /// all), sorted by name.
    pub fn params(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(n, t)| n.starts_with(prefix) && t.requires_grad()).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Top-1 of the current model on the test set (post-hoc adjusted when `run.posthoc_tau` is set).
    pub fn evaluate(&self) -> Result<Accuracy> {
        self.accuracy_on(&self.data.test)
    }

    /// Top-1 on the validation set, when the data has one (by the test's rule).
    pub fn evaluate_val(&self) -> Result<Option<Accuracy>> {
        self.data.val.as_ref().map(|v| self.accuracy_on(v)).transpose()
    }

    fn accuracy_on(&self, source: &Arc<dyn Source>) -> Result<Accuracy> {
        let r = &self.cfg.run;
        let _autocast = AutocastGuard::new(self.rt.precision, self.rt.device)?;
        let posthoc = r.posthoc_tau.map(|tau| PostHoc {
            log_prior: margin::log_prior(&self.data.counts, self.rt.device),
            tau,
            scale: self.cfg.stage1.loss.logit_scale(),
        });
        let input = self.eval_input(source.from_files());
        let shots = (r.many_above, r.few_below);
        if !self.dist.is_distributed() {
            return evaluate(&self.model, source, &self.data.counts, &input, shots, posthoc.as_ref());
        }
        // Each worker predicts every world-th sample; the predictions (the ensemble's, then
        // each expert's) are summed into one vector (as class + 1, 0 where another worker
        // predicts), so all hold the same.
        let (rank, world, n) = (self.dist.rank, self.dist.world, source.len());
        let mine: Vec<i64> = (rank..n).step_by(world).map(|i| i as i64).collect();
        let part: Arc<dyn Source> = Arc::new(Subset::new(source.clone(), &mine)?);
        let pred = predict_experts(&self.model, part, &input, posthoc.as_ref())?;
        let mut all = vec![0i64; n * pred.len()];
        for (k, p) in pred.iter().enumerate() {
            for (&i, p) in mine.iter().zip(p) {
                all[k * n + i as usize] = p + 1;
            }
        }
        // On the run's device: NCCL reduces CUDA tensors only.
        let all_t = Tensor::from_slice(&all).to_device(self.rt.device);
        self.dist.sum(&[&all_t])?;
        let all: Vec<i64> = Vec::<i64>::try_from(&all_t.to_device(tch::Device::Cpu))?.into_iter().map(|p| p - 1).collect();
        let pred: Vec<Vec<i64>> = all.chunks(n.max(1)).map(<[i64]>::to_vec).collect();
        Ok(accuracy_of(&pred, source.labels(), &self.data.counts, shots))
    }

    /// Sets the backbone to `model.pretrained` (where a training starts afresh; a checkpoint
    /// replaces every weight anyway).
    pub fn load_pretrained(&mut self) -> Result<()> {
        if let Some(l) = crate::model::weights::load_pretrained(&self.vs, &self.cfg.model)? {
            let fresh = if l.fresh > 0 { format!(", {} left fresh (model.reinit; the experts' own stages unless model.expert_width = 1)", l.fresh) } else { String::new() };
            self.log(format!("gcl: {} pretrained tensors from {}{fresh}", l.set, self.cfg.model.pretrained.as_ref().expect("loaded").display()));
        }
        Ok(())
    }

    /// `model.head_init = "class-means"`: each head's class weights from the mean features of
    /// the class's training images under the current backbone (the test transform); with
    /// `normalised`, of their L2-normalised features (stage 2's NCM).
    pub fn init_head_from_class_means(&mut self, normalised: bool) -> Result<()> {
        let t = std::time::Instant::now();
        let train = self.data.train.clone();
        let input = self.eval_input(train.from_files());
        let classes = self.data.counts.len() as i64;
        let experts = self.model.heads.len() as i64;
        let (mut sums, mut seen): (Option<Tensor>, Tensor) = (None, Tensor::zeros([classes], (tch::Kind::Float, tch::Device::Cpu)));
        crate::eval::metrics::forward_experts(&self.model, train.clone(), &input, None, |samples, features, _, _| {
            let f = features.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu);
            // NCM: each expert's part of the features normalised on its own.
            let f = if normalised { Tensor::cat(&f.chunk(experts, 1).iter().map(|p| crate::model::head::l2_normalize(p, 1)).collect::<Vec<_>>(), 1) } else { f };
            let y = Tensor::from_slice(&samples.iter().map(|&i| train.labels()[i]).collect::<Vec<i64>>());
            let s = sums.get_or_insert_with(|| Tensor::zeros([classes, f.size()[1]], (tch::Kind::Float, tch::Device::Cpu)));
            let _ = s.index_add_(0, &y, &f);
            let _ = seen.index_add_(0, &y, &Tensor::ones([y.size()[0]], (tch::Kind::Float, tch::Device::Cpu)));
            Ok(())
        })?;
        let sums = sums.context("model.head_init = \"class-means\": the training set has no readable images")?;
        let means = sums / seen.clamp_min(1.0).unsqueeze(1);
        // With experts, each head takes its own part of the features.
        let parts = means.chunk(experts, 1);
        let device = self.rt.device;
        for (h, m) in self.model.heads.iter_mut().zip(&parts) {
            h.set_class_weights(&m.to_device(device));
        }
        let what = if normalised { "stage 2: nearest class mean: the classifier is the mean normalised feature" } else { "gcl: classifier initialised from the class means" };
        self.log(format!("{what} of {} training images ({:.1} s)", train.len(), t.elapsed().as_secs_f64()));
        Ok(())
    }

    /// `model.head_init = "text"`: each class's weight vector from CLIP's text embedding of
    /// its prompts (the text tower of `model.pretrained`).
    pub fn init_head_from_text(&mut self) -> Result<()> {
        let t = std::time::Instant::now();
        let m = &self.cfg.model;
        let path = m.pretrained.as_deref().context(
            "model.head_init = \"text\" takes CLIP's text tower from model.pretrained, which is unset: give --pretrained FILE (a whole CLIP state dict), or another model.head_init",
        )?;
        let quick_gelu = m.vit().is_some_and(|s| s.quick_gelu);
        let tower = crate::model::clip_text::TextTower::load(path, m.text.heads, quick_gelu)?;
        // A relative class-name file not found so is looked for in the data's folder, as the lists are.
        let names_file = m.text.class_names.as_deref().map(|p| match &self.cfg.data.dir {
            Some(root) => crate::data::files::locate_list(root, p),
            None => p.to_path_buf(),
        });
        let names = crate::model::clip_text::class_names(names_file.as_deref(), self.data.train.class_names())?;
        let rows = tower.class_embeddings(&names, &m.text.templates)?;
        self.set_head_rows(&rows, &format!("the text tower of {}", path.display()))?;
        let shown: Vec<String> = names.iter().take(3).map(|n| m.text.templates[0].replace("{}", n)).collect();
        self.log(format!(
            "gcl: classifier initialised from CLIP text embeddings of {} classes x {} prompt template(s) (\"{}\", ...; {:.1} s)",
            names.len(),
            m.text.templates.len(),
            shown.join("\", \""),
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// `model.head_init = "embeddings"`: the classifier from the rows of
    /// `model.class_embeddings`.
    pub fn init_head_from_file(&mut self) -> Result<()> {
        let path = self.cfg.model.class_embeddings.clone().context("model.head_init = \"embeddings\" needs model.class_embeddings")?;
        let rows = crate::model::weights::read_matrix(&path)?;
        self.set_head_rows(&rows, &path.display().to_string())?;
        self.log(format!("gcl: classifier initialised from the class embeddings in {}", path.display()));
        Ok(())
    }

    /// Every head's class weights from `rows` (classes x feature dimension), checked.
    fn set_head_rows(&mut self, rows: &Tensor, from: &str) -> Result<()> {
        let classes = self.data.counts.len() as i64;
        let dim = self.model.backbone.feature_dim() / self.model.heads.len() as i64;
        if rows.size() != [classes, dim] {
            bail!("{from}: class embeddings of shape {:?}, but the classifier needs {classes} classes x {dim} (the backbone's feature dimension)", rows.size());
        }
        if !bool::try_from(rows.isfinite().all())? {
            bail!("{from}: the class embeddings hold NaN or infinite values");
        }
        let rows = rows.to_kind(tch::Kind::Float).to_device(self.rt.device);
        for h in self.model.heads.iter_mut() {
            h.set_class_weights(&rows);
        }
        Ok(())
    }

    /// How this run's evaluation batches are made.
    pub fn eval_input(&self, from_files: bool) -> EvalInput {
        EvalInput {
            norm: self.data.norm,
            transform: self.data.test_transform,
            tte: self.cfg.data.tte,
            batch: self.rt.eval_batch,
            layout: self.layout(),
            workers: self.rt.loader(from_files),
        }
    }

    pub fn log(&self, line: String) {
        if self.verbose {
            eprintln!("{line}");
        }
    }
}
