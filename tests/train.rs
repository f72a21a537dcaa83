//! Model, checkpoints, configuration and a tiny end-to-end run on real data.
mod common;
use gcl::config::{self, Config, Stage2Method};
use gcl::loss::LossConfig;
use gcl::data::augment::{place, Geometry, Mixup, Normalize, Placement};
use gcl::data::split::SplitRule;
use gcl::data::{load, Dataset, DatasetKind};
use gcl::model::{Classifier, HeadKind};
use gcl::train::checkpoint::Checkpoint;
use gcl::train::schedule::{cosine_lr, stage1_lr};
use gcl::train::{prepare, train, Stages, TrainOptions};
use rand::SeedableRng;
use tch::{nn, Device, Kind, Tensor};

#[test]
fn resnet32_has_the_cifar_shape_and_cosine_logits_are_cosines() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Classifier::new(&vs.root(), 32, 3, 10, HeadKind::Cosine).unwrap();
    let params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    // ResNet-32 has about 0.46M parameters; plus the 64 x 10 cosine classifier.
    assert!((460_000..470_000).contains(&params), "{params}");
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let z = m.forward(&x, false);
    assert_eq!(z.size(), vec![4, 10]);
    assert!(z.abs().max().double_value(&[]) <= 1.0 + 1e-5);
    assert!(Classifier::new(&vs.root(), 31, 3, 10, HeadKind::Cosine).is_err());
}

#[test]
fn checkpoint_round_trip_restores_the_same_function() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Classifier::new(&vs.root(), 20, 1, 10, HeadKind::Cosine).unwrap();
    // Move the BatchNorm statistics away from their initial values.
    let x = Tensor::randn([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let _ = m.forward(&x, true);
    let mut ck = Checkpoint::new();
    ck.put_model(&vs);
    ck.save(&path).unwrap();
    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let m2 = Classifier::new(&vs2.root(), 20, 1, 10, HeadKind::Cosine).unwrap();
    Checkpoint::load(&path).unwrap().restore_model(&mut vs2, &path).unwrap();
    let (a, b) = (m.forward(&x, false), m2.forward(&x, false));
    assert!(a.allclose(&b, 1e-6, 1e-6, false));
    // A model of another shape is refused with a clear error.
    let mut vs3 = nn::VarStore::new(Device::Cpu);
    let _ = Classifier::new(&vs3.root(), 20, 1, 100, HeadKind::Cosine).unwrap();
    let err = format!("{:#}", Checkpoint::load(&path).unwrap().restore_model(&mut vs3, &path).err().unwrap());
    assert!(err.contains("head.weight") && err.contains("shape"), "{err}");
    // A truncated file is an error, not a crash.
    let raw = std::fs::read(&path).unwrap();
    std::fs::write(&path, &raw[..raw.len() / 2]).unwrap();
    assert!(Checkpoint::load(&path).is_err());
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
    let norm = Normalize { mean: 0.5, std: 0.25 };
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
    // Channels-last puts the channel innermost.
    let g3 = Geometry { c: 3, h: 1, w: 2 };
    let rgb: Vec<u8> = vec![10, 20, 30, 40, 50, 60]; // R: 10 20, G: 30 40, B: 50 60
    let mut hwc = vec![0f32; 6];
    place(&mut hwc, &rgb, g3, Normalize { mean: 0.0, std: 1.0 / 255.0 }, Placement::IDENTITY, true);
    assert!(close(&hwc, &[10.0, 30.0, 50.0, 20.0, 40.0, 60.0]), "{hwc:?}");
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
fn config_files_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[stage1]\nepochs = 3\n[stage1.loss]\nname = \"gcl-a\"\nepsilon = 0.3\n").unwrap();
    let c = config::preset("cifar100-lt").unwrap().merge_file(&f).unwrap();
    assert_eq!(c.stage1.epochs, 3);
    match c.stage1.loss {
        LossConfig::GclA(p) => assert_eq!((p.epsilon, p.s), (0.3, 30.0)),
        other => panic!("{other:?}"),
    }
    // A parameter that does not belong to the method, or an unknown method, is an error.
    std::fs::write(&f, "[stage1.loss]\nname = \"ce\"\nepsilon = 0.3\n").unwrap();
    let err = format!("{:#}", Config::default().merge_file(&f).err().unwrap());
    assert!(err.contains("epsilon"), "{err}");
    std::fs::write(&f, "[stage1.loss]\nname = \"nope\"\n").unwrap();
    let err = format!("{:#}", Config::default().merge_file(&f).err().unwrap());
    assert!(err.contains("nope"), "{err}");
    assert!(Config::default().set("stage1.sampler=cben").is_ok());
    assert!(Config::default().set("stage1.sampler=nope").is_err());
    // GCL's stage 2 needs a cosine classifier: CE in stage 1 with it is refused.
    assert!(Config::default().set("stage1.loss={ name = \"ce\" }").is_err());
    assert!(Config::default().set("stage1.loss={ name = \"ce\" }").and_then(|c| c.set("stage2.method={ name = \"crt\" }")).is_err());
    let mut ce = Config::default();
    ce.stage1.loss = config::loss_by_name("ce").unwrap();
    ce.stage2.method = Stage2Method::Crt;
    assert!(ce.validate().is_ok());
    assert_eq!(c.data.dataset, DatasetKind::Cifar100);
    let c = c.set("stage1.lr=0.05").unwrap().set("data.split={ rule = \"random\", seed = 3 }").unwrap();
    assert_eq!(c.stage1.lr, 0.05);
    assert_eq!(c.data.split, SplitRule::Random { seed: 3 });
    std::fs::write(&f, "[stage1]\nepoch = 3\n").unwrap();
    let err = format!("{:#}", Config::default().merge_file(&f).err().unwrap());
    assert!(err.contains("epoch") && err.contains("c.toml"), "{err}");
    assert!(Config::default().set("stage1.nope=1").is_err());
    assert!(Config::default().set("run.device=tpu").is_err());
    assert!(Config::default().set("stage1.lr=-1").is_err());
    // What `gcl config` prints reads back as the same settings.
    let text = c.to_toml();
    std::fs::write(&f, &text).unwrap();
    assert_eq!(Config::default().merge_file(&f).unwrap(), c);
}

/// A small long-tailed subset of Fashion-MNIST: 200 images of class 0 down to 20 of
/// class 9 (ratio 10), tested on 1000 balanced test images.
fn tiny_fashion_mnist() -> Dataset {
    let ds = load(DatasetKind::FashionMnist, Some(&common::fashion_mnist_dir())).unwrap();
    let mut per_class = vec![0; 10];
    let keep: Vec<i64> = (0..ds.train.len() as i64)
        .filter(|&i| {
            let c = ds.train.labels[i as usize] as usize;
            per_class[c] += 1;
            per_class[c] <= 200
        })
        .collect();
    let test: Vec<i64> = (0..1000).collect();
    Dataset { train: ds.train.subset(&keep), test: ds.test.subset(&test) }
}

fn tiny_config() -> Config {
    let mut c = config::preset("fmnist-lt-quick").unwrap();
    c.data.ratio = 10.0;
    c.model.depth = 8;
    c.stage1.epochs = 6;
    c.stage1.batch_size = 32;
    c.stage2.epochs = 1;
    c.stage2.batch_size = 32;
    c
}

#[test]
fn tiny_two_stage_run_beats_chance_and_writes_results() {
    let cfg = tiny_config();
    let data = prepare(&cfg, tiny_fashion_mnist()).unwrap();
    assert_eq!(data.counts[0], 200);
    assert_eq!(data.counts[9], 20);
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions { out: dir.path().to_path_buf(), resume: false, stages: Stages::Both, stage1_checkpoint: None, verbose: false };
    let res = train(&cfg, &data, &opts).unwrap();
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
    assert!(dir.path().join("stage1.safetensors").exists() && dir.path().join("stage2.safetensors").exists());
    let split = std::fs::read_to_string(dir.path().join("split.txt")).unwrap();
    assert_eq!(split.lines().count(), data.train.len());

    // Stage 2 again from the stage-1 checkpoint gives the same classifier: runs repeat.
    let dir2 = tempfile::tempdir().unwrap();
    let opts2 = TrainOptions {
        out: dir2.path().to_path_buf(),
        resume: false,
        stages: Stages::Two,
        stage1_checkpoint: Some(dir.path().join("stage1.safetensors")),
        verbose: false,
    };
    let res2 = train(&cfg, &data, &opts2).unwrap();
    assert_eq!(res2.stage2.unwrap().per_class, s2.per_class);
}

#[test]
fn resumed_stage1_equals_the_uninterrupted_run() {
    let mut cfg = tiny_config();
    cfg.stage1.epochs = 2;
    cfg.stage2.epochs = 0;
    let data = prepare(&cfg, tiny_fashion_mnist()).unwrap();
    let full = tempfile::tempdir().unwrap();
    let opts = |d: &std::path::Path, resume| TrainOptions { out: d.to_path_buf(), resume, stages: Stages::One, stage1_checkpoint: None, verbose: false };
    let a = train(&cfg, &data, &opts(full.path(), false)).unwrap();
    // Run one epoch, then resume to two.
    let part = tempfile::tempdir().unwrap();
    let mut one = cfg.clone();
    one.stage1.epochs = 1;
    train(&one, &data, &opts(part.path(), false)).unwrap();
    std::fs::remove_file(part.path().join("config.toml")).unwrap();
    let b = train(&cfg, &data, &opts(part.path(), true)).unwrap();
    // Same batches, same noise, same momentum: the same model. (Only the LR of epoch 1
    // depends on the total epochs, and with 1 or 2 epochs the warm-up is 1 epoch.)
    assert_eq!(a.stage1.unwrap().per_class, b.stage1.unwrap().per_class);
    // Resuming with other settings is refused.
    let mut other = cfg.clone();
    other.stage1.lr = 0.05;
    let err = format!("{:#}", train(&other, &data, &opts(part.path(), true)).err().unwrap());
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn compare_shares_stage1_reuses_finished_runs_and_writes_tables() {
    use gcl::compare::{parse_methods, run, DEFAULT_METHODS};
    let all = parse_methods(DEFAULT_METHODS, "default").unwrap();
    let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["ce", "focal", "ldam-drw", "balanced-softmax", "logit-adjusted", "crt", "gcl-e", "gcl-a"]);
    let mut base = tiny_config();
    base.stage1.epochs = 1;
    base.stage2.epochs = 1;
    for m in &all {
        m.config(&base).unwrap(); // every default method is a valid configuration
    }
    let methods: Vec<_> = all.into_iter().filter(|m| m.name == "ce" || m.name == "crt").collect();
    let data = prepare(&base, tiny_fashion_mnist()).unwrap();
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
        opt.backward_step(&loss, lr);
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
fn folded_batchnorm_gives_the_same_features_as_the_frozen_network() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = Classifier::new(&vs.root(), 20, 3, 10, HeadKind::Cosine).unwrap();
    // Non-trivial BatchNorm statistics and affine parameters.
    for _ in 0..3 {
        let _ = m.forward(&(Tensor::randn([16, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 + 0.5), true);
    }
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.ends_with("b1.weight") || name.ends_with("b2.bias") {
                let _ = t.copy_(&(t.rand_like() + 0.5));
            }
        }
    });
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let plain = tch::no_grad(|| m.backbone.features(&x, false));
    // Folded with libtorch's convolutions, then with the Winograd ones (and channels-last
    // input, as training feeds it).
    for winograd in [false, true] {
        m.backbone.winograd = winograd;
        for x in [x.shallow_clone(), gcl::precision::channels_last(&x)] {
            let folded = m.backbone.fold().features(&x);
            assert!(folded.allclose(&plain, 1e-4, 1e-4, false), "winograd {winograd}: max diff {}", (folded - &plain).abs().max().double_value(&[]));
        }
    }
}

/// Whether this CPU takes the Winograd path (AVX-512); elsewhere it falls back to libtorch.
fn winograd_available() -> bool {
    gcl::model::winograd::transform_weights(&Tensor::zeros([16, 16, 3, 3], (Kind::Float, Device::Cpu))).is_some()
}

#[test]
fn winograd_convolution_equals_libtorch_conv2d_with_bias_residual_relu_and_gradients() {
    use gcl::model::winograd::{conv3x3, transform_weights};
    if !winograd_available() {
        eprintln!("no AVX-512 here: checking the libtorch fallback only");
    }
    let opts = (Kind::Float, Device::Cpu);
    // Widths of the three ResNet stages; even, odd, tiny and non-square images; one image and many.
    for (c, n, h, w) in [(16, 3, 28, 28), (32, 2, 14, 14), (64, 5, 7, 7), (16, 1, 5, 9), (32, 4, 1, 1), (64, 1, 2, 3), (16, 70, 8, 8)] {
        let x = Tensor::randn([n, c, h, w], opts) * 3.0;
        let wt = Tensor::randn([c, c, 3, 3], opts) * 0.2;
        let b = Tensor::randn([c], opts);
        let r = Tensor::randn([n, c, h, w], opts);
        let u = transform_weights(&wt);
        for (x, r) in [(x.shallow_clone(), r.shallow_clone()), (gcl::precision::channels_last(&x), gcl::precision::channels_last(&r))] {
            for (residual, relu) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut want = x.conv2d(&wt, Some(&b), [1, 1], [1, 1], [1, 1], 1);
                if residual {
                    want += &r;
                }
                if relu {
                    want = want.relu();
                }
                let got = tch::no_grad(|| conv3x3(&x, &wt, u.as_ref(), &b, residual.then_some(&r), relu));
                assert_eq!(got.size(), want.size());
                let d = rel_diff(&got, &want);
                assert!(d < 1e-5, "C {c}, {n}x{h}x{w}, residual {residual}, relu {relu}: relative max difference {d}");
            }
        }
    }
    // The training form: the same forward and gradients.
    for (c, n, hw) in [(16, 2, 9), (64, 3, 7)] {
        let x = gcl::precision::channels_last(&Tensor::randn([n, c, hw, hw], opts)).set_requires_grad(true);
        let wt = (Tensor::randn([c, c, 3, 3], opts) * 0.2).set_requires_grad(true);
        let dy = Tensor::randn([n, c, hw, hw], opts);
        let got = gcl::model::winograd::conv3x3_train(&x, &wt);
        let want = x.conv2d::<Tensor>(&wt, None, [1, 1], [1, 1], [1, 1], 1);
        assert!(rel_diff(&got, &want) < 1e-5, "training forward off by {}", rel_diff(&got, &want));
        let g = Tensor::run_backward(&[(&got * &dy).sum(Kind::Float)], &[&x, &wt], false, false);
        let w = Tensor::run_backward(&[(&want * &dy).sum(Kind::Float)], &[&x, &wt], false, false);
        // The input's gradient by Winograd too (to rounding), the weights' by libtorch (exact).
        assert!(rel_diff(&g[0], &w[0]) < 1e-5, "input gradient off by {}", rel_diff(&g[0], &w[0]));
        assert!(rel_diff(&g[1], &w[1]) < 1e-6, "weight gradient off by {}", rel_diff(&g[1], &w[1]));
    }
    // Shapes the kernel does not cover (unequal or other widths) go to libtorch, same result.
    for (cin, cout) in [(16, 32), (8, 8)] {
        let x = Tensor::randn([2, cin, 6, 6], opts);
        let wt = Tensor::randn([cout, cin, 3, 3], opts);
        let b = Tensor::randn([cout], opts);
        let got = tch::no_grad(|| conv3x3(&x, &wt, transform_weights(&wt).as_ref(), &b, None, true));
        let want = x.conv2d(&wt, Some(&b), [1, 1], [1, 1], [1, 1], 1).relu();
        assert!(rel_diff(&got, &want) < 1e-6);
    }
}

#[test]
fn a_nan_input_stays_nan_through_the_winograd_convolution() {
    use gcl::model::winograd::{conv3x3, transform_weights};
    let opts = (Kind::Float, Device::Cpu);
    let wt = Tensor::randn([16, 16, 3, 3], opts);
    let x = Tensor::randn([1, 16, 6, 6], opts);
    let _ = x.get(0).get(3).get(2).get(2).fill_(f64::NAN);
    let y = tch::no_grad(|| conv3x3(&x, &wt, transform_weights(&wt).as_ref(), &Tensor::zeros([16], opts), None, true));
    // Every output that sees the NaN pixel is NaN (not zeroed by the ReLU).
    let seen = y.narrow(2, 1, 3).narrow(3, 1, 3);
    assert!(bool::try_from(seen.isnan().all()).unwrap(), "{seen}");
}

/// Relative max difference of two tensors (in fp32).
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12)
}

/// Relative L2 difference (for bf16, where a ReLU mask can flip at a rounded zero).
fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-12)
}

/// One case of the fused op against libtorch's batch_norm + add + relu: outputs, running
/// statistics and the gradients of input, residual, weight and bias.
fn fused_case(c: i64, hw: i64, residual: bool, relu: bool, kind: Kind, channels_last: bool, tol: f64) {
    use gcl::model::bn_act::bn_act;
    let opts = (Kind::Float, Device::Cpu);
    let vs = nn::VarStore::new(Device::Cpu);
    let bn = nn::batch_norm2d(vs.root() / "bn", c, Default::default());
    tch::no_grad(|| {
        let _ = bn.ws.as_ref().unwrap().shallow_clone().copy_(&(Tensor::rand([c], opts) + 0.5));
        let _ = bn.bs.as_ref().unwrap().shallow_clone().copy_(&(Tensor::randn([c], opts) * 0.3));
    });
    let layout = |t: Tensor| if channels_last { gcl::precision::channels_last(&t) } else { t };
    // A mean far from 0 and a spread far from 1, as convolution outputs have.
    let x0 = layout((Tensor::randn([7, c, hw, hw], opts) * 3.0 + 1.5).to_kind(kind));
    let r0 = layout(Tensor::randn([7, c, hw, hw], opts).to_kind(kind));
    let g = layout(Tensor::randn([7, c, hw, hw], opts).to_kind(kind));
    let (rm0, rv0) = (bn.running_mean.copy(), bn.running_var.copy());
    // bf16 is checked against libtorch in fp32 on the same (bf16-valued) inputs.
    let run = |fused: bool| {
        let (x0, r0, g) = if fused { (x0.shallow_clone(), r0.shallow_clone(), g.shallow_clone()) } else { (x0.to_kind(Kind::Float), r0.to_kind(Kind::Float), g.to_kind(Kind::Float)) };
        let x = x0.detach().set_requires_grad(true);
        let r = r0.detach().set_requires_grad(true);
        for t in vs.trainable_variables() {
            let mut gr = t.grad();
            if gr.defined() {
                let _ = gr.zero_();
            }
        }
        tch::no_grad(|| {
            let _ = bn.running_mean.shallow_clone().copy_(&rm0);
            let _ = bn.running_var.shallow_clone().copy_(&rv0);
        });
        let y = if fused {
            bn_act(&x, residual.then_some(&r), &bn, relu)
        } else {
            let mut y = x.apply_t(&bn, true);
            if residual {
                y = y + &r;
            }
            if relu {
                y.relu()
            } else {
                y
            }
        };
        (&y * &g).sum(Kind::Float).backward();
        let grads: Vec<Tensor> = [x.grad(), bn.ws.as_ref().unwrap().grad(), bn.bs.as_ref().unwrap().grad()].into_iter().collect();
        let rg = if residual { Some(r.grad()) } else { None };
        (y.detach(), grads, rg, bn.running_mean.copy(), bn.running_var.copy())
    };
    let (y1, g1, r1, m1, v1) = run(false);
    let (y2, g2, r2, m2, v2) = run(true);
    assert_eq!(y2.kind(), kind);
    let diff = if kind == Kind::Float { rel_diff } else { rel_l2 };
    let what = format!("C={c} hw={hw} residual={residual} relu={relu} {kind:?} channels_last={channels_last}");
    assert!(diff(&y2, &y1) < tol, "{what}: output off by {}", diff(&y2, &y1));
    assert!(rel_diff(&m2, &m1) < 1e-5 && rel_diff(&v2, &v1) < 1e-5, "{what}: running statistics differ");
    for (name, (a, b)) in ["input", "weight", "bias"].iter().zip(g2.iter().zip(&g1)) {
        assert!(diff(a, b) < tol, "{what}: {name} gradient off by {}", diff(a, b));
    }
    if let (Some(a), Some(b)) = (r2, r1) {
        assert!(diff(&a, &b) < tol, "{what}: residual gradient off by {}", diff(&a, &b));
    }
}

#[test]
fn fused_batchnorm_add_relu_matches_libtorch_in_value_statistics_and_gradient() {
    tch::manual_seed(3);
    // The network's widths (16, 32, 64: compile-time kernels) and another (generic kernel);
    // row counts that are not multiples of the kernels' blocks.
    for &(c, hw) in &[(16, 9), (32, 5), (64, 3), (24, 6)] {
        for &(residual, relu) in &[(false, true), (true, true), (true, false), (false, false)] {
            fused_case(c, hw, residual, relu, Kind::Float, true, 1e-4);
        }
    }
    // bf16 activations (as under autocast), against fp32 on the same values: within bf16's
    // rounding (2^-8 relative) in L2.
    fused_case(32, 7, true, true, Kind::BFloat16, true, 1e-2);
    fused_case(16, 9, false, true, Kind::BFloat16, true, 1e-2);
    // Not channels-last: libtorch's own ops, so exactly libtorch's result.
    fused_case(16, 5, true, true, Kind::Float, false, 1e-6);
}

/// A tensor of `shape` with N(mean, sd^2) entries from a seeded generator (libtorch's global
/// one is shared with the tests that run alongside).
fn seeded_normal(shape: &[i64], mean: f64, sd: f64, rng: &mut rand::rngs::StdRng) -> Tensor {
    use rand_distr::{Distribution, Normal};
    let d = Normal::new(mean, sd).unwrap();
    let v: Vec<f32> = (0..shape.iter().product::<i64>()).map(|_| d.sample(rng) as f32).collect();
    Tensor::from_slice(&v).view(shape)
}

#[test]
fn a_training_step_with_our_kernels_is_as_accurate_as_one_with_libtorchs() {
    // Seeded weights and batch: on a rare draw a pre-activation lies within rounding of zero,
    // and any two fp32 kernels may then disagree on its ReLU; behind BatchNorm's backward, which
    // subtracts means and cancels most of a convolution's weight gradient, that one unit can move
    // the gradient by 1%. The kernels' own precision is tested on their own above.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = Classifier::new(&vs.root(), 8, 1, 10, HeadKind::Cosine).unwrap();
    tch::no_grad(|| {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut t) in vars {
            let size = t.size();
            let fan_in: i64 = size.iter().skip(1).product();
            let v = match (name.ends_with("weight"), size.len()) {
                (true, 4) => seeded_normal(&size, 0.0, (2.0 / fan_in as f64).sqrt(), &mut rng),
                (true, 1) => seeded_normal(&size, 1.0, 0.2, &mut rng),
                (true, _) => seeded_normal(&size, 0.0, 1.0, &mut rng),
                _ if name.ends_with("bias") => seeded_normal(&size, 0.0, 0.2, &mut rng),
                _ => continue, // running statistics: unused in training mode
            };
            let _ = t.copy_(&v);
        }
    });
    let x = gcl::precision::channels_last(&seeded_normal(&[12, 1, 28, 28], 0.0, 1.0, &mut rng));
    // The truth: the same network and batch in fp64, through libtorch's ops.
    let mut vs64 = nn::VarStore::new(Device::Cpu);
    let m64 = Classifier::new(&vs64.root(), 8, 1, 10, HeadKind::Cosine).unwrap();
    vs64.copy(&vs).unwrap();
    vs64.double();
    let mut weights: Vec<Tensor> = vs.variables().into_values().collect();
    gcl::precision::params_channels_last(&mut weights);
    let run = |m: &Classifier, vs: &nn::VarStore, x: &Tensor| {
        let z = m.forward(x, true);
        let grads = Tensor::run_backward(&[z.square().sum(z.kind())], &vs.trainable_variables(), false, false);
        (z.detach().to_kind(Kind::Double), grads.iter().map(|g| g.to_kind(Kind::Double)).collect::<Vec<_>>())
    };
    let (z64, g64) = run(&m64, &vs64, &x.to_kind(Kind::Double));
    m.backbone.fused = false;
    m.backbone.winograd = false;
    let (zt, gt) = run(&m, &vs, &x);
    assert_eq!(gt.len(), g64.len());
    // Each of our kernels alone (fused BatchNorm; Winograd convolution forward), then both: as
    // close to fp64 as libtorch's fp32 is (within 2x, or 1e-5).
    for (fused, winograd) in [(true, false), (false, true), (true, true)] {
        m.backbone.fused = fused;
        m.backbone.winograd = winograd;
        let (z, g) = run(&m, &vs, &x);
        let (ez, et) = (rel_diff(&z, &z64), rel_diff(&zt, &z64));
        assert!(ez <= 2.0 * et + 1e-5, "fused {fused}, winograd {winograd}: logits off by {ez} (libtorch fp32: {et})");
        for (i, ((ours, torch), truth)) in g.iter().zip(&gt).zip(&g64).enumerate() {
            let (e, et) = (rel_l2(ours, truth), rel_l2(torch, truth));
            assert!(e <= 2.0 * et + 1e-5, "fused {fused}, winograd {winograd}: gradient {i} off by {e} (libtorch fp32: {et})");
        }
    }
}

#[test]
fn a_nan_activation_stays_nan_through_the_fused_op_so_divergence_is_caught() {
    use gcl::model::bn_act::bn_act;
    let vs = nn::VarStore::new(Device::Cpu);
    let bn = nn::batch_norm2d(vs.root(), 16, Default::default());
    for kind in [Kind::Float, Kind::BFloat16] {
        let x = gcl::precision::channels_last(&Tensor::randn([2, 16, 4, 4], (Kind::Float, Device::Cpu)).to_kind(kind));
        let _ = x.get(0).get(3).get(1).get(2).fill_(f64::NAN);
        // A ReLU that mapped NaN to 0 would hide a diverged network from the loss check.
        let y = bn_act(&x, None, &bn, true);
        assert!(y.isnan().any().int64_value(&[]) == 1, "{kind:?}: NaN lost");
        let y = bn_act(&x, Some(&x.zeros_like()), &bn, true);
        assert!(y.isnan().any().int64_value(&[]) == 1, "{kind:?}: NaN lost with a residual");
    }
}
