//! A run folder as a transaction: one run at a time (an advisory lock held for the run's
//! life), everything checked before anything is written, and never the files of two runs
//! side by side.
//!
//! What a run writes, and when: `config.toml` and `split.txt` once all checks pass;
//! `stage1.safetensors` after every stage-1 epoch; a line of `metrics.jsonl` and a TensorBoard
//! event (`events.out.tfevents.*`, appended to, one file per process) after every epoch of
//! either stage; `results.json` as soon as each stage has
//! been evaluated; `stage2.safetensors` when stage 2 ends. Each file through a temporary file
//! and a rename, so a crash leaves the previous version whole.
use crate::config::Config;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The files a run writes into its folder.
pub const RUN_FILES: &[&str] = &[
    "config.toml",
    "split.txt",
    "results.json",
    "metrics.jsonl",
    "stage1.safetensors",
    "stage2.safetensors",
    "stage1.best-val.safetensors",
    "stage2.best-val.safetensors",
];

/// The lock file: present after a run, locked only while one runs.
pub const LOCK_FILE: &str = ".gcl.lock";

/// How a run treats what its folder already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new run: the folder must hold no run's files.
    Fresh,
    /// A new run that first removes an earlier run's files (`--overwrite`).
    Overwrite,
    /// The run already in the folder goes on (`--resume`, or stage 2 of its own stage 1).
    Continue,
}

/// A locked run folder.
pub struct RunDir {
    pub path: PathBuf,
    /// Held while the run lives; the OS releases it when the process ends, however it ends.
    _lock: File,
}

impl RunDir {
    /// Creates and locks `path`, and checks what it holds against `mode`. Writes nothing
    /// but the folder and its lock file.
    pub fn open(path: &Path, mode: Mode) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("cannot create output folder {}", path.display()))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
        if let Err(e) = lock.try_lock() {
            match e {
                std::fs::TryLockError::WouldBlock => bail!(
                    "another gcl run is using {} (it holds {}); wait for it to end, or use another --out",
                    path.display(),
                    lock_path.display()
                ),
                std::fs::TryLockError::Error(e) => return Err(e).with_context(|| format!("cannot lock {}", lock_path.display())),
            }
        }
        let dir = RunDir { path: path.to_path_buf(), _lock: lock };
        dir.remove_stale_temporaries()?;
        let present = dir.run_files();
        if mode == Mode::Fresh && !present.is_empty() {
            bail!(
                "{} already holds a run ({}): continue it with --resume, replace it with --overwrite, or use another --out",
                path.display(),
                present.join(", ")
            );
        }
        Ok(dir)
    }

    /// Removes the temporary files (`<run file>.<pid>.tmp`) of a writer killed before its
    /// rename (kill -9, power loss): the lock says no run is writing them now.
    fn remove_stale_temporaries(&self) -> Result<()> {
        for e in std::fs::read_dir(&self.path).with_context(|| format!("cannot read {}", self.path.display()))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = name
                .strip_suffix(".tmp")
                .and_then(|s| s.rsplit_once('.'))
                .is_some_and(|(file, pid)| RUN_FILES.contains(&file) && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
            if stale {
                std::fs::remove_file(e.path()).with_context(|| format!("cannot remove the stale temporary file {}", e.path().display()))?;
            }
        }
        Ok(())
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The run files the folder holds (with its TensorBoard event files).
    pub fn run_files(&self) -> Vec<String> {
        let mut files: Vec<String> = RUN_FILES.iter().filter(|f| self.path.join(f).exists()).map(|f| f.to_string()).collect();
        let mut events: Vec<String> = std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(crate::eval::tensorboard::FILE_PREFIX) || (n.starts_with("probe-stage") && n.ends_with(".safetensors")))
            .collect();
        events.sort();
        files.extend(events);
        files
    }

    /// Removes an earlier run's files (`--overwrite`); other files stay.
    pub fn clear(&self) -> Result<()> {
        for f in self.run_files() {
            let p = self.path.join(&f);
            std::fs::remove_file(&p).with_context(|| format!("--overwrite: cannot remove {}", p.display()))?;
        }
        Ok(())
    }
}

/// The settings as a run folder keeps them: paths absolute, and the split pointing to the
/// folder's own split.txt, so that `--config OUT/config.toml` repeats the run from anywhere.
pub fn saved_config(cfg: &Config, out: &Path) -> Result<Config> {
    let mut c = cfg.resolved();
    // List files as the run found them (a relative name may live under the data folder).
    if let Some(root) = c.data.dir.clone() {
        for p in [&mut c.data.train_list, &mut c.data.test_list, &mut c.data.val_list].into_iter().flatten() {
            *p = crate::data::files::locate_list(&root, p);
        }
    }
    for p in [&mut c.data.dir, &mut c.data.train_list, &mut c.data.test_list, &mut c.data.val_list].into_iter().flatten() {
        *p = absolute(p)?;
    }
    c.data.split = crate::data::split::SplitRule::IndexFile { path: absolute(&out.join("split.txt"))? };
    Ok(c)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
}

/// The settings that differ between `saved` and `now`, as `key: saved -> now` lines.
pub fn differences(saved: &Config, now: &Config) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    let null = serde_json::Value::Null;
                    walk(&key, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => out.push(format!("{prefix}: {a} -> {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let (a, b) = (serde_json::to_value(saved).unwrap_or_default(), serde_json::to_value(now).unwrap_or_default());
    walk("", &a, &b, &mut out);
    out
}
