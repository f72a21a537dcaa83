//! Small helpers shared by the modules.
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The temporary sibling that an atomic write goes through.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a temporary file and a rename: readers see the old
/// file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    with_atomic(path, |tmp| std::fs::write(tmp, bytes).map_err(Into::into))
}

/// Lets `write` fill a temporary file, then renames it onto `path`.
pub fn with_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let tmp = tmp_path(path);
    let result = write(&tmp).and_then(|_| {
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}
