//! The large-scale recipe's parts on small data: an ImageNet backbone trained in two stages
//! on JPEG list files with a validation list (selection on val, never on test), `gcl predict`
//! reproducing a run's test accuracy and torchvision's logits, and the presets' sources.
mod common;

use common::{fashion_samples, run_python, write_split};
use gcl::config::{annotate, preset, preset_notes, DataConfig};
use gcl::data::split::Profile;
use gcl::data::transform::{TestTransform, TrainTransform};
use gcl::data::DatasetKind;
use gcl::predict::{Format, PredictOptions};
use gcl::runtime::RunConfig;
use gcl::train::schedule::{scaled_lr, stage1_cosine_lr};
use std::path::Path;

fn predict_options(out: &Path) -> PredictOptions {
    PredictOptions {
        run: None,
        stage: None,
        arch: None,
        pretrained: None,
        class_names: None,
        inputs: Vec::new(),
        list: None,
        root: None,
        top_k: 3,
        format: Format::Csv,
        logits: false,
        features: false,
        out: Some(out.to_path_buf()),
        max_pixels: None,
        run_cfg: RunConfig::default(),
        verbose: false,
    }
}

fn read_csv(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let head: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
    lines.map(|l| head.iter().cloned().zip(l.split(',').map(str::to_string)).collect()).collect()
}

#[test]
fn predict_with_a_torchvision_state_dict_gives_torchvisions_logits() {
    let dir = tempfile::tempdir().unwrap();
    run_python("backbone_parity.py", &["predict".as_ref(), dir.path().as_os_str()]);
    let out = dir.path().join("ours.csv");
    let o = PredictOptions {
        arch: Some("resnet50".into()),
        pretrained: Some(dir.path().join("tv.pth")),
        inputs: vec![dir.path().join("images")],
        logits: true,
        ..predict_options(&out)
    };
    gcl::predict::run(&o).unwrap();
    let rows = read_csv(&out);
    assert_eq!(rows.len(), 4);
    let ours: Vec<f32> = rows.iter().flat_map(|r| (0..1000).map(move |c| r[&format!("logit_{c}")].parse::<f32>().unwrap())).collect();
    let want = tch::Tensor::read_safetensors(dir.path().join("logits.safetensors")).unwrap().remove(0).1;
    let ours = tch::Tensor::from_slice(&ours).view([4, 1000]);
    let rel = common::rel_diff(&ours, &want);
    eprintln!("gcl predict vs torchvision, ResNet-50 on 256x256 PNGs: relative error {rel:.1e}");
    assert!(rel < 1e-4, "logits differ from torchvision's by {rel:.2e}");
}

/// Fashion-MNIST as JPEG list files: train (10 per class), val and test (4 per class each).
fn jpeg_lists(dir: &Path) {
    let all = fashion_samples(18);
    // Each sample's rank within its class.
    let mut seen = [0usize; 10];
    let ranked: Vec<(usize, _)> = all.into_iter().map(|s| {
        seen[s.0] += 1;
        (seen[s.0] - 1, s)
    }).collect();
    let pick = |range: std::ops::Range<usize>| -> Vec<_> { ranked.iter().filter(|(k, _)| range.contains(k)).map(|(_, (l, s))| (*l, gcl::data::Sample { pixels: s.pixels.clone(), geometry: s.geometry })).collect() };
    write_split(dir, "train", &pick(0..10), true);
    write_split(dir, "val", &pick(10..14), true);
    write_split(dir, "test", &pick(14..18), true);
}

#[test]
fn a_resnet10_run_on_jpeg_lists_selects_on_val_and_predict_reproduces_its_accuracy() {
    let data = tempfile::tempdir().unwrap();
    jpeg_lists(data.path());
    let mut cfg = common::tiny_config();
    cfg.data = DataConfig {
        dataset: DatasetKind::List,
        dir: Some(data.path().to_path_buf()),
        // Relative names, found under the data folder as the presets' are.
        train_list: Some("train.txt".into()),
        val_list: Some("val.txt".into()),
        test_list: Some("test.txt".into()),
        train_transform: Some(TrainTransform::ResizedCrop { size: 32, scale: [0.35, 1.0], ratio: [0.75, 4.0 / 3.0], jitter: None }),
        test_transform: Some(TestTransform::ResizeCrop { resize: 36, size: 32 }),
        profile: Some(Profile::AsIs),
        ..DataConfig::default()
    };
    cfg.model.arch = Some("resnet10".into());
    (cfg.stage1.epochs, cfg.stage1.batch_size, cfg.stage2.epochs, cfg.stage2.batch_size) = (3, 20, 2, 20);
    let prepared = cfg.data.prepare().unwrap();
    assert_eq!((prepared.train.len(), prepared.val.as_ref().unwrap().len(), prepared.test.len()), (100, 40, 40));
    let out = tempfile::tempdir().unwrap();
    let res = gcl::train::train(&cfg, &prepared, &common::opts(out.path(), false, common::BOTH)).unwrap();
    assert_eq!(res.config["model"]["arch"], "resnet10");
    for (stage, last, best, epochs) in [(1, &res.stage1, &res.stage1_best_val, 3), (2, &res.stage2, &res.stage2_best_val, 2)] {
        let (last, best) = (last.as_ref().unwrap(), best.as_ref().expect("a val list: the best epoch on it is kept"));
        assert!((1..=epochs).contains(&best.epoch), "stage {stage}: best epoch {}", best.epoch);
        assert!(out.path().join(format!("stage{stage}.best-val.safetensors")).exists());
        if best.epoch == epochs {
            assert_eq!(&best.test, last, "stage {stage}: the best epoch is the last, so is its test accuracy");
        }
    }
    // The table shows the best-on-val rows beside the final ones.
    let table = gcl::eval::report::table(&res, 100, 20);
    assert!(table.contains("best on val (epoch"), "{table}");

    // gcl predict with the run's stage-1 model on the test list: the run's test accuracy.
    let csv = out.path().join("pred.csv");
    let o = PredictOptions { run: Some(out.path().to_path_buf()), stage: Some(1), list: Some(data.path().join("test.txt")), ..predict_options(&csv) };
    gcl::predict::run(&o).unwrap();
    let rows = read_csv(&csv);
    assert_eq!(rows.len(), 40);
    let right = rows.iter().filter(|r| Path::new(&r["path"]).parent().unwrap().file_name().unwrap().to_str() == Some(r["name_1"].as_str())).count();
    assert_eq!(right as f64 / 40.0, res.stage1.as_ref().unwrap().top1, "predict's top-1 is the run's");
    let probs: f64 = (1..=3).map(|k| rows[0][&format!("prob_{k}")].parse::<f64>().unwrap()).sum();
    assert!(probs > 0.0 && probs <= 1.0 + 1e-5);
    // Not a run folder: said so.
    let e = gcl::predict::run(&PredictOptions { run: Some(data.path().to_path_buf()), ..o }).unwrap_err();
    assert!(format!("{e:#}").contains("is not a run folder"), "{e:#}");
}

#[test]
fn the_large_scale_presets_name_the_source_of_their_numbers() {
    for (name, source) in [
        ("imagenet-lt", "Keke921/GCLLoss/issues/2"),
        ("inat2018", "ina2018_resnet50_stage1_mixup.yaml"),
        ("places-lt", "pla_train_backbone.py"),
        ("lift-imagenet-lt", "clip_vit_b16.yaml with `adaptformer True`"),
        ("lift-places-lt", "clip_vit_b16.yaml with `adaptformer True`"),
        ("lift-inat2018", "num_epochs 20 for iNaturalist 2018"),
    ] {
        let cfg = preset(name).unwrap();
        cfg.validate().unwrap();
        let notes = preset_notes(name);
        let mut keys: Vec<&str> = notes.iter().map(|(k, _)| *k).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), notes.len(), "{name}: one note per setting (a second would never be printed)");
        let text = annotate(&cfg.resolved().to_toml(), &notes);
        assert!(text.contains(source), "{name}:\n{text}");
        if name == "inat2018" {
            assert!(text.contains("test_list = \"iNaturalist18_val.txt\"  # iNaturalist18_val.txt: the literature reports"), "{text}");
        }
        // Every note lands on its setting; only an unset one (the weights file to give) is a header.
        let unset: Vec<&str> = text.lines().filter(|l| l.contains("(not set)")).collect();
        let expected = if name.contains("places-lt") || name.starts_with("lift") { vec!["model.pretrained"] } else { vec![] };
        assert_eq!(unset.iter().map(|l| l[2..].split(' ').next().unwrap()).collect::<Vec<_>>(), expected, "{name}");
        // The settings read back as they are.
        let back = gcl::config::Config::default().merge_table(text.parse().unwrap()).unwrap();
        assert_eq!(back, cfg.resolved(), "{name}");
    }
    let places = preset("places-lt").unwrap();
    assert_eq!((places.model.arch.as_deref(), places.model.freeze_through.as_deref(), places.model.reinit.clone()), (Some("resnet152"), Some("layer4.1"), vec!["layer4.2".to_string()]));
    // Freezing random weights is refused.
    let e = gcl::model::weights::freeze(
        &mut gcl::model::Classifier::new(&tch::nn::VarStore::new(tch::Device::Cpu).root(), &places.model, 3, 5, gcl::model::HeadKind::Cosine, Default::default()).unwrap(),
        &places.model,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("give model.pretrained"), "{e:#}");
}

#[test]
fn the_learning_rate_scales_with_the_batch_and_cosine_has_its_warm_up() {
    // Places-LT's 0.2 for 512 images is 0.1 for 256, 0.4 for 1024.
    assert_eq!(scaled_lr(0.2, 256, Some(512)), 0.1);
    assert_eq!(scaled_lr(0.2, 1024, Some(512)), 0.4);
    assert_eq!(scaled_lr(0.2, 1024, None), 0.2);
    // MiSLAS's cosine without warm-up: the base rate at epoch 0, half of it half-way.
    assert_eq!(stage1_cosine_lr(0.1, 0, 200, 0.0), 0.1);
    assert!((stage1_cosine_lr(0.1, 100, 200, 0.0) - 0.05).abs() < 1e-12);
    // With 5 warm-up epochs: 1/5 of it in the first.
    assert!((stage1_cosine_lr(0.1, 0, 100, 0.05) - 0.02).abs() < 1e-12);
}
