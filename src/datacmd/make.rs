//! `gcl data make`: image datasets written from real data that is on this machine, in both
//! layouts at once: class folders (`OUT/{train,val,test}/<class>/<file>`, for `--dataset
//! folder`) and list files (`OUT/{train,val,test}.txt`, `relative/path label`, for `--dataset
//! list --data OUT`).
//!
//! - From Fashion-MNIST or MNIST: PNG at 28x28 (lossless, the IDX pixels) or JPEG upscaled
//!   to varied sizes (some non-square; greyscale, RGB, progressive and CMYK files). The
//!   training set is long-tailed (the split rule of `gcl train`: the first n_i images of
//!   class i) after the last `val_per_class` images of each class are set aside as the
//!   balanced val set (with 0, the split is exactly `gcl train`'s); test is the test set. File names are the images' indices, so folder order is file order.
//! - From photos (Debian's mate-backgrounds): each photo is a class, its images are random
//!   crops of it, rescaled to one size and saved as JPEG: a set with realistic decode cost.
use crate::data::augment::Geometry;
use crate::data::image::{decode, encode_jpeg, encode_jpeg_cmyk, encode_png, Color};
use crate::data::split::{longtail_counts, longtail_indices, Profile, SplitRule};
use crate::data::transform::{crop, resize, CropBox};
use crate::data::{DatasetKind, Sample, Source};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the images are made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum From {
    FashionMnist,
    Mnist,
    /// A folder of photos (JPEG or PNG): each photo is a class.
    Photos,
}

/// The file format written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    Png,
    Jpeg,
}

pub struct MakeOptions {
    pub from: From,
    /// The source's folder (default: the dataset's own; photos: /usr/share/backgrounds/mate).
    pub data: Option<PathBuf>,
    pub out: PathBuf,
    /// Default: PNG for the MNIST sets (lossless), JPEG for photos.
    pub format: Option<FileFormat>,
    pub ratio: f64,
    pub profile: Profile,
    /// Training images of the largest class (photos; MNIST sets take all they have).
    pub max_per_class: usize,
    pub val_per_class: usize,
    /// Test images per class (default: MNIST sets all, photos 20).
    pub test_per_class: Option<usize>,
    /// JPEG from MNIST sets: sides drawn in min..=max pixels.
    pub min_size: usize,
    pub max_size: usize,
    /// Photos: the images' width (height 3/4 of it).
    pub photo_width: usize,
    pub quality: u8,
    pub seed: u64,
    pub overwrite: bool,
}

/// One image to write: its split, class, file stem and how to get its pixels.
struct Job {
    split: &'static str,
    label: usize,
    stem: String,
    /// Index into the source's split (MNIST sets) or the photo's index (photos).
    index: usize,
}

pub fn run_command(o: &MakeOptions) -> Result<()> {
    if o.out.exists() && !o.overwrite {
        bail!("{} exists; give --overwrite to replace it", o.out.display());
    }
    if o.min_size == 0 || o.min_size > o.max_size || o.max_size > 4096 {
        bail!("--min-size {} / --max-size {}: need 1 <= min <= max <= 4096", o.min_size, o.max_size);
    }
    let name = o.out.file_name().context("--out needs a folder name")?.to_string_lossy().into_owned();
    let tmp = o.out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = match o.from {
        From::FashionMnist | From::Mnist => from_mnist(o, &tmp),
        From::Photos => from_photos(o, &tmp),
    };
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // The old folder is moved aside, not removed, until the new one is in its place.
    let old = o.out.with_file_name(format!(".{name}.old-{}", std::process::id()));
    let had_old = o.out.exists();
    if had_old {
        std::fs::rename(&o.out, &old).with_context(|| format!("cannot move the old {} aside", o.out.display()))?;
    }
    if let Err(e) = std::fs::rename(&tmp, &o.out) {
        if had_old {
            let _ = std::fs::rename(&old, &o.out);
        }
        return Err(e).with_context(|| format!("cannot move {} to {}", tmp.display(), o.out.display()));
    }
    if had_old {
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove the old {} (moved to {})", o.out.display(), old.display()))?;
    }
    crate::util::out(&format!("{summary}wrote {}\n", o.out.display()))
}

/// Class folder names that sort in label order: "<i>_<name>" with i zero-padded.
fn folder_names(names: &[String]) -> Vec<String> {
    let width = (names.len().max(2) - 1).to_string().len();
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let clean: String = n.chars().map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' }).collect();
            format!("{i:0width$}_{clean}")
        })
        .collect()
}

/// Writes `jobs` (pixels from `pixels(job, rng)`) on all cores, then the three list files.
fn write_all(
    o: &MakeOptions,
    tmp: &Path,
    folders: &[String],
    jobs: Vec<Job>,
    pixels: &(dyn Fn(&Job, &mut StdRng) -> Result<Sample<'static>> + Sync),
) -> Result<String> {
    for split in ["train", "val", "test"] {
        if jobs.iter().any(|j| j.split == split) {
            for f in folders {
                std::fs::create_dir_all(tmp.join(split).join(f))?;
            }
        }
    }
    let bar = ProgressBar::new(jobs.len() as u64).with_style(ProgressStyle::with_template("writing {pos}/{len} images {wide_bar} {eta}").expect("template"));
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let threads = crate::runtime::cores();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let names: Vec<Result<String>> = {
        let slots: Vec<std::sync::Mutex<Option<Result<String>>>> = jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let r = write_one(o, tmp, folders, job, pixels);
                    *slots[i].lock().unwrap() = Some(r);
                    bar.inc(1);
                });
            }
        });
        slots.into_iter().map(|m| m.into_inner().unwrap().expect("every job ran")).collect()
    };
    bar.finish_and_clear();
    let mut lists = [String::new(), String::new(), String::new()];
    let mut counts = [0usize; 3];
    for (job, name) in jobs.iter().zip(names) {
        let k = ["train", "val", "test"].iter().position(|s| *s == job.split).expect("known split");
        lists[k] += &format!("{} {}\n", name?, job.label);
        counts[k] += 1;
    }
    for (k, split) in ["train", "val", "test"].iter().enumerate().filter(|(k, _)| counts[*k] > 0) {
        crate::util::write_atomic(&tmp.join(format!("{split}.txt")), lists[k].as_bytes())?;
    }
    Ok(format!("{} training, {} val, {} test images in {} classes\n", counts[0], counts[1], counts[2], folders.len()))
}

/// One file: returns its path relative to the dataset root.
fn write_one(
    o: &MakeOptions,
    tmp: &Path,
    folders: &[String],
    job: &Job,
    pixels: &(dyn Fn(&Job, &mut StdRng) -> Result<Sample<'static>> + Sync),
) -> Result<String> {
    let mut rng = StdRng::seed_from_u64(o.seed ^ (job.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ job.split.len() as u64);
    let img = pixels(job, &mut rng)?;
    let format = o.format.unwrap_or(if o.from == From::Photos { FileFormat::Jpeg } else { FileFormat::Png });
    let (bytes, ext) = match format {
        FileFormat::Png => (encode_png(&img)?, "png"),
        FileFormat::Jpeg => {
            // The kinds of JPEG real datasets hold: mostly baseline colour, some progressive,
            // some greyscale, a few CMYK.
            let k = rng.gen_range(0..16);
            let bytes = match k {
                0..=2 => encode_jpeg(&to_grey(&img), o.quality, false)?,
                3 => encode_jpeg_cmyk(&to_rgb(&img), o.quality)?,
                4..=6 => encode_jpeg(&to_rgb(&img), o.quality, true)?,
                _ => encode_jpeg(&to_rgb(&img), o.quality, false)?,
            };
            (bytes, "jpg")
        }
    };
    let rel = format!("{}/{}/{}.{ext}", job.split, folders[job.label], job.stem);
    std::fs::write(tmp.join(&rel), bytes).with_context(|| format!("cannot write {rel}"))?;
    Ok(rel)
}

fn to_rgb(s: &Sample) -> Sample<'static> {
    match s.geometry.c {
        1 => Sample { pixels: Cow::Owned(s.pixels.iter().flat_map(|&v| [v, v, v]).collect()), geometry: Geometry { c: 3, ..s.geometry } },
        _ => Sample { pixels: Cow::Owned(s.pixels.to_vec()), geometry: s.geometry },
    }
}

fn to_grey(s: &Sample) -> Sample<'static> {
    match s.geometry.c {
        3 => Sample { pixels: Cow::Owned(s.pixels.chunks_exact(3).map(crate::data::image::luma).collect()), geometry: Geometry { c: 1, ..s.geometry } },
        _ => Sample { pixels: Cow::Owned(s.pixels.to_vec()), geometry: s.geometry },
    }
}

fn from_mnist(o: &MakeOptions, tmp: &Path) -> Result<String> {
    let kind = if o.from == From::Mnist { DatasetKind::Mnist } else { DatasetKind::FashionMnist };
    let ds = crate::data::load(kind, o.data.as_deref())?;
    let (train, test) = (ds.train, ds.test);
    let classes = train.num_classes();
    let folders = folder_names(train.class_names());
    // The last val_per_class images of each class are val; the split is made from the rest.
    let mut reserve = vec![0usize; classes];
    let mut is_val = vec![false; train.len()];
    for i in (0..train.len()).rev() {
        let l = train.labels()[i] as usize;
        if reserve[l] < o.val_per_class {
            reserve[l] += 1;
            is_val[i] = true;
        }
    }
    let pool: Vec<usize> = (0..train.len()).filter(|&i| !is_val[i]).collect();
    let pool_labels: Vec<i64> = pool.iter().map(|&i| train.labels()[i]).collect();
    let kept = longtail_indices(&pool_labels, classes, o.ratio, o.profile, &SplitRule::FirstN)?;
    let mut jobs: Vec<Job> = kept
        .iter()
        .map(|&k| {
            let i = pool[k as usize];
            Job { split: "train", label: train.labels()[i] as usize, stem: format!("{i:05}"), index: i }
        })
        .collect();
    for i in (0..train.len()).filter(|&i| is_val[i]) {
        jobs.push(Job { split: "val", label: train.labels()[i] as usize, stem: format!("{i:05}"), index: i });
    }
    let mut test_count = vec![0usize; classes];
    for i in 0..test.len() {
        let l = test.labels()[i] as usize;
        if o.test_per_class.is_none_or(|n| test_count[l] < n) {
            test_count[l] += 1;
            jobs.push(Job { split: "test", label: l, stem: format!("{i:05}"), index: i });
        }
    }
    let (lo, hi) = (o.min_size, o.max_size);
    let jpeg = o.format == Some(FileFormat::Jpeg);
    let pixels = |job: &Job, rng: &mut StdRng| -> Result<Sample<'static>> {
        let src: &Arc<dyn Source> = if job.split == "test" { &test } else { &train };
        let s = src.sample(job.index)?;
        if !jpeg {
            return Ok(Sample { pixels: Cow::Owned(s.pixels.into_owned()), geometry: s.geometry });
        }
        let side = rng.gen_range(lo..=hi);
        let (h, w) = if rng.gen_bool(2.0 / 3.0) { (side, side) } else { (side, rng.gen_range(lo..=hi)) };
        resize(&s, h, w)
    };
    write_all(o, tmp, &folders, jobs, &pixels)
}

/// Photos under `dir` (JPEG and PNG, any depth), sorted.
fn photos(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::data::files::image_files_within(dir, dir, &["jpg", "jpeg", "png"])
}

fn from_photos(o: &MakeOptions, tmp: &Path) -> Result<String> {
    let dir = o.data.clone().unwrap_or_else(|| PathBuf::from("/usr/share/backgrounds/mate"));
    if !dir.is_dir() {
        bail!(
            "photo folder {} does not exist (Debian's mate-backgrounds puts photos in /usr/share/backgrounds/mate: `apt-get install mate-backgrounds`)",
            dir.display()
        );
    }
    let files = photos(&dir)?;
    let (tw, th) = (o.photo_width, o.photo_width * 3 / 4);
    if !(4..=4096).contains(&tw) {
        bail!("--photo-width {tw}: need 4 to 4096");
    }
    // Photos large enough for a crop at full size.
    let mut images = Vec::new();
    let mut names = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let img = decode(&bytes, Color::Rgb).with_context(|| format!("photo {}", f.display()))?;
        if img.geometry.w >= tw && img.geometry.h >= th {
            names.push(f.file_stem().unwrap_or_default().to_string_lossy().into_owned());
            images.push(img);
        }
    }
    if images.len() < 2 {
        bail!("{} holds {} photos of at least {tw}x{th}; need two or more", dir.display(), images.len());
    }
    let folders = folder_names(&names);
    // At least one training image per class, whatever the ratio.
    let counts: Vec<usize> = longtail_counts(o.max_per_class, images.len(), o.ratio, o.profile).into_iter().map(|n| n.max(1)).collect();
    let mut jobs = Vec::new();
    for (c, &n) in counts.iter().enumerate() {
        let per = [("train", n), ("val", o.val_per_class), ("test", o.test_per_class.unwrap_or(20))];
        for (split, k) in per {
            for j in 0..k {
                jobs.push(Job { split, label: c, stem: format!("{c:03}_{j:05}"), index: c * 1_000_000 + j * 3 + split.len() });
            }
        }
    }
    let pixels = |job: &Job, rng: &mut StdRng| -> Result<Sample<'static>> {
        let img = &images[job.label];
        let g = img.geometry;
        // A box of the output's aspect, 1x to 3x its size (as far as the photo allows).
        let most = (g.w as f64 / tw as f64).min(g.h as f64 / th as f64).min(3.0);
        let k = rng.gen_range(1.0..=most.max(1.0));
        let (bw, bh) = (((tw as f64 * k) as usize).min(g.w), ((th as f64 * k) as usize).min(g.h));
        let b = CropBox { top: rng.gen_range(0..=g.h - bh) as i64, left: rng.gen_range(0..=g.w - bw) as i64, h: bh, w: bw };
        resize(&crop(img, b), th, tw)
    };
    write_all(o, tmp, &folders, jobs, &pixels)
}
