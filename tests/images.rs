//! Image-file datasets: list files and class folders behind the same seam as the in-memory
//! sets, bad files named by path, a loader whose batches do not depend on its worker count,
//! and `gcl data check` / `gcl data make` on real data (Fashion-MNIST written as files).
mod common;

use common::{fashion_samples, write_split};

use gcl::config::{DataConfig, NormalizeSetting, Unreadable};
use gcl::data::augment::{Augment, Geometry};
use gcl::data::files::FileOptions;
use gcl::data::image::Color;
use gcl::data::loader::{epoch_rng, EpochPlan, Layout, Workers};
use gcl::data::sampler::Sampler;
use gcl::data::split::Profile;
use gcl::data::transform::{TestTransform, TrainTransform};
use gcl::data::{open, DatasetKind, Source};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn file_options(dir: &Path, color: Color, skip: bool) -> FileOptions {
    FileOptions { train_list: Some(dir.join("train.txt")), test_list: Some(dir.join("test.txt")), color, skip_unreadable: skip, ..Default::default() }
}

#[test]
fn png_files_hold_the_idx_pixels_in_folders_and_lists_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = fashion_samples(3);
    write_split(tmp.path(), "train", &samples, false);
    write_split(tmp.path(), "test", &samples[..10], false);
    for kind in [DatasetKind::Folder, DatasetKind::List] {
        let ds = open(kind, Some(tmp.path()), &file_options(tmp.path(), Color::Grey, false)).unwrap();
        assert_eq!(ds.train.len(), samples.len());
        assert_eq!(ds.train.channels(), 1);
        assert!(ds.train.from_files() && ds.val.is_none());
        // Folders: classes sorted by name; lists: named after the folder each label's files share.
        let names: Vec<String> = (0..10).map(|c| format!("class_{c}")).collect();
        assert_eq!(ds.train.class_names(), &names[..]);
        for i in 0..ds.train.len() {
            let s = ds.train.sample(i).unwrap();
            // Files are named by their index in `samples`.
            let k: usize = ds.train.path(i).unwrap().file_stem().unwrap().to_str().unwrap().parse().unwrap();
            assert_eq!(ds.train.labels()[i], samples[k].0 as i64);
            assert_eq!(s.geometry, Geometry { c: 1, h: 28, w: 28 });
            assert_eq!(s.pixels, samples[k].1.pixels, "{kind:?} sample {i}");
        }
        // RGB (torchvision's default) repeats the grey channel.
        let rgb = open(kind, Some(tmp.path()), &file_options(tmp.path(), Color::Rgb, false)).unwrap();
        let (g, c) = (ds.train.sample(4).unwrap(), rgb.train.sample(4).unwrap());
        assert_eq!(c.geometry.c, 3);
        assert!(c.pixels.chunks(3).zip(g.pixels.iter()).all(|(p, &v)| p == [v, v, v]));
    }
}

#[test]
fn list_problems_are_named_by_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = fashion_samples(2);
    let rels = write_split(tmp.path(), "train", &samples, false);
    write_split(tmp.path(), "test", &samples[..4], false);
    let opts = file_options(tmp.path(), Color::Grey, false);
    let list = tmp.path().join("train.txt");
    let text = std::fs::read_to_string(&list).unwrap();

    std::fs::write(&list, text.replacen(" 0\n", " zero\n", 1)).unwrap();
    let err = format!("{:#}", open(DatasetKind::List, Some(tmp.path()), &opts).err().unwrap());
    assert!(err.contains("train.txt:") && err.contains("`zero` is not a class label"), "{err}");

    // A missing file: its path and list line, and a hint about the root.
    std::fs::write(&list, &text).unwrap();
    std::fs::remove_file(tmp.path().join(&rels[5])).unwrap();
    let err = format!("{:#}", open(DatasetKind::List, Some(tmp.path()), &opts).err().unwrap());
    assert!(err.contains(&rels[5]) && err.contains("train.txt:6") && err.contains("joined to --data"), "{err}");
    // Skipping: left out, and reported.
    let ds = open(DatasetKind::List, Some(tmp.path()), &file_options(tmp.path(), Color::Grey, true)).unwrap();
    assert_eq!(ds.train.len(), samples.len() - 1);
    let bad = ds.train.unreadable();
    assert!(bad.len() == 1 && bad[0].contains(&rels[5]) && bad[0].ends_with("missing"), "{bad:?}");

    // A folder without test/ says what the layout is.
    std::fs::remove_dir_all(tmp.path().join("test")).unwrap();
    let err = format!("{:#}", open(DatasetKind::Folder, Some(tmp.path()), &opts).err().unwrap());
    assert!(err.contains("no test/ folder"), "{err}");
}

/// A JPEG folder dataset of upscaled Fashion-MNIST images of varied sizes.
fn jpeg_folder(dir: &Path, per_class: usize) -> Vec<String> {
    let samples = fashion_samples(per_class);
    let rels = write_split(dir, "train", &samples, true);
    write_split(dir, "test", &samples[..20], true);
    rels
}

fn imagenet_style(size: usize) -> (TrainTransform, TestTransform) {
    (
        TrainTransform::ResizedCrop { size, scale: [0.08, 1.0], ratio: [3.0 / 4.0, 4.0 / 3.0], jitter: Some([0.4, 0.4, 0.4]) },
        TestTransform::ResizeCrop { resize: size + size / 7, size },
    )
}

#[test]
fn batches_are_the_same_whatever_the_number_of_workers() {
    let tmp = tempfile::tempdir().unwrap();
    jpeg_folder(tmp.path(), 4);
    let ds = open(DatasetKind::Folder, Some(tmp.path()), &file_options(tmp.path(), Color::Rgb, false)).unwrap();
    let source: Arc<dyn Source> = ds.train;
    let counts = gcl::data::class_counts(source.labels(), source.num_classes());
    let batches = |workers: usize, epoch: u64| -> Vec<(Vec<f32>, Vec<i64>, f64)> {
        let plan = EpochPlan {
            source: source.clone(),
            counts: counts.clone(),
            norm: gcl::data::augment::Normalize::IMAGENET,
            aug: Augment { transform: imagenet_style(24).0, crop_pad: 0, flip: true, mixup_alpha: Some(1.0) },
            sampler: Sampler::ClassBalanced,
            batch_size: 6,
            layout: Layout { device: tch::Device::Cpu, channels_last: true },
            workers: Workers { workers, ahead: 2 },
            shard: gcl::data::loader::Shard::ALL,
        };
        plan.epoch(epoch_rng(7, 1, epoch))
            .map(|b| {
                let b = b.unwrap();
                let x = Vec::<f32>::try_from(b.x.contiguous().view(-1)).unwrap();
                let y = Vec::<i64>::try_from(&b.y).unwrap();
                (x, y, b.mix.map_or(-1.0, |m| m.0))
            })
            .collect()
    };
    let inline = batches(0, 3);
    assert_eq!(inline.len(), 40 / 6 + 1);
    assert_eq!(inline[0].0.len(), 6 * 3 * 24 * 24);
    for w in [1, 3] {
        assert!(batches(w, 3) == inline, "{w} workers give other batches than the training thread");
    }
    // Another epoch draws other crops.
    assert!(batches(2, 4)[0].0 != inline[0].0);
}

/// `cfg` set up for the JPEG folder in `dir`: small ImageNet-style transforms, ResNet-8,
/// one epoch per stage.
fn jpeg_run_config(dir: &Path) -> gcl::config::Config {
    let mut c = common::tiny_config();
    let (train, test) = imagenet_style(24);
    c.data = DataConfig {
        dataset: DatasetKind::Folder,
        dir: Some(dir.to_path_buf()),
        train_transform: Some(train),
        test_transform: Some(test),
        profile: Some(Profile::AsIs),
        ..DataConfig::default()
    };
    c.stage1.epochs = 1;
    c.stage1.batch_size = 8;
    c.stage2.batch_size = 8;
    c
}

#[test]
fn a_jpeg_folder_trains_both_stages_and_unreadable_files_stop_or_are_skipped_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let rels = jpeg_folder(tmp.path(), 5);
    let out = tempfile::tempdir().unwrap();
    let cfg = jpeg_run_config(tmp.path());
    let res = gcl::train::train(&cfg, &cfg.data.prepare().unwrap(), &common::opts(out.path(), false, common::BOTH)).unwrap();
    assert!(res.stage2.is_some() && res.unreadable.is_empty());
    assert_eq!(res.class_names[3], "class_3");
    assert_eq!(res.config["data"]["train_transform"]["name"], "resized-crop");

    // A JPEG cut in half: the run stops and names it ...
    let bad = tmp.path().join(&rels[7]);
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let out2 = tempfile::tempdir().unwrap();
    let err = format!("{:#}", gcl::train::train(&cfg, &cfg.data.prepare().unwrap(), &common::opts(out2.path(), false, common::BOTH)).err().unwrap());
    assert!(err.contains(&rels[7]) && err.contains("truncated JPEG"), "{err}");
    // ... or, skipping, goes on and lists it in results.json.
    let mut skip = cfg.clone();
    skip.data.unreadable = Unreadable::Skip;
    let out3 = tempfile::tempdir().unwrap();
    let res = gcl::train::train(&skip, &skip.data.prepare().unwrap(), &common::opts(out3.path(), false, common::BOTH)).unwrap();
    assert!(res.unreadable.len() == 1 && res.unreadable[0].contains(&rels[7]), "{:?}", res.unreadable);
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out3.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(saved["unreadable"].as_array().unwrap().len(), 1);
}

fn gcl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gcl"))
}

#[test]
fn gcl_data_check_names_a_deleted_and_a_truncated_file_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let rels = jpeg_folder(tmp.path(), 3);
    let list_args = |dir: &Path| {
        vec!["data".to_string(), "check".into(), "--dataset".into(), "list".into(), "--data".into(), dir.display().to_string(), "--train-list".into(), dir.join("train.txt").display().to_string(), "--test-list".into(), dir.join("test.txt").display().to_string()]
    };
    let ok = gcl().args(list_args(tmp.path())).output().unwrap();
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(text.contains("sha256 ") && text.lines().any(|l| l.starts_with("train ") && l.split_whitespace().nth(1) == Some("30")), "{text}");
    std::fs::remove_file(tmp.path().join(&rels[2])).unwrap();
    let cut = tmp.path().join(&rels[9]);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let bad = gcl().args(list_args(tmp.path())).output().unwrap();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success());
    assert!(text.contains(&format!("{}: missing", rels[2])) || text.contains(&rels[2]), "{text}");
    assert!(text.contains(&rels[9]) && text.contains("truncated JPEG"), "{text}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("2 bad files"));
}

#[test]
fn fashion_mnist_written_as_png_folders_is_the_same_long_tailed_training_set() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fm");
    let made = gcl().args(["data", "make", "--from", "fashion-mnist", "--val-per-class", "0", "--out"]).arg(&out).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    // The IDX split of `gcl train` (ratio 100, exp) ...
    let idx = DataConfig::default().prepare().unwrap();
    // ... and the folder as it is, read as grey with the same statistics.
    let files = DataConfig {
        dataset: DatasetKind::Folder,
        dir: Some(out.clone()),
        color: Some(Color::Grey),
        train_transform: Some(TrainTransform::PadCrop),
        test_transform: Some(TestTransform::None),
        normalize: Some(NormalizeSetting::Fit),
        ..DataConfig::default()
    }
    .prepare()
    .unwrap();
    assert_eq!(files.counts, idx.counts);
    assert_eq!(files.test.len(), idx.test.len());
    assert_eq!(files.norm, idx.norm, "the same pixels give the same fitted statistics");
    // Same images in the same order within each class (files are named by IDX index).
    for c in 0..10 {
        let of = |s: &dyn Source| (0..s.len()).filter(|&i| s.labels()[i] == c).map(|i| s.sample(i).unwrap().pixels.into_owned()).collect::<Vec<_>>();
        assert!(of(files.train.as_ref()) == of(idx.train.as_ref()), "class {c}");
    }
}
