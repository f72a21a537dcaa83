//! Model selection on the validation set: after each epoch the model is evaluated on val,
//! and the best epoch's weights are kept in OUT/stageN.best-val.safetensors. At the end of
//! the stage the final model and the best-on-val one are both tested; results.json keeps
//! both. The test set never chooses anything.
use super::checkpoint::Checkpoint;
use super::session::Session;
use super::Stage;
use crate::eval::report::BestOnVal;
use anyhow::Result;
use std::path::{Path, PathBuf};

pub struct ValTracker {
    path: PathBuf,
    /// Whether this process writes the file (rank 0 of data-parallel workers).
    writer: bool,
    /// (epoch, val top-1) of the best model so far.
    best: Option<(usize, f64)>,
    /// The val top-1 after the last epoch this process trained.
    last: Option<f64>,
}

impl ValTracker {
    /// For `stage` in the run folder `dir`; a resumed stage goes on from the best it had
    /// saved, a fresh one starts afresh.
    pub fn new(dir: &Path, stage: Stage, resume: bool, writer: bool) -> Result<Self> {
        let path = dir.join(format!("stage{}.best-val.safetensors", stage.number()));
        let mut best = None;
        if resume && path.exists() {
            let ck = Checkpoint::load(&path)?;
            let (e, v) = (ck.get_i64("meta.best_epoch", &path)?[0] as usize, ck.get_f64("meta.val_top1", &path)?[0]);
            best = Some((e, v));
        } else if path.exists() && writer {
            std::fs::remove_file(&path)?;
        }
        Ok(Self { path, writer, best, last: None })
    }

    /// Evaluates the model after `epoch` (0-based) on val; keeps it when it is the best yet.
    /// Its val top-1 (None without a val set).
    pub fn after_epoch(&mut self, session: &Session, epoch: usize) -> Result<Option<f64>> {
        let Some(acc) = session.evaluate_val()? else { return Ok(None) };
        let better = self.best.is_none_or(|(_, v)| acc.top1 > v);
        session.log(format!("  val top-1 {:.2}%{}", 100.0 * acc.top1, if better { " (best so far)" } else { "" }));
        if better && self.writer {
            // As the stage's own checkpoints: a tuned ViT's untrained weights stay in their file.
            let mut ck = Checkpoint::new();
            ck.put_trained(&session.vs, &session.model.backbone.untuned(), super::backbone_file(&session.cfg.model).as_ref());
            ck.put_i64("meta.best_epoch", &[epoch as i64 + 1]);
            ck.put_f64("meta.val_top1", &[acc.top1]);
            ck.save(&self.path)?;
        }
        if better {
            self.best = Some((epoch + 1, acc.top1));
        }
        self.last = Some(acc.top1);
        Ok(Some(acc.top1))
    }

    /// The final model's val top-1 (None without a val set): the last epoch's, measured
    /// again only where this process trained no epoch (a finished stage resumed, tau-norm).
    pub fn final_top1(&self, session: &Session) -> Result<Option<f64>> {
        match self.last {
            Some(v) => Ok(Some(v)),
            None => Ok(session.evaluate_val()?.map(|a| a.top1)),
        }
    }

    /// The best-on-val model's test accuracy (the session's final weights are put back).
    pub fn finish(&self, session: &mut Session) -> Result<Option<BestOnVal>> {
        let Some((epoch, val_top1)) = self.best else { return Ok(None) };
        // The other workers read the file once rank 0 has written it.
        session.dist.barrier()?;
        let mut last = Checkpoint::new();
        last.put_model(&session.vs);
        Checkpoint::load(&self.path)?.restore_model(&mut session.vs, &self.path)?;
        let test = session.evaluate();
        last.restore_model(&mut session.vs, Path::new("(the final weights)"))?;
        Ok(Some(BestOnVal { epoch, val_top1, test: test? }))
    }
}
