//! Small helpers shared by the modules.
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The temporary sibling that an atomic write goes through.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Appends `line` and a newline to `path` in one write to a file opened for appending, so
/// that a crash leaves whole lines only (and concurrent appenders never interleave).
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
    f.write_all(format!("{line}\n").as_bytes()).with_context(|| format!("cannot append to {}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file and a rename: readers see the old
/// file or the new one, never half of one (a full disk or a kill leaves the old one).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    with_atomic(path, |tmp| std::fs::write(tmp, bytes).map_err(Into::into))
}

/// Lets `write` fill a temporary file, then renames it onto `path`.
pub fn with_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let tmp = tmp_path(path);
    // Flushed before the rename, so that the new name never points at data still in flight.
    let flush = |tmp: &Path| std::fs::File::open(tmp).and_then(|f| f.sync_all()).with_context(|| format!("cannot flush {} to disk", tmp.display()));
    let result = write(&tmp)
        .and_then(|_| flush(&tmp))
        .and_then(|_| std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display())));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Settings checked against their valid ranges; every value outside its range is reported at
/// once, each with its key, its value and the range.
#[derive(Debug, Default)]
pub struct Ranges(Vec<String>);

impl Ranges {
    /// Notes `key = value` as out of `range` unless `ok` (write `ok` so that NaN fails it, as
    /// any comparison with NaN does).
    pub fn check(&mut self, key: impl std::fmt::Display, value: impl std::fmt::Display, ok: bool, range: &str) {
        if !ok {
            self.0.push(format!("{key} = {value} (valid: {range})"));
        }
    }
    /// A finite number in [lo, hi].
    pub fn within(&mut self, key: impl std::fmt::Display, v: f64, lo: f64, hi: f64) {
        let range = match (lo.is_finite(), hi.is_finite()) {
            (true, true) => format!("a number from {lo} to {hi}"),
            (true, false) => format!("a number >= {lo}"),
            (false, true) => format!("a number <= {hi}"),
            (false, false) => "a finite number".to_string(),
        };
        self.check(key, v, v.is_finite() && v >= lo && v <= hi, &range);
    }
    /// A number in [0, 1): a momentum, an effective-number beta.
    pub fn unit_fraction(&mut self, key: impl std::fmt::Display, v: f64) {
        self.check(key, v, (0.0..1.0).contains(&v), "a number from 0 up to (not including) 1");
    }
    /// A finite number > 0.
    pub fn positive(&mut self, key: impl std::fmt::Display, v: f64) {
        self.check(key, v, v.is_finite() && v > 0.0, "a number > 0");
    }
    /// Ok, or one error listing every value out of range.
    pub fn finish(self) -> Result<()> {
        match self.0.len() {
            0 => Ok(()),
            1 => anyhow::bail!("setting out of range: {}", self.0[0]),
            _ => anyhow::bail!("settings out of range:\n  {}", self.0.join("\n  ")),
        }
    }
}

/// Prints `gcl: warning: {message}` to standard error, once per process (data is opened
/// more than once: to fit the settings, then to train).
pub fn warn_once(message: &str) {
    say_once(&format!("warning: {message}"));
}

/// Prints `gcl: {message}` to standard error, once per process.
pub fn say_once(message: &str) {
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen.get_or_insert_with(Default::default).insert(message.to_string()) {
        eprintln!("gcl: {message}");
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the user asked the run to stop (Ctrl-C); training stops at the next step.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Marks the run as interrupted (the Ctrl-C handler does).
pub fn interrupt() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Writes `text` to standard output; a closed or full output is an error, not a panic.
pub fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes()).and_then(|_| o.flush()).context("cannot write to standard output")
}

/// The first CPU's value of `key` in /proc/cpuinfo ("model name", "flags", "cpu MHz").
pub fn cpuinfo(key: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
}

/// The CPU's model name and its vector extensions that matter here (AVX2, AVX-512, AMX),
/// from /proc/cpuinfo: every speed number is quoted with it.
pub fn cpu_name() -> String {
    let name = cpuinfo("model name").unwrap_or_else(|| "unknown CPU".into());
    let flags = cpuinfo("flags").unwrap_or_default();
    let has: Vec<&str> = ["avx2", "avx512f", "avx512_bf16", "amx_tile"].into_iter().filter(|f| flags.split(' ').any(|x| x == *f)).collect();
    format!(
        "{name}, {} cores, {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if has.is_empty() { "no AVX2".to_string() } else { has.join(" ") }
    )
}
