//! A finished run's model, read back from its folder: the settings it was trained with, the
//! checkpoint of a stage, its class names, and how its images are made ready.
use super::checkpoint::{Checkpoint, Meta};
use crate::config::{Config, Stage2Method};
use crate::data::augment::Normalize;
use crate::data::transform::TestTransform;
use crate::eval::report::Results;
use crate::model::{Classifier, HeadKind};
use crate::runtime::Runtime;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

pub struct RunModel {
    /// The run's settings (config.toml, resolved).
    pub cfg: Config,
    pub vs: VarStore,
    pub model: Classifier,
    pub meta: Meta,
    /// The checkpoint read.
    pub path: PathBuf,
    pub class_names: Vec<String>,
    pub norm: Normalize,
    pub transform: TestTransform,
    /// Colour channels of the images the model takes.
    pub channels: i64,
    /// Turns a cosine head's output into the logits it was trained with (s; 1 for a linear head).
    pub scale: f64,
}

/// The model of the run in `dir`: stage `stage`'s (1 or 2), by default stage 2's when the
/// run has one, else stage 1's; the stage must have finished.
pub fn load(dir: &Path, stage: Option<u64>, rt: &Runtime) -> Result<RunModel> {
    let cfg_path = dir.join("config.toml");
    if !cfg_path.exists() {
        bail!("{} is not a run folder (no config.toml; it is what `gcl train --out DIR` writes)", dir.display());
    }
    let cfg = Config::default().merge_file(&cfg_path)?.resolved();
    let ck_path = match stage {
        Some(n @ (1 | 2)) => dir.join(format!("stage{n}.safetensors")),
        Some(n) => bail!("--stage {n}: a run has stages 1 and 2"),
        None if dir.join("stage2.safetensors").exists() => dir.join("stage2.safetensors"),
        None => dir.join("stage1.safetensors"),
    };
    let ck = Checkpoint::load(&ck_path).with_context(|| format!("{} holds no finished model", dir.display()))?;
    let meta = ck.meta(&ck_path)?;
    if !meta.finished() {
        bail!("{} was saved after epoch {} of {}: that stage did not finish", ck_path.display(), meta.epochs_done, meta.epochs_total.unwrap_or(0));
    }
    let conv = ["model.backbone.conv1.weight", "model.backbone.conv.weight", "model.backbone.conv_proj.weight", "model.backbone.visual.conv1.weight", "model.backbone.patch_embed.proj.weight"].iter().find_map(|n| ck.tensors.get(*n)).context("checkpoint without a first convolution")?;
    let channels = conv.size()[1];
    let vs = VarStore::new(rt.device);
    let classes = meta.train_counts.len() as i64;
    let model = Classifier::new(&vs.root(), &cfg.model, channels, classes, meta.head, rt.kernels)?;
    let mut vs = vs;
    ck.restore_model(&mut vs, &ck_path)?;
    let results: Option<Results> = std::fs::read_to_string(dir.join("results.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    let class_names = results.map(|r| r.class_names).filter(|n| n.len() == classes as usize).unwrap_or_else(|| (0..classes).map(|i| i.to_string()).collect());
    let loss = match (meta.stage.number(), cfg.stage2.method) {
        (2, Stage2Method::Retrain { loss }) => loss,
        _ => cfg.stage1.loss,
    };
    let scale = if meta.head == HeadKind::Cosine { loss.logit_scale() } else { 1.0 };
    let transform = cfg.data.test_transform.expect("resolved");
    let norm = meta.norm;
    Ok(RunModel { cfg, vs, model, meta, path: ck_path, class_names, norm, transform, channels, scale })
}
