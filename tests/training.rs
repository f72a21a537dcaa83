//! Training end to end on real data (a tiny Fashion-MNIST-LT), `gcl compare`, the optimiser,
//! the schedules and the batch augmentation.
mod common;
use common::*;
use gcl::data::augment::{place, Geometry, Mixup, Normalize, Placement};
use gcl::kernels::Kernels;
use gcl::model::HeadKind;
use gcl::train::schedule::{cosine_lr, stage1_lr};
use gcl::train::{train, Stage, TrainOptions};
use rand::SeedableRng;
use tch::{nn, Device, Kind, Tensor};

#[test]
fn resnet32_has_the_cifar_shape_and_cosine_logits_are_cosines() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = classifier(&vs, 32, 3, 10, HeadKind::Cosine, Kernels::NONE).unwrap();
    let params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    // ResNet-32 has about 0.46M parameters; plus the 64 x 10 cosine classifier.
    assert!((460_000..470_000).contains(&params), "{params}");
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let z = m.forward(&x, false).unwrap();
    assert_eq!(z.size(), vec![4, 10]);
    assert!(z.abs().max().double_value(&[]) <= 1.0 + 1e-5);
    assert!(classifier(&vs, 31, 3, 10, HeadKind::Cosine, Kernels::NONE).is_err());
}

#[test]
fn schedules_follow_the_authors_recipe() {
    // 200 epochs: warm-up over 5, x0.1 after epoch 160, x0.01 after 180.
    assert!((stage1_lr(0.1, 0, 200, 0.025, &[0.8, 0.9]) - 0.02).abs() < 1e-12);
    assert!((stage1_lr(0.1, 4, 200, 0.025, &[0.8, 0.9]) - 0.1).abs() < 1e-12);
    assert!((stage1_lr(0.1, 160, 200, 0.025, &[0.8, 0.9]) - 0.01).abs() < 1e-12);
    assert!((stage1_lr(0.1, 180, 200, 0.025, &[0.8, 0.9]) - 0.001).abs() < 1e-12);
    assert!((cosine_lr(0.02, 0, 30) - 0.02).abs() < 1e-12);
    assert!(cosine_lr(0.02, 29, 30) < 0.0002);
}

#[test]
fn crop_flip_and_mixup_move_pixels_as_the_reference_does() {
    let g = Geometry { c: 1, h: 2, w: 3 };
    let img: Vec<u8> = vec![0, 51, 102, 153, 204, 255];
    let norm = &Normalize::uniform(0.5, 0.25);
    let v = |p: u8| ((p as f64 / 255.0 - 0.5) / 0.25) as f32;
    let close = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    let mut out = vec![9.0f32; 6];
    place(&mut out, &img, g, norm, Placement::IDENTITY, false);
    let want: Vec<f32> = img.iter().map(|&p| v(p)).collect();
    assert!(out.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6), "{out:?}");
    // Crop one pixel to the right: columns shift left, zeros (normalised padding) enter.
    place(&mut out, &img, g, norm, Placement { dy: 0, dx: 1, flip: false }, false);
    assert!(close(&out, &[v(51), v(102), 0.0, v(204), v(255), 0.0]), "{out:?}");
    // Down one row, and flipped.
    place(&mut out, &img, g, norm, Placement { dy: 1, dx: 0, flip: true }, false);
    assert!(close(&out, &[v(255), v(204), v(153), 0.0, 0.0, 0.0]), "{out:?}");
    // Images arrive interleaved (H, W, C); channels-last keeps the channel innermost,
    // channels-first makes planes; each channel has its own statistics.
    let g3 = Geometry { c: 3, h: 1, w: 2 };
    let rgb: Vec<u8> = vec![10, 30, 50, 20, 40, 60]; // R: 10 20, G: 30 40, B: 50 60
    let per_channel = Normalize { mean: [0.0, 10.0 / 255.0, 0.0], std: [1.0 / 255.0, 1.0 / 255.0, 2.0 / 255.0] };
    let mut hwc = vec![0f32; 6];
    place(&mut hwc, &rgb, g3, &per_channel, Placement::IDENTITY, true);
    assert!(close(&hwc, &[10.0, 20.0, 25.0, 20.0, 30.0, 30.0]), "{hwc:?}");
    place(&mut hwc, &rgb, g3, &per_channel, Placement::IDENTITY, false);
    assert!(close(&hwc, &[10.0, 20.0, 20.0, 30.0, 25.0, 30.0]), "{hwc:?}");
    // Mixup blends each image with its partner.
    let mut batch = vec![1.0f32, 1.0, 3.0, 3.0];
    Mixup { lam: 0.25, perm: vec![1, 0] }.apply(&mut batch, 2);
    assert_eq!(batch, vec![2.5, 2.5, 1.5, 1.5]);
    let m = Mixup::draw(1.0, 8, &mut rand::rngs::StdRng::seed_from_u64(3));
    assert!(m.lam > 0.0 && m.lam < 1.0);
    let mut p = m.perm.clone();
    p.sort();
    assert_eq!(p, (0..8).collect::<Vec<_>>());
}

#[test]
fn tiny_two_stage_run_beats_chance_and_writes_results() {
    let cfg = tiny_config();
    let data = prepare(&cfg, tiny_fashion_mnist());
    assert_eq!(data.counts[0], 200);
    assert_eq!(data.counts[9], 20);
    let dir = tempfile::tempdir().unwrap();
    let res = train(&cfg, &data, &opts(dir.path(), false, BOTH)).unwrap();
    let s1 = res.stage1.as_ref().unwrap();
    let s2 = res.stage2.as_ref().unwrap();
    // Chance is 10%.
    assert!(s1.top1 > 0.35, "stage 1 top-1 {}", s1.top1);
    assert!(s2.top1 > 0.35, "stage 2 top-1 {}", s2.top1);
    assert_eq!(s1.per_class.len(), 10);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(json["train_counts"][0], 200);
    assert!(json["stage2"]["top1"].as_f64().unwrap() > 0.35);
    assert!(json["stage1"]["many"].is_number() && json["stage1"]["few"].is_null());
    assert_eq!(json["class_names"][9], "Ankle boot");
    assert!(dir.path().join("stage1.safetensors").exists() && dir.path().join("stage2.safetensors").exists());
    let split = std::fs::read_to_string(dir.path().join("split.txt")).unwrap();
    assert_eq!(split.lines().count(), data.train.len());

    // Stage 2 again from the stage-1 checkpoint gives the same classifier: runs repeat.
    let dir2 = tempfile::tempdir().unwrap();
    let opts2 = TrainOptions { stage1_checkpoint: Some(dir.path().join("stage1.safetensors")), ..opts(dir2.path(), false, &[Stage::Two]) };
    let res2 = train(&cfg, &data, &opts2).unwrap();
    assert_eq!(res2.stage2.unwrap().per_class, s2.per_class);
}

#[test]
fn compare_shares_stage1_reuses_finished_runs_and_writes_tables() {
    use gcl::compare::{parse_methods, run, DEFAULT_METHODS};
    let all = parse_methods(DEFAULT_METHODS, "default").unwrap();
    let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["ce", "focal", "ldam-drw", "balanced-softmax", "logit-adjusted", "crt", "lws", "ncm", "gcl-e", "gcl-a"]);
    let mut base = tiny_config();
    base.stage1.epochs = 1;
    base.stage2.epochs = 1;
    for m in &all {
        m.config(&base).unwrap(); // every default method is a valid configuration
    }
    let methods: Vec<_> = all.into_iter().filter(|m| m.name == "ce" || m.name == "crt").collect();
    let data = prepare(&base, tiny_fashion_mnist());
    let dir = tempfile::tempdir().unwrap();
    let rows = run(&base, &methods, &data, dir.path(), false).unwrap();
    assert_eq!(rows.len(), 2);
    let ce: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("ce/results.json")).unwrap()).unwrap();
    let crt: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("crt/results.json")).unwrap()).unwrap();
    // cRT re-used CE's stage 1: same stage-1 numbers, no stage-1 checkpoint of its own.
    assert_eq!(ce["stage1"], crt["stage1"]);
    assert!(crt["stage2"]["top1"].is_number() && ce["stage2"].is_null());
    assert!(!dir.path().join("crt/stage1.safetensors").exists());
    let md = std::fs::read_to_string(dir.path().join("compare.md")).unwrap();
    assert!(md.starts_with("| method | overall | many | medium | few | time (s) |") && md.contains("| crt |"), "{md}");
    let csv = std::fs::read_to_string(dir.path().join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    // A second run reuses both finished methods.
    let again = run(&base, &methods, &data, dir.path(), false).unwrap();
    assert!(again.iter().all(|r| r.reused));
    assert_eq!(again[1].acc, rows[1].acc);
    // Unknown settings in a method are refused before anything trains.
    let bad = parse_methods("[[method]]\nname = \"x\"\nstage1.loss = { name = \"ce\", tau = 1.0 }\n", "bad").unwrap();
    assert!(run(&base, &bad, &data, dir.path(), false).is_err());
    assert!(parse_methods("[[method]]\nname = \"a b\"\n", "bad").is_err());
}

#[test]
fn sgd_matches_torch_optim_sgd_with_momentum_and_weight_decay() {
    use gcl::train::optim::Sgd;
    // loss = sum(p^2), grad 2p; torch.optim.SGD(lr=0.5, momentum=0.9, weight_decay=0.1).
    let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
    let mut opt = Sgd::new(vec![("p".into(), p.shallow_clone())], 0.9, 0.1);
    let (lr, m, wd) = (0.5, 0.9, 0.1);
    let mut want = [1.0f64, -2.0];
    let mut buf = [0.0f64; 2];
    for step in 0..3 {
        let loss = (&p * &p).sum(Kind::Float);
        // The step reports the gradient's norm (for divergence checks): |2p|.
        let grad_norm = opt.backward_step(&loss, lr).unwrap().double_value(&[]);
        assert!((grad_norm - 2.0 * (want[0] * want[0] + want[1] * want[1]).sqrt()).abs() < 1e-4, "step {step}: gradient norm {grad_norm}");
        for i in 0..2 {
            let d = 2.0 * want[i] + wd * want[i];
            buf[i] = if step == 0 { d } else { m * buf[i] + d };
            want[i] -= lr * buf[i];
        }
        let got = Vec::<f32>::try_from(&p.detach()).unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - want[i]).abs() < 1e-5, "step {step}: {got:?} vs {want:?}");
        }
    }
    // Momentum survives a round trip through named buffers.
    let saved = opt.named_buffers();
    let mut fresh = Sgd::new(vec![("p".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true))], 0.9, 0.1);
    assert!(fresh.set_buffer("p", &saved[0].1));
    assert!(fresh.named_buffers()[0].1.allclose(&saved[0].1, 0.0, 0.0, false));
    assert!(!fresh.set_buffer("q", &saved[0].1));
}

#[test]
fn a_scheduled_noise_multiplier_takes_its_value_each_epoch_and_metrics_record_it() {
    use gcl::loss::gcl::ParamSchedule;
    let mut cfg = common::tiny_config();
    cfg.stage1.epochs = 3;
    cfg.stage2.method = gcl::config::Stage2Method::None;
    let gcl::loss::LossConfig::GclE(p) = &mut cfg.stage1.loss else { panic!("the tiny config trains GCL-E") };
    p.noise_mul_schedule = Some(ParamSchedule::Linear { from: 0.0, to: 1.0 });
    p.std_schedule = Some(ParamSchedule::Step { from: 0.1, to: 0.5, at: 0.5 });
    cfg.validate().unwrap();
    let prepared = common::prepare(&cfg, common::tiny_fashion_mnist());
    let dir = tempfile::tempdir().unwrap();
    gcl::train::train(&cfg, &prepared, &common::opts(dir.path(), false, &[gcl::train::Stage::One])).unwrap();
    let lines = common::metrics_lines(dir.path());
    let got: Vec<(f64, f64)> = lines.iter().map(|l| (l["noise_mul"].as_f64().unwrap(), l["std"].as_f64().unwrap())).collect();
    // std steps at half of 3 epochs: epochs 1 and 2 (0 to 1.5) before it, epoch 3 after.
    assert_eq!(got, [(0.0, 0.1), (0.5, 0.1), (1.0, 0.5)]);
    // A schedule that leaves the parameter's range is named.
    let mut bad = cfg.clone();
    let gcl::loss::LossConfig::GclE(p) = &mut bad.stage1.loss else { unreachable!() };
    p.std_schedule = Some(ParamSchedule::Linear { from: 0.3, to: 0.0 });
    let e = format!("{:#}", bad.validate().err().unwrap());
    assert!(e.contains("stage1.loss.std_schedule.to = 0"), "{e}");
}

#[test]
fn the_adaptive_cloud_follows_its_rule_from_each_epochs_training_accuracy() {
    use gcl::loss::{Adaptive, GroupScale};
    let mut cfg = common::tiny_config();
    cfg.stage1.epochs = 3;
    cfg.stage2.method = gcl::config::Stage2Method::None;
    let rule = Adaptive { rate: 0.5, max: 2.0 };
    let gcl::loss::LossConfig::GclE(p) = &mut cfg.stage1.loss else { panic!("the tiny config trains GCL-E") };
    p.adaptive = Some(rule);
    // The tiny set has 200 (Many) down to 20 (Medium) images per class; no Few class.
    p.group_scale = Some(GroupScale { many: 1.0, medium: 0.5, few: 3.0 });
    cfg.validate().unwrap();
    let prepared = common::prepare(&cfg, common::tiny_fashion_mnist());
    let dir = tempfile::tempdir().unwrap();
    gcl::train::train(&cfg, &prepared, &common::opts(dir.path(), false, &[gcl::train::Stage::One])).unwrap();
    let lines = common::metrics_lines(dir.path());
    let f64s = |v: &serde_json::Value| -> Vec<f64> { serde_json::from_value(v.clone()).unwrap() };
    let group: Vec<f64> = prepared.counts.iter().map(|&n| if n > 100 { 1.0 } else { 0.5 }).collect();
    let mut w = vec![1.0; 10];
    for (e, line) in lines.iter().enumerate() {
        // Each epoch trains with group factor x the weights the epochs before it left ...
        let used = f64s(&line["cloud_scale"]);
        let want: Vec<f64> = group.iter().zip(&w).map(|(g, w)| g * w).collect();
        common::assert_close(&used, &want, &format!("epoch {}: cloud_scale", e + 1));
        // ... and its per-class training accuracy moves them by the rule.
        let acc: Vec<Option<f64>> = serde_json::from_value(line["train_class_accuracy"].clone()).unwrap();
        assert!(acc.iter().all(|a| a.is_some_and(|a| (0.0..=1.0).contains(&a))), "{acc:?}");
        w = rule.update(&w, &acc);
        common::assert_close(&f64s(&line["adaptive_weights"]), &w, &format!("epoch {}: adaptive_weights", e + 1));
    }
    assert_eq!(lines.len(), 3);
    // The rule moved the weights: the classes are not all fit alike after one epoch.
    assert!(f64s(&lines[0]["adaptive_weights"]).iter().any(|v| (v - 1.0).abs() > 0.01));
    // Out-of-range settings are named.
    let mut bad = cfg.clone();
    let gcl::loss::LossConfig::GclE(p) = &mut bad.stage1.loss else { unreachable!() };
    p.adaptive = Some(Adaptive { rate: 1.5, max: 2.0 });
    let e = format!("{:#}", bad.validate().err().unwrap());
    assert!(e.contains("stage1.loss.adaptive.rate = 1.5"), "{e}");
}

/// `gcl predict --features` of the images of `list` (JSON lines) with their labels, as
/// scripts/stage2_reference.py reads them.
fn features_with_labels(run: &std::path::Path, stage: &str, data: &std::path::Path, list: &std::path::Path, out: &std::path::Path) -> Vec<serde_json::Value> {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_gcl"))
        .args(["predict", "--stage", stage, "--features", "--top-k", "1", "--format", "jsonl", "--quiet", "--run"])
        .arg(run)
        .arg("--list")
        .arg(list)
        .arg("--root")
        .arg(data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let labels: std::collections::HashMap<String, i64> =
        std::fs::read_to_string(list).unwrap().lines().map(|l| l.split_once(' ').unwrap()).map(|(p, y)| (p.to_string(), y.parse().unwrap())).collect();
    let rows: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let rel = std::path::Path::new(v["path"].as_str().unwrap()).strip_prefix(data).unwrap().to_string_lossy().into_owned();
            serde_json::json!({"features": v["features"], "label": labels[&rel], "top": v["top"][0]["class"]})
        })
        .collect();
    std::fs::write(out, serde_json::to_string(&rows).unwrap()).unwrap();
    rows
}

#[test]
fn lws_and_ncm_match_classifier_balancings_pytorch_reference() {
    use std::ffi::OsStr;
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let lines = write_split(d, "train", &fashion_samples(30), false);
    write_split(d, "test", &fashion_samples(10), false);
    let root = tempfile::tempdir().unwrap();
    let (lws, ncm) = (root.path().join("lws"), root.path().join("ncm"));
    let train = |out: &std::path::Path, method: &str, extra: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_gcl"))
            .args(["train", "--quiet", "--dataset", "list", "--train-list", "train.txt", "--test-list", "test.txt", "--profile", "exp", "--ratio", "5", "--loss", "ce"])
            .args(["--epochs", "2", "--batch-size", "32", "--set", "model.depth=8", "--cls-epochs", "3", "--set", &format!("stage2.method={{name=\"{method}\"}}")])
            // One full batch per epoch, no augmentation: the same steps as the reference's.
            .args(["--set", "stage2.batch_size=4096", "--set", "stage2.sampler=instance", "--set", "stage2.crop_pad=0", "--set", "stage2.flip=false", "--set", "stage2.mixup=false", "--set", "stage2.lr=0.5"])
            .arg("--data")
            .arg(d)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    train(&lws, "lws", &[]);
    let ck1 = lws.join("stage1.safetensors");
    train(&ncm, "ncm", &["--stages", "two", "--stage1-checkpoint", ck1.to_str().unwrap()]);
    // The training split's images (split.txt: indices into train.txt) and the test list.
    let split: Vec<usize> = std::fs::read_to_string(lws.join("split.txt")).unwrap().lines().filter(|l| !l.starts_with('#')).map(|l| l.trim().parse().unwrap()).collect();
    let labels = std::fs::read_to_string(d.join("train.txt")).unwrap();
    let all: Vec<&str> = labels.lines().collect();
    assert_eq!(all.len(), lines.len());
    let split_list = root.path().join("split-list.txt");
    std::fs::write(&split_list, split.iter().map(|&i| format!("{}\n", all[i])).collect::<String>()).unwrap();
    let (train_json, test_json) = (root.path().join("train.json"), root.path().join("test.json"));
    let train_rows = features_with_labels(&lws, "1", d, &split_list, &train_json);
    features_with_labels(&lws, "1", d, &d.join("test.txt"), &test_json);

    // LWS: the scales gcl folded into the classifier are the reference's.
    let res: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(lws.join("results.json")).unwrap()).unwrap();
    let s2 = &res["config"]["stage2"];
    let base = gcl::train::schedule::scaled_lr(0.5, 4096, s2["lr_batch"].as_u64().map(|b| b as usize));
    let lrs: Vec<String> = (0..3).map(|e| gcl::train::schedule::cosine_lr(base, e, 3).to_string()).collect();
    let out = root.path().join("lws-ref.json");
    let (m, wd) = (s2["momentum"].as_f64().unwrap().to_string(), s2["weight_decay"].as_f64().unwrap().to_string());
    run_python("stage2_reference.py", &[OsStr::new("lws"), train_json.as_os_str(), ck1.as_os_str(), OsStr::new(&lrs.join(",")), OsStr::new(&m), OsStr::new(&wd), out.as_os_str()]);
    let want: Vec<f64> = serde_json::from_value(serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&out).unwrap()).unwrap()["scales"].clone()).unwrap();
    let w = |path: &std::path::Path| Tensor::read_safetensors(path).unwrap().into_iter().find(|(n, _)| n == "model.head.weight").unwrap().1.to_kind(Kind::Double);
    let (w1, w2) = (w(&ck1), w(&lws.join("stage2.safetensors")));
    let got: Vec<f64> = (0..10).map(|c| w2.get(c).dot(&w1.get(c)).double_value(&[]) / w1.get(c).dot(&w1.get(c)).double_value(&[])).collect();
    assert!(want.iter().any(|f| (f - 1.0).abs() > 1e-3), "the scales moved: {want:?}");
    for (g, r) in got.iter().zip(&want) {
        assert!((g - r).abs() < 1e-4 * r.abs().max(1.0), "LWS scales: gcl {got:?}\nreference {want:?}");
    }
    assert_eq!(train_rows.len(), split.len());

    // NCM: the classifier rows are the reference's normalised means, its predictions the reference's.
    let out = root.path().join("ncm-ref.json");
    run_python("stage2_reference.py", &[OsStr::new("ncm"), train_json.as_os_str(), test_json.as_os_str(), out.as_os_str()]);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let means: Vec<Vec<f64>> = serde_json::from_value(r["means"].clone()).unwrap();
    let ncm_w = Vec::<Vec<f64>>::try_from(w(&ncm.join("stage2.safetensors")).to_kind(Kind::Double)).unwrap();
    let diff = ncm_w.iter().flatten().zip(means.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(diff < 1e-4, "NCM class means differ by up to {diff}");
    let pred: Vec<i64> = serde_json::from_value(r["pred"].clone()).unwrap();
    let ours: Vec<i64> = features_with_labels(&ncm, "2", d, &d.join("test.txt"), &root.path().join("t2.json")).iter().map(|v| v["top"].as_i64().unwrap()).collect();
    assert_eq!(ours, pred);
}

#[test]
fn the_embedding_is_probed_every_k_epochs_on_a_fixed_set_and_snapshots_are_kept() {
    let mut cfg = common::tiny_config();
    (cfg.stage1.epochs, cfg.stage2.epochs) = (2, 1);
    (cfg.run.probe_every, cfg.run.probe_per_class, cfg.run.snapshots) = (1, 20, vec![2]);
    cfg.validate().unwrap();
    let prepared = common::prepare(&cfg, common::tiny_fashion_mnist());
    let dir = tempfile::tempdir().unwrap();
    gcl::train::train(&cfg, &prepared, &common::opts(dir.path(), false, common::BOTH)).unwrap();
    let lines = common::metrics_lines(dir.path());
    // No val set: 20 training images of each class (every class has at least 20).
    let images: usize = prepared.counts.iter().map(|&n| n.min(20)).sum();
    assert_eq!(images, 200);
    assert_eq!(lines.len(), 3, "two stage-1 epochs and one stage-2 epoch");
    for l in &lines {
        let p = &l["probe"];
        assert_eq!(p["images"], images, "{l}");
        assert!(p["nc1"].as_f64().is_some_and(|v| v > 0.0) && p["nc1_by_group"]["many"].is_number() && p["spread_by_group"]["medium"].is_number(), "{p}");
    }
    // Stage 2 keeps the backbone: the features' measures are stage 1's last, the classifier's are its own.
    assert_eq!(lines[1]["probe"]["nc1"], lines[2]["probe"]["nc1"]);
    // The snapshot of epoch 2 only: the probe's features and labels.
    assert!(!dir.path().join("probe-stage1-epoch1.safetensors").exists());
    let snap = Tensor::read_safetensors(dir.path().join("probe-stage1-epoch2.safetensors")).unwrap();
    let f = &snap.iter().find(|(n, _)| n == "features").unwrap().1;
    assert_eq!(f.size(), [200, 64]);
    // A probe set without every class is refused before training.
    let mut data = common::tiny_fashion_mnist();
    data.val = Some(std::sync::Arc::new(gcl::data::Subset::new(data.test.clone(), &[0, 1, 2, 3, 4]).unwrap()));
    let prepared = common::prepare(&cfg, data);
    let other = tempfile::tempdir().unwrap();
    let e = format!("{:#}", gcl::train::train(&cfg, &prepared, &common::opts(other.path(), false, common::BOTH)).err().unwrap());
    assert!(e.contains("the probe set") && e.contains("has 5 images"), "{e}");
    // Snapshots name stage-1 epochs.
    cfg.run.snapshots = vec![3];
    assert!(format!("{:#}", cfg.validate().err().unwrap()).contains("run.snapshots = 3"));
}
