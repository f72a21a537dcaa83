//! The embedding over time (`run.probe_every = K`, `run.snapshots`): every K epochs of each
//! stage the run measures the geometry of a fixed probe set, never the test set: the val set
//! when the data has one, else up to `run.probe_per_class` training images per class drawn
//! with the run's seed, seen without augmentation. The measures (spread per shot group, the
//! tail's and the head's, neural collapse: `eval::collapse`) go to that epoch's line of
//! metrics.jsonl as `probe`; at the stage-1 epochs of `run.snapshots` the probe features are
//! kept as `probe-stage1-epoch<E>.safetensors` (`features`, `labels`), which `gcl report`
//! draws side by side.
use super::session::Session;
use super::Stage;
use crate::data::{Source, Subset};
use crate::eval::collapse::{as_applied, neural_collapse, tail_classes};
use crate::eval::geometry::class_geometry;
use crate::eval::ShotGroup;
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

pub struct Probe {
    source: Arc<dyn Source>,
    every: usize,
    snapshots: Vec<usize>,
    /// What the set is, for the log.
    pub what: String,
}

impl Probe {
    /// The run's probe (None when it measures nothing); a probe set with fewer images than
    /// classes, or without every class, is an error.
    pub fn new(session: &Session) -> Result<Option<Probe>> {
        let r = &session.cfg.run;
        if r.probe_every == 0 && r.snapshots.is_empty() {
            return Ok(None);
        }
        let classes = session.data.counts.len();
        let (source, what): (Arc<dyn Source>, String) = match &session.data.val {
            Some(val) => (val.clone(), format!("the val set ({} images)", val.len())),
            None => {
                let train = &session.data.train;
                let mut rng = rand::rngs::StdRng::seed_from_u64(r.seed ^ 0x9B0B_E5E7);
                let mut by_class: Vec<Vec<i64>> = vec![Vec::new(); classes];
                for (i, &y) in train.labels().iter().enumerate() {
                    by_class[y as usize].push(i as i64);
                }
                let mut keep: Vec<i64> = by_class
                    .iter_mut()
                    .flat_map(|v| {
                        v.shuffle(&mut rng);
                        v.truncate(r.probe_per_class);
                        v.iter().copied()
                    })
                    .collect();
                keep.sort_unstable();
                let n = keep.len();
                (Arc::new(Subset::new(train.clone(), &keep)?), format!("{n} training images (up to run.probe_per_class = {} per class, no augmentation)", r.probe_per_class))
            }
        };
        let present = (0..classes).filter(|&c| source.labels().iter().any(|&y| y as usize == c)).count();
        if source.len() < classes || present < classes {
            bail!(
                "run.probe_every / run.snapshots: the probe set, {what}, has {} images of {present} of the {classes} classes; \
                 the embedding's measures need every class (raise run.probe_per_class, or give a val set with every class)",
                source.len()
            );
        }
        Ok(Some(Probe { source, every: r.probe_every, snapshots: r.snapshots.clone(), what }))
    }

    /// Whether epoch `epoch` (1-based) of `stage` is measured, and whether its features are kept.
    pub fn due(&self, stage: Stage, epoch: usize) -> (bool, bool) {
        let snapshot = stage == Stage::One && self.snapshots.contains(&epoch);
        (snapshot || (self.every > 0 && epoch % self.every == 0), snapshot)
    }

    /// The measures of the model as it stands; with `keep`, its features written to `keep`.
    pub fn measure(&self, session: &Session, keep: Option<&Path>) -> Result<serde_json::Value> {
        let input = session.eval_input(self.source.from_files());
        let (mut feats, mut pred) = (Vec::new(), Vec::new());
        let mut labels = Vec::new();
        crate::eval::metrics::forward_all(&session.model, self.source.clone(), &input, None, |samples, f, logits| {
            feats.push(f.to_kind(Kind::Float).to_device(Device::Cpu));
            pred.extend(Vec::<i64>::try_from(logits.argmax(1, false).to_device(Device::Cpu))?);
            labels.extend(samples.iter().map(|&i| self.source.labels()[i]));
            Ok(())
        })?;
        let f = Tensor::cat(&feats, 0);
        let dim = f.size()[1] as usize;
        let cosine = session.model.heads[0].kind() == crate::model::HeadKind::Cosine;
        let features = as_applied(&Vec::<f32>::try_from(&f.flatten(0, -1))?, dim, cosine);
        let counts = &session.data.counts;
        let c = counts.len();
        let r = &session.cfg.run;
        let groups: Vec<ShotGroup> = counts.iter().map(|&n| ShotGroup::of(n, r.many_above, r.few_below)).collect();
        let (tail, _) = tail_classes(counts, r.many_above, r.few_below);
        let w = session.model.class_weights().to_kind(Kind::Float).to_device(Device::Cpu);
        let weights = as_applied(&Vec::<f32>::try_from(&w.contiguous().flatten(0, -1))?, dim, cosine);
        let weights = (weights.len() == c * dim).then_some(weights);
        let nc = neural_collapse(&features, dim, &labels, c, weights.as_deref(), &pred, &groups, &tail);
        let geometry = class_geometry(&features, dim, &labels, c, None);
        let spread = |keep: &dyn Fn(usize) -> bool| {
            let v: Vec<f64> = geometry.iter().filter(|g| keep(g.class) && g.samples > 0).map(|g| g.spread_deg).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let mut by_group = serde_json::Map::new();
        for g in [ShotGroup::Many, ShotGroup::Medium, ShotGroup::Few] {
            if let Some(v) = spread(&|k| groups[k] == g) {
                by_group.insert(g.name().to_string(), v.into());
            }
        }
        if let Some(path) = keep {
            let tensors = [("features", f), ("labels", Tensor::from_slice(&labels))];
            let tmp = path.with_extension("safetensors.tmp");
            Tensor::write_safetensors(&tensors, &tmp)?;
            std::fs::rename(&tmp, path)?;
        }
        let mut v = serde_json::to_value(&nc)?;
        v["images"] = labels.len().into();
        v["spread_by_group"] = by_group.into();
        v["spread_tail_deg"] = spread(&|k| tail.contains(&k)).into();
        v["spread_head_deg"] = spread(&|k| !tail.contains(&k)).into();
        Ok(v)
    }
}

/// Where a snapshot of stage-1 epoch `epoch` is kept in run folder `dir`.
pub fn snapshot_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("probe-stage1-epoch{epoch}.safetensors"))
}
