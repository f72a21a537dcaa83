//! IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed.
use super::augment::Geometry;
use super::{Dataset, InMemory};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Fashion-MNIST's classes, in label order.
pub const FASHION_MNIST_CLASSES: &[&str] =
    &["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];
/// MNIST's classes, in label order.
pub const MNIST_CLASSES: &[&str] = &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Reads `path`, or `path.gz` when only that exists; decompresses gzip by its magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<(PathBuf, Vec<u8>)> {
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let path = if path.exists() {
        path.to_path_buf()
    } else if gz.exists() {
        gz
    } else {
        bail!("missing file {} (nor {})", path.display(), gz.display());
    };
    let raw = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt gzip data", path.display()))?;
        Ok((path, out))
    } else {
        Ok((path, raw))
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IDX image file (magic 0x00000803): returns (n, rows, cols, pixels).
pub fn parse_images(name: &Path, raw: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    if raw.len() < 16 || be_u32(raw, 0) != 0x0803 {
        bail!("{}: not an IDX image file (bad header)", name.display());
    }
    let (n, h, w) = (be_u32(raw, 4) as usize, be_u32(raw, 8) as usize, be_u32(raw, 12) as usize);
    let Some(want) = n.checked_mul(h).and_then(|v| v.checked_mul(w)) else {
        bail!("{}: corrupt header: {n} images of {h}x{w} is more pixels than can exist", name.display());
    };
    if raw.len() - 16 != want {
        bail!(
            "{}: truncated or corrupt: header says {n} images of {h}x{w} ({want} bytes), file holds {}",
            name.display(),
            raw.len() - 16
        );
    }
    Ok((n, h, w, raw[16..].to_vec()))
}

/// Parses an IDX label file (magic 0x00000801).
pub fn parse_labels(name: &Path, raw: &[u8]) -> Result<Vec<i64>> {
    if raw.len() < 8 || be_u32(raw, 0) != 0x0801 {
        bail!("{}: not an IDX label file (bad header)", name.display());
    }
    let n = be_u32(raw, 4) as usize;
    if raw.len() - 8 != n {
        bail!("{}: truncated or corrupt: header says {n} labels, file holds {}", name.display(), raw.len() - 8);
    }
    Ok(raw[8..].iter().map(|&b| b as i64).collect())
}

fn load_part(dir: &Path, stem: &str, classes: &[&str]) -> Result<InMemory> {
    let (ipath, iraw) = read_maybe_gz(&dir.join(format!("{stem}-images-idx3-ubyte")))?;
    let (lpath, lraw) = read_maybe_gz(&dir.join(format!("{stem}-labels-idx1-ubyte")))?;
    let (n, h, w, pixels) = parse_images(&ipath, &iraw)?;
    let labels = parse_labels(&lpath, &lraw)?;
    if labels.len() != n {
        bail!("{} holds {n} images but {} holds {} labels", ipath.display(), lpath.display(), labels.len());
    }
    if let Some((at, bad)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= classes.len()) {
        bail!("{}: label {bad} of image {at} is outside the dataset's {} classes (0..{})", lpath.display(), classes.len(), classes.len() - 1);
    }
    let names = classes.iter().map(|c| c.to_string()).collect();
    InMemory::new(pixels, Geometry { c: 1, h, w }, labels, names)
}

/// A folder with train-/t10k- images and labels (MNIST layout), of the given classes.
pub fn load_dir(dir: &Path, classes: &[&str]) -> Result<Dataset> {
    let train = load_part(dir, "train", classes)?;
    let test = load_part(dir, "t10k", classes)?;
    Ok(Dataset { train: Arc::new(train), test: Arc::new(test), val: None })
}

/// Writes an IDX image and label file pair (used by tests and by `gcl` for exports).
pub fn write_pair(dir: &Path, stem: &str, images: &[u8], n: usize, h: usize, w: usize, labels: &[u8]) -> Result<()> {
    let mut img = Vec::with_capacity(16 + images.len());
    for v in [0x0803u32, n as u32, h as u32, w as u32] {
        img.extend_from_slice(&v.to_be_bytes());
    }
    img.extend_from_slice(images);
    let mut lab = Vec::with_capacity(8 + labels.len());
    for v in [0x0801u32, labels.len() as u32] {
        lab.extend_from_slice(&v.to_be_bytes());
    }
    lab.extend_from_slice(labels);
    std::fs::write(dir.join(format!("{stem}-images-idx3-ubyte")), img)?;
    std::fs::write(dir.join(format!("{stem}-labels-idx1-ubyte")), lab)?;
    Ok(())
}
