//! What a run records as it goes, in its folder: a line of `metrics.jsonl` per epoch, and the
//! same numbers (with validation and test accuracies and the loss's parameters) as
//! TensorBoard scalars `stageN/<name>` in an event file of its own per process
//! (`tensorboard --logdir runs` shows every run beside the others).
use super::Stage;
use crate::eval::tensorboard::EventWriter;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct RunLog {
    metrics: PathBuf,
    events: Mutex<EventWriter>,
}

/// The keys of a metrics line that are not measurements.
const NOT_SCALARS: &[&str] = &["stage", "epoch", "epochs", "time", "workers"];

impl RunLog {
    /// Appends to `dir`'s metrics.jsonl and to a new event file there.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(RunLog { metrics: dir.join("metrics.jsonl"), events: Mutex::new(EventWriter::create(dir)?) })
    }

    /// An epoch's line (a JSON object with `stage` and `epoch`): appended to metrics.jsonl,
    /// and each of its numbers as a scalar at step `epoch`.
    pub fn epoch(&self, stage: Stage, epoch: usize, line: &serde_json::Value) -> Result<()> {
        crate::util::append_line(&self.metrics, &line.to_string())?;
        let values: Vec<(&str, f64)> =
            line.as_object().into_iter().flatten().filter(|(k, _)| !NOT_SCALARS.contains(&k.as_str())).filter_map(|(k, v)| Some((k.as_str(), v.as_f64()?))).collect();
        self.scalars(stage, epoch, &values)
    }

    /// Drops the lines of metrics.jsonl that the run is about to write again: those of
    /// `stage` after epoch `epochs_done` and of later stages (a resumed or repeated stage),
    /// and a torn last line (a kill or a full disk during its write).
    pub fn keep_until(&self, stage: Stage, epochs_done: usize) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(&self.metrics) else { return Ok(()) };
        let keep = |v: &serde_json::Value| {
            let (s, e) = (v["stage"].as_u64().unwrap_or(u64::MAX), v["epoch"].as_u64().unwrap_or(u64::MAX));
            s < stage.number() || (s == stage.number() && e <= epochs_done as u64)
        };
        let kept: Vec<&str> = text.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| keep(&v))).collect();
        if kept.len() == text.lines().count() && text.ends_with('\n') {
            return Ok(());
        }
        let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
        crate::util::write_atomic(&self.metrics, body.as_bytes())
    }

    /// Scalars `stageN/<name>` at `step`.
    pub fn scalars<S: AsRef<str>>(&self, stage: Stage, step: usize, values: &[(S, f64)]) -> Result<()> {
        let tagged: Vec<(String, f64)> = values.iter().map(|(k, v)| (format!("stage{}/{}", stage.number(), k.as_ref()), *v)).collect();
        self.events.lock().unwrap_or_else(|p| p.into_inner()).scalars(step as i64, &tagged)
    }
}
