//! A user's own image folder: gcl looks at the images and chooses the recipe the settings leave
//! unset (small images at about their own size on the CIFAR ResNet, larger ones on the
//! ImageNet recipe, grey content as grey); a table naming some fields takes the rest from the
//! defaults; a held-out val set checks stage 2; every run writes TensorBoard event files that
//! TensorBoard's own reader reads.
mod common;

use gcl::config::{self, Config, NormalizeSetting, Stage2Method};
use gcl::data::augment::Geometry;
use gcl::data::image::{encode_jpeg, encode_png, Color};
use gcl::data::transform::{TestTransform, TrainTransform};
use gcl::data::{DatasetKind, Sample};
use serde_json::Value;
use std::borrow::Cow;
use std::path::Path;
use std::process::Command;

/// A w x h image of class `label`: a bright square whose place tells the class, on noise.
/// `colour`: its three channels differ (else equal: grey content stored as RGB).
fn picture(label: usize, w: usize, h: usize, colour: bool, k: usize) -> Sample<'static> {
    let mut px = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let inside = (x * 4 / w == label % 4) && (y * 2 / h == label / 4);
            let v = if inside { 220 } else { ((x * 31 + y * 17 + k * 7) % 50) as u8 };
            let p = &mut px[(y * w + x) * 3..][..3];
            p.copy_from_slice(&if colour { [v, v / 2, 255 - v] } else { [v, v, v] });
        }
    }
    Sample { pixels: Cow::Owned(px), geometry: Geometry { c: 3, h, w } }
}

/// DIR/{train,test}/class_<c>/<k>.{jpg,png}: `counts[c]` training images of class c and
/// `test` of each; sizes from `size(k)` (width, height); colour for the images `colour(k)` says.
fn folder(dir: &Path, counts: &[usize], test: usize, size: impl Fn(usize) -> (usize, usize), colour: impl Fn(usize) -> bool) {
    for (split, per) in [("train", None), ("test", Some(test))] {
        for (c, &n) in counts.iter().enumerate() {
            let d = dir.join(split).join(format!("class_{c}"));
            std::fs::create_dir_all(&d).unwrap();
            for k in 0..per.unwrap_or(n) {
                let (w, h) = size(k + c);
                let img = picture(c, w, h, colour(k), k);
                // JPEG and PNG both: a folder of the user's has either.
                let (bytes, ext) = if k % 2 == 0 { (encode_jpeg(&img, 92, false).unwrap(), "jpg") } else { (encode_png(&img).unwrap(), "png") };
                std::fs::write(d.join(format!("{k:03}.{ext}")), bytes).unwrap();
            }
        }
    }
}

/// The settings for `--dataset folder --data DIR` with nothing else set, fitted to the data
/// as the command line does.
fn folder_config(dir: &Path) -> Config {
    let mut c = config::preset("fmnist-lt-quick").unwrap();
    c.data.dataset = DatasetKind::Folder;
    c.data.dir = Some(dir.to_path_buf());
    c.fit_to_data()
}

/// Small digit-like images: 28 to 44 px, of mixed sizes and shapes.
fn small_size(k: usize) -> (usize, usize) {
    (28 + (k * 5) % 17, 28 + (k * 3) % 17)
}

#[test]
fn small_grey_images_of_mixed_sizes_train_at_about_their_size_on_the_cifar_resnet() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &[20, 8, 3], 2, small_size, |_| false);
    let c = folder_config(dir.path());
    // Shorter sides of the sample: its median, rounded to a multiple of 4.
    let mut short: Vec<usize> = (0..3).flat_map(|c| (0..[20, 8, 3][c]).map(move |k| small_size(k + c))).map(|(w, h)| w.min(h)).collect();
    short.sort();
    let side = (short[short.len() / 2] + 2) / 4 * 4;
    assert!((28..=44).contains(&side));
    assert_eq!(c.model.arch.as_deref(), Some(gcl::model::CIFAR));
    assert_eq!(c.data.color, Some(Color::Grey), "grey content stored as RGB JPEG and PNG is read as grey");
    assert_eq!(c.data.train_transform, Some(TrainTransform::ResizePadCrop { size: side }));
    assert_eq!(c.data.test_transform, Some(TestTransform::ResizeCrop { resize: side, size: side }));
    let note = c.fitted.as_deref().expect("the choice is said");
    assert!(note.contains("median") && note.contains("cifar-resnet") && note.contains("data.color = grey") && note.contains("override"), "{note}");
    // Mixed sizes batch: the training transform makes every image side x side.
    let data = c.data.prepare().unwrap();
    assert_eq!(data.train.channels(), 1);
}

#[test]
fn large_colour_photos_get_resnet18_and_the_imagenet_recipe() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &[4, 2], 1, |k| (300 + k * 10, 240 + k * 4), |_| true);
    let c = folder_config(dir.path());
    assert_eq!(c.model.arch.as_deref(), Some("resnet18"));
    assert_eq!(c.data.color, Some(Color::Rgb));
    assert_eq!(c.data.train_transform, Some(TrainTransform::imagenet(224)));
    assert_eq!(c.data.test_transform, Some(TestTransform::ResizeCrop { resize: 256, size: 224 }));
    // A CLIP tower gets CLIP's preprocessing at its size: bicubic resize and OpenAI's statistics.
    let mut clip = config::preset("fmnist-lt-quick").unwrap();
    (clip.data.dataset, clip.data.dir, clip.model.arch) = (DatasetKind::Folder, Some(dir.path().to_path_buf()), Some("clip_vit_b_16".into()));
    let clip = clip.fit_to_data();
    assert_eq!(clip.data.test_transform, Some(TestTransform::Clip { size: 224 }));
    let n = gcl::data::augment::Normalize::CLIP;
    assert_eq!(clip.data.normalize, Some(gcl::config::NormalizeSetting::Fixed { mean: n.mean, std: n.std }));
    // 100-px images train at 96 px (a multiple of 16), still on the ImageNet ResNet.
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &[3, 2], 1, |_| (120, 100), |_| true);
    let c = folder_config(dir.path());
    assert_eq!((c.model.arch.as_deref(), c.data.train_transform.and_then(|t| t.size())), (Some("resnet18"), Some(96)));
    assert_eq!(c.data.test_transform, Some(TestTransform::ResizeCrop { resize: 110, size: 96 }));
}

#[test]
fn grey_and_colour_mixed_are_read_as_rgb() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &[6, 6], 1, small_size, |k| k % 3 == 0);
    let c = folder_config(dir.path());
    assert_eq!(c.data.color, Some(Color::Rgb));
    assert!(c.fitted.unwrap().contains("grey"), "the note counts the grey images");
}

#[test]
fn what_the_settings_choose_stays_and_the_presets_keep_their_recipes() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &[6, 3], 1, small_size, |_| false);
    let mut c = config::preset("fmnist-lt-quick").unwrap();
    (c.data.dataset, c.data.dir, c.model.arch) = (DatasetKind::Folder, Some(dir.path().into()), Some("resnet18".into()));
    let c = c.fit_to_data();
    assert_eq!(c.model.arch.as_deref(), Some("resnet18"), "--arch stays");
    assert!(matches!(c.data.train_transform, Some(TrainTransform::ResizePadCrop { .. })), "the transforms are still fitted");
    // A training transform that is set decides the backbone by its size.
    let mut c = config::preset("fmnist-lt-quick").unwrap();
    (c.data.dataset, c.data.dir) = (DatasetKind::Folder, Some(dir.path().into()));
    c.data.train_transform = Some(TrainTransform::imagenet(128));
    assert_eq!(c.fit_to_data().model.arch.as_deref(), Some("resnet18"));
    // Every benchmark preset sets its whole recipe: nothing is left to fit.
    for p in ["imagenet-lt", "inat2018", "places-lt"] {
        let mut c = config::preset(p).unwrap();
        c.data.dir = Some(dir.path().into());
        let fitted = c.clone().fit_to_data();
        assert_eq!(fitted, c, "{p}");
        assert!(fitted.fitted.is_none(), "{p}");
    }
    // The in-memory sets are not looked at.
    assert!(config::preset("fmnist-lt").unwrap().fit_to_data().fitted.is_none());
}

#[test]
fn partial_overrides_take_the_other_fields_from_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &[6, 3], 1, small_size, |_| false);
    let fitted = folder_config(dir.path());
    let c = fitted.clone().set("data.train_transform.size=64").unwrap();
    assert_eq!(c.data.train_transform, Some(TrainTransform::ResizePadCrop { size: 64 }), "one field of the chosen recipe");
    // A table naming some fields of another transform: the rest are torchvision's defaults.
    let c = fitted.clone().set(r#"data.train_transform={name="resized-crop", size=32, scale=[0.6,1.0]}"#).unwrap();
    assert_eq!(c.data.train_transform, Some(TrainTransform::ResizedCrop { size: 32, scale: [0.6, 1.0], ratio: [0.75, 4.0 / 3.0], jitter: None }));
    // An unset transform (no data to look at) fills from the dataset's default.
    let mut plain = config::preset("fmnist-lt-quick").unwrap();
    plain.data.dataset = DatasetKind::Folder;
    let c = plain.clone().set("data.train_transform.scale=[0.5,1.0]").unwrap();
    assert_eq!(c.data.train_transform, Some(TrainTransform::ResizedCrop { size: 224, scale: [0.5, 1.0], ratio: [0.75, 4.0 / 3.0], jitter: None }));
    let c = plain.clone().set("data.test_transform.size=200").unwrap();
    assert_eq!(c.data.test_transform, Some(TestTransform::ResizeCrop { resize: 256, size: 200 }));
    // Other table-valued settings too.
    let c = plain.clone().set("data.normalize={name=\"fixed\", mean=[0.5, 0.5, 0.5]}").unwrap();
    assert_eq!(c.data.normalize, Some(NormalizeSetting::Fixed { mean: [0.5; 3], std: [0.229, 0.224, 0.225] }));
    let c = plain.clone().set("data.normalize.std=[0.3,0.3,0.3]");
    assert!(c.is_err(), "the default normalisation (imagenet) has no std field: {c:?}");
    let ce = Config { stage1: gcl::config::Stage1Config { loss: config::loss_by_name("ce").unwrap(), ..plain.stage1.clone() }, ..plain.clone() };
    let c = ce.set("stage2.method={name=\"tau-norm\"}").unwrap();
    assert_eq!(c.stage2.method, Stage2Method::TauNorm { tau: 1.0 });
    let c = plain.clone().set("data.split={rule=\"random\"}").unwrap();
    assert_eq!(c.data.split, gcl::data::split::SplitRule::Random { seed: 0 });
    // The same in a config file.
    let f = dir.path().join("over.toml");
    std::fs::write(&f, "[data.train_transform]\nsize = 48\n").unwrap();
    assert_eq!(fitted.clone().merge_file(&f).unwrap().data.train_transform, Some(TrainTransform::ResizePadCrop { size: 48 }));
    std::fs::write(&f, "[data.test_transform]\nname = \"resize-crop\"\nsize = 40\n").unwrap();
    assert_eq!(plain.clone().merge_file(&f).unwrap().data.test_transform, Some(TestTransform::ResizeCrop { resize: 256, size: 40 }));
    // A field that does not exist: the error lists those that do.
    let err = format!("{:#}", fitted.clone().set("data.train_transform.sise=64").unwrap_err());
    assert!(err.contains("`data.train_transform` has the fields") && err.contains("size") && err.contains("name"), "{err}");
    let err = format!("{:#}", plain.clone().set("data.train_transform.sise=64").unwrap_err());
    assert!(err.contains("scale") && err.contains("ratio") && err.contains("jitter"), "{err}");
    let err = format!("{:#}", plain.set("dta.ratio=3").unwrap_err());
    assert!(err.contains("the sections are") && err.contains("stage1"), "{err}");
}

#[test]
fn val_fraction_holds_out_the_last_images_of_each_class() {
    let labels = [0i64, 0, 0, 0, 0, 1, 1, 1, 2, 0, 1];
    let (keep, held) = gcl::data::hold_out(&labels, 3, 0.2);
    // Class 0 (6 images): ceil(1.2) = 2 held, the last two; class 1 (4): 1; class 2 (1): none.
    assert_eq!(held, vec![4, 9, 10]);
    assert_eq!(keep, vec![0, 1, 2, 3, 5, 6, 7, 8]);
    // At most n - 1 of a class are held out.
    let (keep, held) = gcl::data::hold_out(&[0, 0, 1, 1, 1], 2, 0.8);
    assert_eq!((keep, held), (vec![0, 2], vec![1, 3, 4]));

    let mut cfg = common::tiny_config();
    cfg.data.val_fraction = 0.1;
    let data = common::prepare(&cfg, common::tiny_fashion_mnist());
    let val = data.val.as_ref().expect("a val set");
    let val_counts = gcl::data::class_counts(val.labels(), 10);
    assert_eq!(val_counts.iter().sum::<usize>() + data.train.len(), common::prepare(&common::tiny_config(), common::tiny_fashion_mnist()).train.len());
    for (c, (&v, &t)) in val_counts.iter().zip(&data.counts).enumerate() {
        assert_eq!(v, ((v + t) as f64 * 0.1).ceil() as usize, "class {c}");
    }
    cfg.data.val_fraction = 0.95;
    assert!(cfg.validate().is_err());
}

fn results_with(stage1_val: Option<f64>, stage2_val: Option<f64>) -> gcl::eval::report::Results {
    let acc = |top1: f64| gcl::eval::Accuracy { top1, per_class: vec![top1, top1], many: Some(top1), medium: None, few: Some(top1), experts: Vec::new() };
    let mut r: gcl::eval::report::Results = serde_json::from_value(serde_json::json!({
        "stage1": null, "stage2": null, "train_counts": [150, 10], "config": {}
    }))
    .unwrap();
    (r.stage1, r.stage2, r.stage1_val, r.stage2_val) = (Some(acc(0.6)), Some(acc(0.5)), stage1_val, stage2_val);
    r
}

#[test]
fn a_stage_2_worse_on_val_is_marked_and_an_unchecked_one_is_said() {
    let t = gcl::eval::report::table(&results_with(Some(0.8), Some(0.7)), 100, 20);
    assert!(t.contains("stage 2 (re-trained) [worse than stage 1 on val]") && t.contains("WORSE than stage 1 on the validation set (70.00 against 80.00)"), "{t}");
    let t = gcl::eval::report::table(&results_with(Some(0.7), Some(0.8)), 100, 20);
    assert!(!t.contains("worse") && t.contains("checked on the validation set: 80.00 against stage 1's 70.00"), "{t}");
    let t = gcl::eval::report::table(&results_with(None, None), 100, 20);
    assert!(t.contains("stage 2 was not checked (no validation set)") && t.contains("data.val_fraction") && t.contains("--val-per-class"), "{t}");
}

/// TensorBoard's own reader on a run folder: {tag: [(step, value)]}.
fn tensorboard_scalars(dir: &Path) -> serde_json::Map<String, Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(common::venv_python()).arg(root.join("scripts/read_tensorboard.py")).arg(dir).output().unwrap();
    assert!(out.status.success(), "read_tensorboard.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_object().unwrap().clone()
}

fn series(tb: &serde_json::Map<String, Value>, tag: &str) -> Vec<(i64, f64)> {
    tb.get(tag).unwrap_or_else(|| panic!("no scalar {tag} in {:?}", tb.keys().collect::<Vec<_>>())).as_array().unwrap().iter().map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap())).collect()
}

#[test]
fn every_run_writes_tensorboard_events_that_tensorboard_reads() {
    let out = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny_config();
    (cfg.stage1.epochs, cfg.data.val_fraction) = (3, 0.1);
    let data = common::prepare(&cfg, common::tiny_fashion_mnist());
    let res = gcl::train::train(&cfg, &data, &common::opts(out.path(), false, common::BOTH)).unwrap();
    let tb = tensorboard_scalars(out.path());
    // Each epoch's numbers are metrics.jsonl's (as f32).
    let lines: Vec<Value> = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (stage, epochs) in [(1, 3), (2, 1)] {
        let mine: Vec<&Value> = lines.iter().filter(|l| l["stage"] == stage).collect();
        for key in ["loss", "lr", "images_per_s"] {
            let s = series(&tb, &format!("stage{stage}/{key}"));
            assert_eq!(s.len(), epochs, "stage{stage}/{key}");
            for ((step, v), line) in s.iter().zip(&mine) {
                assert_eq!(*step, line["epoch"].as_i64().unwrap());
                let want = line[key].as_f64().unwrap();
                assert!((v - want).abs() <= 1e-6 * want.abs().max(1.0), "stage{stage}/{key} at {step}: {v} vs {want}");
            }
        }
        assert_eq!(series(&tb, &format!("stage{stage}/val_top1")).len(), epochs);
    }
    let acc = |a: &Option<gcl::eval::Accuracy>| a.as_ref().unwrap().top1;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    assert!(close(series(&tb, "stage1/test_top1")[0].1, acc(&res.stage1)));
    assert_eq!(series(&tb, "stage2/test_top1")[0].0, 1);
    assert!(close(series(&tb, "stage2/test_top1")[0].1, acc(&res.stage2)));
    assert!(close(series(&tb, "stage1/val_top1_final")[0].1, res.stage1_val.unwrap()));
    // The Gaussian's settings of each stage, at its start.
    assert!(close(series(&tb, "stage1/loss_params/noise_mul")[0].1, 0.5));
    assert!(close(series(&tb, "stage2/loss_params/s")[0].1, 20.0));
    // --overwrite takes the event files away with the rest of the run.
    let mut again = common::opts(out.path(), false, &[gcl::train::Stage::One]);
    again.overwrite = true;
    cfg.stage1.epochs = 1;
    gcl::train::train(&cfg, &data, &again).unwrap();
    let events: Vec<_> = std::fs::read_dir(out.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents.")).collect();
    assert_eq!(events.len(), 1, "one event file after --overwrite");
    assert_eq!(series(&tensorboard_scalars(out.path()), "stage1/loss").len(), 1);
}

#[test]
fn gcl_train_on_a_folder_with_no_settings_says_what_it_chose() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &[24, 10, 4], 3, small_size, |_| false);
    let exe = env!("CARGO_BIN_EXE_gcl");
    let data = dir.path().to_str().unwrap();
    let run = dir.path().join("run");
    let o = Command::new(exe).args(["train", "--dataset", "folder", "--data", data, "--epochs", "2", "--cls-epochs", "1", "--out"]).arg(&run).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("chose data.color = grey") && stderr.contains("model.arch = cifar-resnet"), "{stderr}");
    assert!(stdout.contains("stage 2 was not checked"), "{stdout}");
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("arch = \"cifar-resnet\"") && saved.contains("color = \"grey\"") && saved.contains("name = \"resize-pad-crop\""), "{saved}");
    // gcl config with the same flags prints the chosen settings, a partial --set on top.
    let o = Command::new(exe).args(["config", "--dataset", "folder", "--data", data, "--set", "data.train_transform.size=40"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("# chosen from the data:") && text.contains("name = \"resize-pad-crop\"\nsize = 40"), "{text}");
    // gcl data check suggests them.
    let o = Command::new(exe).args(["data", "check", "--dataset", "folder", "--data", data]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("suggested settings") && text.contains("data.color = \"grey\"") && text.contains("resize-pad-crop"), "{text}");
}
