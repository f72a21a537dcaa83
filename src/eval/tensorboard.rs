//! TensorBoard event files, so that `tensorboard --logdir runs` shows gcl's runs side by
//! side. Written without TensorFlow: a file `events.out.tfevents.<time>.<host>.<pid>` is a
//! sequence of TFRecords (length as u64, its masked CRC-32C, the record, its masked
//! CRC-32C), each record one `Event` protocol buffer (tensorflow/core/util/event.proto):
//! the first names the format (`file_version = "brain.Event:2"`), each later one holds
//! scalar summaries (`Summary.Value`: tag, simple_value) at a step.
//!
//! The file is only appended to and flushed after every event: a crash leaves at most a torn
//! last record, which TensorBoard's reader skips.
use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What every event file's name starts with (TensorBoard finds its files by `tfevents`).
pub const FILE_PREFIX: &str = "events.out.tfevents.";

pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir`, its first event written.
    pub fn create(dir: &Path) -> Result<Self> {
        let now = wall_time();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let host = if host.is_empty() { "localhost".to_string() } else { host };
        // A run's files never collide: a counter of this process's files ends the name (as
        // TensorBoard's own writer does), and a name already taken is passed over.
        static FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let (file, path) = loop {
            let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!("{FILE_PREFIX}{}.{host}.{}.{n}", now as u64, std::process::id()));
            match File::options().create_new(true).append(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot create the TensorBoard event file {}", path.display())),
            }
        };
        let mut w = EventWriter { file, path };
        let mut event = Vec::new();
        field_double(&mut event, 1, now);
        field_bytes(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event at `step` with a scalar per (tag, value); non-finite values are left out.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values.iter().filter(|(_, v)| v.is_finite()) {
            let mut value = Vec::new();
            field_bytes(&mut value, 1, tag.as_bytes());
            value.push(2 << 3 | 5); // simple_value: float, fixed 32 bits
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            field_bytes(&mut summary, 1, &value);
        }
        let mut event = Vec::new();
        field_double(&mut event, 1, wall_time());
        event.push(2 << 3); // step: varint
        varint(&mut event, step as u64);
        field_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        // One write per record, so a record is torn only by a crash in the middle of it.
        self.file.write_all(&rec).and_then(|_| self.file.flush()).with_context(|| format!("cannot append to {}", self.path.display()))
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// TFRecord's checksum: CRC-32C, rotated right by 15 bits, plus a constant.
fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (string, bytes, message).
fn field_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    out.push((field << 3 | 2) as u8);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn field_double(out: &mut Vec<u8>, field: u32, v: f64) {
    out.push((field << 3 | 1) as u8);
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tfrecord_checksum_matches_tensorflows() {
        // CRC-32C("123456789") = 0xe3069283, the check value of RFC 3720's polynomial.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn two_writers_in_one_second_get_two_files() {
        let dir = std::env::temp_dir().join(format!("gcl-tb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (EventWriter::create(&dir).unwrap(), EventWriter::create(&dir).unwrap());
        assert_ne!(a.path(), b.path());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn varints_are_protobufs() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
    }
}
