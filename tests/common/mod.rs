//! Helpers shared by the integration tests.
#![allow(dead_code)]
use gcl::data::Prepared;
use gcl::kernels::Kernels;
use gcl::model::{Classifier, HeadKind, ModelConfig};
use gcl::train::{Stage, TrainOptions};
use serde_json::Value;
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// ../shared/fixtures/losses.json, or the file named by GCL_FIXTURES.
pub fn fixtures() -> Value {
    let path =
        std::env::var_os("GCL_FIXTURES").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/losses.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read fixtures {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixtures {} are not JSON: {e}", path.display()))
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("count") as usize).collect()
}

pub fn matrix(v: &Value) -> Tensor {
    let rows: Vec<Vec<f64>> = v.as_array().expect("rows").iter().map(f64s).collect();
    let (r, c) = (rows.len() as i64, rows[0].len() as i64);
    Tensor::from_slice(&rows.concat()).view([r, c]).to_kind(Kind::Double)
}

pub fn targets(v: &Value) -> Tensor {
    let t: Vec<i64> = v.as_array().expect("targets").iter().map(|x| x.as_i64().expect("target")).collect();
    Tensor::from_slice(&t)
}

/// |got - want| <= 1e-4 * |want| (+ a tiny absolute floor for exact zeros), elementwise.
pub fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * w.abs() + 1e-10;
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

/// The case's `params` field `key` as f64, or `default`.
pub fn param(case: &Value, key: &str, default: f64) -> f64 {
    case["params"].get(key).and_then(Value::as_f64).unwrap_or(default)
}

pub fn cases<'a>(fx: &'a Value, loss: &str) -> Vec<&'a Value> {
    fx["cases"].as_array().expect("cases").iter().filter(|c| c["loss"] == loss).collect()
}

/// Folder of the Fashion-MNIST files that scripts/setup.sh installs.
pub fn fashion_mnist_dir() -> PathBuf {
    let dir = PathBuf::from("/usr/share/datasets/fashion-mnist");
    assert!(dir.is_dir(), "Fashion-MNIST is missing: run `bash scripts/setup.sh` (it installs dataset-fashion-mnist)");
    dir
}

/// A small long-tailed subset of Fashion-MNIST: 200 images of class 0 down to 20 of
/// class 9 (ratio 10), tested on 1000 balanced test images.
pub fn tiny_fashion_mnist() -> gcl::data::Dataset {
    use gcl::data::{load, Dataset, DatasetKind, Subset};
    use std::sync::Arc;
    let ds = load(DatasetKind::FashionMnist, Some(&fashion_mnist_dir())).unwrap();
    let mut per_class = vec![0; 10];
    let keep: Vec<i64> = (0..ds.train.len() as i64)
        .filter(|&i| {
            let c = ds.train.labels()[i as usize] as usize;
            per_class[c] += 1;
            per_class[c] <= 200
        })
        .collect();
    let test: Vec<i64> = (0..1000).collect();
    Dataset { train: Arc::new(Subset::new(ds.train, &keep).unwrap()), test: Arc::new(Subset::new(ds.test, &test).unwrap()), val: None }
}

/// ResNet-8, ratio 10, 6 + 1 epochs of batch 32: seconds on the CPU.
pub fn tiny_config() -> gcl::config::Config {
    let mut c = gcl::config::preset("fmnist-lt-quick").unwrap();
    c.data.ratio = 10.0;
    c.model.depth = 8;
    c.stage1.epochs = 6;
    c.stage1.batch_size = 32;
    c.stage2.epochs = 1;
    c.stage2.batch_size = 32;
    c
}

/// `data` split as `cfg` says.
pub fn prepare(cfg: &gcl::config::Config, data: gcl::data::Dataset) -> gcl::data::Prepared {
    Prepared::new(data, cfg.data.ratio, cfg.data.profile(), &cfg.data.split, cfg.data.transforms(), cfg.data.val_fraction).unwrap()
}

/// A CIFAR ResNet classifier of `depth` on `vs`, with the given kernels.
pub fn classifier(vs: &tch::nn::VarStore, depth: usize, channels: i64, classes: i64, head: HeadKind, kernels: Kernels) -> anyhow::Result<Classifier> {
    Classifier::new(&vs.root(), &ModelConfig { depth, ..Default::default() }, channels, classes, head, kernels)
}

/// A run folder's metrics.jsonl, a JSON object per line.
pub fn metrics_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Training options for a quiet run into `out`.
pub fn opts(out: &std::path::Path, resume: bool, stages: &[Stage]) -> TrainOptions {
    TrainOptions { out: out.to_path_buf(), resume, overwrite: false, stages: stages.to_vec(), stage1_checkpoint: None, verbose: false, dist: gcl::dist::Dist::single() }
}

pub const BOTH: &[Stage] = &[Stage::One, Stage::Two];

/// Relative max difference of two tensors (in fp32).
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12)
}

/// Relative L2 difference (for bf16, where a ReLU mask can flip at a rounded zero).
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-12)
}

/// The project's Python (the venv that scripts/setup.sh makes, with torch and torchvision).
pub fn venv_python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run `bash scripts/setup.sh` (these tests compare with torchvision)", p.display());
    p
}

/// Runs the venv's Python on a script of scripts/ with arguments; panics with its stderr.
pub fn run_python(script: &str, args: &[&std::ffi::OsStr]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(venv_python()).arg(root.join("scripts").join(script)).args(args).output().unwrap();
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// A channels-last copy.
pub fn cl(t: &Tensor) -> Tensor {
    gcl::kernels::layout::channels_last(t).unwrap()
}

/// The first `per_class` training images of each of Fashion-MNIST's classes.
pub fn fashion_samples(per_class: usize) -> Vec<(usize, gcl::data::Sample<'static>)> {
    let ds = gcl::data::load(gcl::data::DatasetKind::FashionMnist, Some(&fashion_mnist_dir())).unwrap();
    let mut seen = [0usize; 10];
    let mut out = Vec::new();
    for i in 0..ds.train.len() {
        let l = ds.train.labels()[i] as usize;
        if seen[l] < per_class {
            seen[l] += 1;
            let s = ds.train.sample(i).unwrap();
            out.push((l, gcl::data::Sample { pixels: s.pixels.into_owned().into(), geometry: s.geometry }));
        }
    }
    out
}

/// Writes `samples` as DIR/<split>/class_<label>/<k>.<ext> (JPEG upscaled to varied sizes
/// when `jpeg`) and DIR/<split>.txt; returns the list lines' relative paths.
pub fn write_split(dir: &std::path::Path, split: &str, samples: &[(usize, gcl::data::Sample)], jpeg: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rels = Vec::new();
    for (k, (label, s)) in samples.iter().enumerate() {
        let folder = dir.join(split).join(format!("class_{label}"));
        std::fs::create_dir_all(&folder).unwrap();
        let (bytes, ext) = if jpeg {
            let (h, w) = (40 + (k * 7) % 25, 36 + (k * 11) % 30);
            (gcl::data::image::encode_jpeg(&gcl::data::transform::resize(s, h, w).unwrap(), 90, k % 3 == 0).unwrap(), "jpg")
        } else {
            (gcl::data::image::encode_png(s).unwrap(), "png")
        };
        let rel = format!("{split}/class_{label}/{k:04}.{ext}");
        std::fs::write(dir.join(&rel), bytes).unwrap();
        lines.push(format!("{rel} {label}"));
        rels.push(rel);
    }
    std::fs::write(dir.join(format!("{split}.txt")), lines.join("\n") + "\n").unwrap();
    rels
}

/// A small long-tailed split of Fashion-MNIST (ratio 10, 200 down to 20 images a class) as
/// an index file for `data.split`.
pub fn small_split(dir: &std::path::Path) -> PathBuf {
    let ds = gcl::data::load(gcl::data::DatasetKind::FashionMnist, Some(&fashion_mnist_dir())).unwrap();
    let mut left: Vec<usize> = (0..10).map(|c| (200.0 * 0.1f64.powf(c as f64 / 9.0)).round() as usize).collect();
    let keep: Vec<i64> = (0..ds.train.len() as i64)
        .filter(|&i| {
            let n = &mut left[ds.train.labels()[i as usize] as usize];
            let keep = *n > 0;
            *n = n.saturating_sub(1);
            keep
        })
        .collect();
    let path = dir.join("split.txt");
    gcl::data::split::write_index_file(&path, &keep).unwrap();
    path
}

/// A PNG whose header claims `w` x `h` RGB pixels, with two rows of data (a few hundred bytes).
pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    use std::io::Write;
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.sum().to_be_bytes());
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; 2 * (1 + 3 * w as usize)]).unwrap();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}

/// An 8 x 8 JPEG whose frame header is rewritten to claim `w` x `h` pixels.
pub fn jpeg_bomb(w: u16, h: u16) -> Vec<u8> {
    let s = gcl::data::Sample { pixels: vec![128u8; 8 * 8 * 3].into(), geometry: gcl::data::augment::Geometry { c: 3, h: 8, w: 8 } };
    let mut b = gcl::data::image::encode_jpeg(&s, 90, false).unwrap();
    let sof = b.windows(2).position(|m| m == [0xFF, 0xC0]).expect("a baseline frame header");
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    b
}
