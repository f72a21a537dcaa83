//! The vision transformers are torchvision's: the same state dicts by name and shape, the same
//! features and logits for the same (random) weights, position embeddings interpolated as
//! torchvision does (fixtures made by scripts/vit_parity.py with the venv's torchvision).
mod common;

use common::{rel_diff, run_python};
use gcl::kernels::Kernels;
use gcl::model::clip_text::TextTower;
use gcl::model::tokenizer::Tokenizer;
use gcl::model::vit::{Layout, VitSpec};
use gcl::model::weights::load_torchvision;
use gcl::model::{Classifier, HeadKind, ModelConfig};
use std::collections::HashMap;
use tch::nn::VarStore;
use tch::{Device, Tensor};

fn small() -> ModelConfig {
    ModelConfig { arch: Some("vit".into()), vit: VitSpec { patch: 4, width: 48, depth: 2, heads: 3, mlp: 96, image_size: 32, ..Default::default() }, ..Default::default() }
}

/// "Pretrained" weights for `spec` with `channels` input channels: a fresh ViT's, saved by
/// torchvision's names in DIR/vit.safetensors; the file's path and tensors.
fn pretrained(dir: &std::path::Path, spec: VitSpec, channels: i64) -> (std::path::PathBuf, Vec<(String, Tensor)>) {
    let path = dir.join("vit.safetensors");
    let vs = VarStore::new(Device::Cpu);
    let _m = Classifier::new(&vs.root(), &ModelConfig { arch: Some("vit".into()), vit: spec, ..Default::default() }, channels, 10, HeadKind::Cosine, Kernels::NONE).unwrap();
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().filter_map(|(n, t)| Some((n.strip_prefix("backbone.")?.to_string(), t))).collect();
    Tensor::write_safetensors(&named, &path).unwrap();
    (path, named)
}

#[test]
fn vits_give_the_features_of_torchvision_openclip_and_timm_for_their_weights() {
    let dir = tempfile::tempdir().unwrap();
    run_python("vit_parity.py", &[dir.path().as_os_str()]);
    let vs = VarStore::new(Device::Cpu);
    let m = Classifier::new(&vs.root(), &small(), 3, 5, HeadKind::Linear, Kernels::NONE).unwrap();
    let loaded = load_torchvision(&vs, &dir.path().join("vit.pth"), &[], true).unwrap();
    assert_eq!(loaded.set, vs.variables().len(), "every variable comes from the file");
    let io: HashMap<String, Tensor> = Tensor::read_safetensors(dir.path().join("vit.io.safetensors")).unwrap().into_iter().collect();
    let f = tch::no_grad(|| m.backbone.features(&io["x"], false)).unwrap();
    let frozen = m.backbone.freeze().unwrap().features(&io["x"]).unwrap();
    let logits = tch::no_grad(|| m.forward(&io["x"], false)).unwrap();
    // 48 px images through the 32 px weights: the position embedding resized on the fly.
    let f48 = tch::no_grad(|| m.backbone.features(&io["x48"], false)).unwrap();
    for (what, got, want) in
        [("features", &f, "features"), ("frozen features", &frozen, "features"), ("logits", &logits, "logits"), ("48 px features", &f48, "features48")]
    {
        let e = rel_diff(got, &io[want]);
        eprintln!("{what}: relative error {e:.1e}");
        assert!(e < 1e-4, "{what} differ from torchvision's by {e:.2e}");
    }
    // A patch size that does not divide the image is named.
    let e = format!("{:#}", m.backbone.features(&Tensor::zeros([1, 3, 30, 30], (tch::Kind::Float, Device::Cpu)), false).err().unwrap());
    assert!(e.contains("30 x 30 images do not divide into 4 x 4 patches"), "{e}");

    // A small OpenCLIP model with QuickGELU (its whole state dict, text tower too) and a small
    // timm DINOv2-style ViT: the same features as encode_image and timm's forward.
    let towers = [
        ("clip", VitSpec { patch: 4, width: 48, depth: 2, heads: 3, mlp: 96, image_size: 32, layout: Layout::Clip, embed: 24, quick_gelu: true }),
        ("dinov2", VitSpec { patch: 4, width: 48, depth: 2, heads: 3, mlp: 96, image_size: 32, layout: Layout::Dinov2, embed: 0, quick_gelu: false }),
    ];
    for (name, spec) in towers {
        let vs = VarStore::new(Device::Cpu);
        let cfg = ModelConfig { arch: Some("vit".into()), vit: spec, ..Default::default() };
        let m = Classifier::new(&vs.root(), &cfg, 3, 5, HeadKind::Cosine, Kernels::NONE).unwrap();
        let loaded = load_torchvision(&vs, &dir.path().join(format!("{name}.pth")), &[], false).unwrap();
        assert_eq!(loaded.set, vs.variables().len() - 1, "{name}: every backbone variable comes from the file");
        let io: HashMap<String, Tensor> = Tensor::read_safetensors(dir.path().join(format!("{name}.io.safetensors"))).unwrap().into_iter().collect();
        let f = tch::no_grad(|| m.backbone.features(&io["x"], false)).unwrap();
        let e = rel_diff(&f, &io["features"]);
        eprintln!("{name} features: relative error {e:.1e}");
        assert!(e < 1e-4, "{name}: features differ from the library's by {e:.2e}");
    }

    // CLIP's text side: the tokenizer gives open_clip.tokenize's ids for every prompt, and the
    // text tower of the same whole state dict gives encode_text's embeddings.
    let io: HashMap<String, Tensor> = Tensor::read_safetensors(dir.path().join("clip.io.safetensors")).unwrap().into_iter().collect();
    let prompts: Vec<String> = serde_json::from_str(&std::fs::read_to_string(dir.path().join("prompts.json")).unwrap()).unwrap();
    let ids = Tokenizer::clip().tokenize(&prompts, 77);
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(Vec::<i64>::try_from(ids.get(i as i64)).unwrap(), Vec::<i64>::try_from(io["tokens"].get(i as i64)).unwrap(), "tokens of {p:?}");
    }
    let text = TextTower::load(&dir.path().join("clip.pth"), 2, true).unwrap();
    let e = rel_diff(&text.encode(&ids).unwrap(), &io["text_features"]);
    eprintln!("clip text features: relative error {e:.1e}");
    assert!(e < 1e-4, "text features differ from encode_text's by {e:.2e}");

    // The libraries' ViTs have exactly our variables, by name and shape.
    let names: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("names.json")).unwrap()).unwrap();
    for arch in VitSpec::NAMES {
        let theirs_name = arch.strip_suffix("_quickgelu").unwrap_or(arch);
        let vs = VarStore::new(Device::Cpu);
        let cfg = ModelConfig { arch: Some(arch.to_string()), ..Default::default() };
        let _m = tch::no_grad(|| Classifier::new(&vs.root(), &cfg, 3, 1000, HeadKind::Linear, Kernels::NONE)).unwrap();
        let ours: std::collections::BTreeMap<String, Vec<i64>> =
            vs.variables().into_iter().filter_map(|(n, t)| Some((n.strip_prefix("backbone.")?.to_string(), t.size()))).collect();
        let theirs: std::collections::BTreeMap<String, Vec<i64>> = names[theirs_name]
            .as_object()
            .unwrap_or_else(|| panic!("{theirs_name} not in names.json"))
            .iter()
            .filter(|(k, _)| !k.starts_with("heads."))
            .map(|(k, v)| (k.clone(), v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()))
            .collect();
        assert_eq!(ours, theirs, "{arch}");
    }
}

#[test]
fn a_small_vit_learns_fashion_mnist_and_runs_both_gcl_stages() {
    // 28 px grey images in 4 px patches: 7 x 7 tokens and the class token.
    let vit =
        ModelConfig { arch: Some("vit".into()), vit: VitSpec { patch: 4, width: 64, depth: 2, heads: 4, mlp: 128, image_size: 28, ..Default::default() }, ..Default::default() };
    let data = common::tiny_fashion_mnist();
    // Cross-entropy on a linear head, SGD as for the ResNets: it learns.
    let mut cfg = common::tiny_config();
    cfg.model = vit.clone();
    cfg.stage1.loss = gcl::loss::LossConfig::Ce(Default::default());
    cfg.stage1.mixup = false;
    cfg.stage2.method = gcl::config::Stage2Method::None;
    cfg.stage1.epochs = 12;
    cfg.stage1.lr = 0.02;
    let prepared = common::prepare(&cfg, data);
    let dir = tempfile::tempdir().unwrap();
    let res = gcl::train::train(&cfg, &prepared, &common::opts(dir.path(), false, &[gcl::train::Stage::One])).unwrap();
    let ce = res.stage1.unwrap().top1;
    eprintln!("ViT (2 blocks of 64), CE, 12 epochs: {:.1}%", 100.0 * ce);
    assert!(ce > 0.3, "{ce}"); // chance: 10%
    let ck = gcl::train::checkpoint::Checkpoint::load(&dir.path().join("stage1.safetensors")).unwrap();
    assert_eq!(ck.meta(&dir.path().join("stage1.safetensors")).unwrap().arch, "vit-p4-w64-d2-h4-m128");
    // GCL, both stages: the cosine head and the frozen backbone of stage 2 work on a ViT.
    let mut cfg = common::tiny_config();
    cfg.model = vit;
    cfg.stage1.epochs = 2;
    cfg.stage1.lr = 0.02;
    let dir = tempfile::tempdir().unwrap();
    let res = gcl::train::train(&cfg, &prepared, &common::opts(dir.path(), false, common::BOTH)).unwrap();
    assert!(res.stage2.is_some() && dir.path().join("stage2.safetensors").exists());
}

#[test]
fn each_tuning_mode_trains_only_its_weights_and_leaves_the_rest_bit_identical() {
    use gcl::model::vit::Tune;
    let spec = VitSpec { patch: 4, width: 32, depth: 2, heads: 2, mlp: 64, image_size: 28, ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let (weights, before) = pretrained(dir.path(), spec, 1);
    let prepared = common::prepare(&common::tiny_config(), common::tiny_fashion_mnist());
    for tune in [Tune::Linear, Tune::Bitfit, Tune::Lora { rank: 2 }, Tune::Adaptformer { width: 0 }, Tune::Ssf, Tune::Vpt { length: 3, deep: false }, Tune::Vpt { length: 2, deep: true }] {
        let mut cfg = common::tiny_config();
        cfg.model = ModelConfig { arch: Some("vit".into()), vit: spec, tune, pretrained: Some(weights.clone()), ..Default::default() };
        cfg.stage1.epochs = 1;
        cfg.stage2.method = gcl::config::Stage2Method::None;
        let train = |cfg: &gcl::config::Config| {
            let out = tempfile::tempdir().unwrap();
            let res = gcl::train::train(cfg, &prepared, &common::opts(out.path(), false, &[gcl::train::Stage::One])).unwrap();
            // As loaded: the weights the checkpoint leaves to the pretrained file come from it.
            let weights: HashMap<String, Tensor> = gcl::train::checkpoint::Checkpoint::load(&out.path().join("stage1.safetensors")).unwrap().tensors;
            (res, weights)
        };
        let (res, after) = train(&cfg);
        // The same run with a learning rate too small to move any weight: the initial values.
        let mut still = cfg.clone();
        still.stage1.lr = 1e-30;
        let (_, initial) = train(&still);
        let p = res.params.unwrap();
        let intended = |n: &str| match tune {
            Tune::Bitfit => n.contains("encoder_layer_") && n.ends_with("bias"),
            _ => false,
        };
        let mut changed = Vec::new();
        for (name, b) in &before {
            let a = &after[&format!("model.backbone.{name}")];
            if !b.equal(a) {
                assert!(intended(name), "{tune:?}: {name} changed");
                changed.push(name.clone());
            }
        }
        // The added weights train.
        let added: Vec<(&String, &Tensor)> = after.iter().filter(|(n, _)| n.starts_with("model.backbone.tune.")).collect();
        let moved = added.iter().any(|(n, t)| !t.equal(&initial[n.as_str()]));
        match tune {
            Tune::Linear => assert!(changed.is_empty() && added.is_empty()),
            Tune::Bitfit => assert!(!changed.is_empty() && added.is_empty(), "{tune:?}: no bias trained"),
            _ => assert!(changed.is_empty() && moved, "{tune:?}: the added weights did not train"),
        }
        // The count of trained weights is the head's plus the intended ones.
        let head: i64 = after.iter().filter(|(n, _)| n.starts_with("model.head.")).map(|(_, t)| t.numel() as i64).sum();
        let own: i64 = before.iter().filter(|(n, _)| intended(n)).map(|(_, t)| t.numel() as i64).sum::<i64>()
            + added.iter().map(|(_, t)| t.numel() as i64).sum::<i64>();
        assert_eq!(p.trainable, head + own, "{tune:?}");
        eprintln!("{tune:?}: {} of {} weights trained, top-1 {:.1}% after one epoch", p.trainable, p.total, 100.0 * res.stage1.unwrap().top1);
    }
    // LIFT's width rule: 2^floor(log2(C / 2L)), at least 1.
    assert_eq!((Tune::lift_width(1000, 12), Tune::lift_width(10, 2), Tune::lift_width(3, 12)), (32, 2, 1));
}

#[test]
fn predict_writes_the_embedding_the_classifier_reads() {
    // A small CLIP-layout ViT trained one epoch on a Fashion-MNIST image folder, then
    // `gcl predict --features --logits`: the cosine logits are cos(features, class weights).
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let samples = common::fashion_samples(6);
    common::write_split(&data, "train", &samples, false);
    common::write_split(&data, "test", &samples[..20], false);
    let run = dir.path().join("run");
    let exe = env!("CARGO_BIN_EXE_gcl");
    let vit = "model.vit={patch=4,width=32,depth=1,heads=2,mlp=64,image_size=28,layout=\"clip\",embed=16}";
    let o = std::process::Command::new(exe)
        .args(["train", "--quiet", "--dataset", "list", "--data"])
        .arg(&data)
        .args(["--train-list", "train.txt", "--test-list", "test.txt", "--set", "model.arch=\"vit\"", "--set", vit, "--set", "data.color=\"grey\""])
        .args(["--set", "data.train_transform={name=\"pad-crop\"}", "--set", "data.test_transform={name=\"none\"}", "--epochs", "1", "--cls-epochs", "0", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new(exe).args(["predict", "--run"]).arg(&run).args(["--features", "--logits", "--format", "jsonl"]).arg(data.join("test/class_3")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck: HashMap<String, Tensor> = Tensor::read_safetensors(run.join("stage1.safetensors")).unwrap().into_iter().collect();
    let w = &ck["model.head.weight"];
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), std::fs::read_dir(data.join("test/class_3")).unwrap().count());
    for l in lines {
        let f: Vec<f32> = serde_json::from_value(l["features"].clone()).unwrap();
        let logits: Vec<f32> = serde_json::from_value(l["logits"].clone()).unwrap();
        assert_eq!((f.len(), logits.len()), (16, 10), "CLIP's embedding width, the classes");
        let f = Tensor::from_slice(&f).view([1, 16]);
        // The cosine head keeps its weights as D x C (the authors' NormedLinear).
        let cos = f.matmul(&(w / w.norm_scalaropt_dim(2, [0i64].as_slice(), true))) / f.norm();
        assert!(rel_diff(&cos.view([10]), &Tensor::from_slice(&logits)) < 1e-4);
    }
}

#[test]
fn a_classifier_started_from_class_means_classifies_before_any_step() {
    // An untrained small ViT (no BatchNorm, whose statistics would move in the epoch): with a
    // learning rate too small to move a weight, the class-mean start is a nearest-class-mean
    // classifier on random features; a random start is at chance.
    let prepared = common::prepare(&common::tiny_config(), common::tiny_fashion_mnist());
    let top1 = |init: gcl::model::HeadInit| {
        let mut cfg = common::tiny_config();
        cfg.model = ModelConfig {
            arch: Some("vit".into()),
            vit: VitSpec { patch: 4, width: 64, depth: 2, heads: 4, mlp: 128, image_size: 28, ..Default::default() },
            head_init: init,
            ..Default::default()
        };
        cfg.stage1.epochs = 1;
        cfg.stage1.lr = 1e-30;
        cfg.stage2.method = gcl::config::Stage2Method::None;
        let out = tempfile::tempdir().unwrap();
        gcl::train::train(&cfg, &prepared, &common::opts(out.path(), false, &[gcl::train::Stage::One])).unwrap().stage1.unwrap().top1
    };
    let (means, random) = (top1(gcl::model::HeadInit::ClassMeans), top1(gcl::model::HeadInit::Random));
    eprintln!("untrained ViT: class-mean start {:.1}%, random start {:.1}%", 100.0 * means, 100.0 * random);
    assert!(means > random + 0.15 && means > 0.3, "{means} vs {random}");
}

#[test]
fn a_tuned_vits_checkpoints_hold_what_trained_and_refer_to_their_backbone_file() {
    use gcl::model::vit::Tune;
    use gcl::train::checkpoint::Checkpoint;
    let spec = VitSpec { patch: 4, width: 32, depth: 2, heads: 2, mlp: 64, image_size: 28, ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let (weights, file) = pretrained(dir.path(), spec, 1);
    let mut cfg = common::tiny_config();
    cfg.model = ModelConfig { arch: Some("vit".into()), vit: spec, tune: Tune::Adaptformer { width: 4 }, pretrained: Some(weights.clone()), ..Default::default() };
    cfg.stage1.epochs = 2;
    // A val set: the best-val checkpoints too.
    cfg.data.val_fraction = 0.1;
    let prepared = common::prepare(&cfg, common::tiny_fashion_mnist());
    let out = dir.path().join("run");
    let res = gcl::train::train(&cfg, &prepared, &common::opts(&out, false, common::BOTH)).unwrap();
    assert!(res.stage1_best_val.is_some());
    for stage in ["stage1", "stage2", "stage1.best-val"] {
        let path = out.join(format!("{stage}.safetensors"));
        let raw: HashMap<String, Tensor> = Tensor::read_safetensors(&path).unwrap().into_iter().collect();
        // On disk: the adapters and the classifier, not the frozen backbone.
        assert!(!raw.contains_key("model.backbone.conv_proj.weight") && raw.contains_key("model.backbone.tune.1.adaptformer.up_proj.weight"), "{stage}");
        assert!(raw.contains_key("model.head.weight"));
        // Loaded: whole again, the frozen weights the file's.
        let ck = Checkpoint::load(&path).unwrap();
        assert!(ck.tensors["model.backbone.conv_proj.weight"].equal(&file.iter().find(|(n, _)| n == "conv_proj.weight").unwrap().1));
    }
    // The same model as trained: gcl report's and predict's loader gives the same test top-1.
    let rt = gcl::runtime::Runtime::resolve(&cfg.run).unwrap();
    let r = gcl::train::run_model::load(&out, Some(2), &rt).unwrap();
    let acc = gcl::eval::evaluate(&r.model, &prepared.test, &prepared.counts, &gcl::eval::metrics::EvalInput {
        norm: prepared.norm, transform: prepared.test_transform, tte: Default::default(), batch: 256, layout: gcl::data::loader::Layout { device: Device::Cpu, channels_last: false }, workers: rt.loader(false) }, (100, 20), None).unwrap();
    assert_eq!(acc.top1, res.stage2.unwrap().top1);
    // Test-time ensembling: five crops of 28 px from a 28 px image are the image five times, so
    // the views' mean logits are the image's (a view of another image in the mean would show);
    // expanded crops are other views.
    let with_tte = |tte| {
        let input = gcl::eval::metrics::EvalInput {
            norm: prepared.norm, transform: prepared.test_transform, tte, batch: 256,
            layout: gcl::data::loader::Layout { device: Device::Cpu, channels_last: false }, workers: rt.loader(false) };
        gcl::eval::evaluate(&r.model, &prepared.test, &prepared.counts, &input, (100, 20), None).unwrap()
    };
    assert_eq!(with_tte(gcl::data::transform::Tte::FiveCrop { expand: 0 }).per_class, acc.per_class);
    let ten = with_tte(gcl::data::transform::Tte::TenCrop { expand: 4 });
    eprintln!("test top-1 {:.1}%, with ten crops of the image enlarged by 4 px {:.1}%", 100.0 * acc.top1, 100.0 * ten.top1);
    // A changed backbone file is named, not silently used.
    let mut changed = file;
    changed[0].1 = changed[0].1.detach() + 1.0;
    Tensor::write_safetensors(&changed, &weights).unwrap();
    let e = format!("{:#}", Checkpoint::load(&out.join("stage1.safetensors")).err().unwrap());
    assert!(e.contains("has changed") && e.contains("vit.safetensors"), "{e}");
}

#[test]
fn lora_merged_by_gcl_export_loads_into_torchvision_with_the_same_features() {
    let dir = tempfile::tempdir().unwrap();
    // Pretrained weights for 3-channel 28 px images, torchvision's names.
    let spec = VitSpec { patch: 4, width: 32, depth: 2, heads: 2, mlp: 64, image_size: 28, ..Default::default() };
    let (weights, file) = pretrained(dir.path(), spec, 3);
    // LoRA (rank 2) trained two epochs on RGB PNGs.
    let data = dir.path().join("data");
    let samples = common::fashion_samples(8);
    common::write_split(&data, "train", &samples, false);
    common::write_split(&data, "test", &samples[..20], false);
    let exe = env!("CARGO_BIN_EXE_gcl");
    // `gcl train` of the small ViT from the pretrained file with `tune`, into DIR/out.
    let train = |tune: &str, epochs: &str, out: &str| {
        let run = dir.path().join(out);
        let o = std::process::Command::new(exe)
            .args(["train", "--quiet", "--dataset", "list", "--data"])
            .arg(&data)
            .args(["--train-list", "train.txt", "--test-list", "test.txt", "--set", "model.arch=\"vit\"", "--set", "data.color=\"rgb\""])
            .args(["--set", "model.vit={patch=4,width=32,depth=2,heads=2,mlp=64,image_size=28}", "--set", &format!("model.tune={tune}"), "--pretrained"])
            .arg(&weights)
            .args(["--set", "data.train_transform={name=\"pad-crop\"}", "--set", "data.test_transform={name=\"none\"}", "--epochs", epochs, "--cls-epochs", "0", "--out"])
            .arg(&run)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        run
    };
    let run = train("{name=\"lora\",rank=2}", "2", "run");
    let exported = dir.path().join("merged.safetensors");
    let o = std::process::Command::new(exe).args(["export", "--run"]).arg(&run).args(["--stage", "1", "-o"]).arg(&exported).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // gcl's features of the tuned model (LoRA unmerged), for torchvision to match.
    let rt = gcl::runtime::Runtime::resolve(&gcl::runtime::RunConfig::default()).unwrap();
    let r = gcl::train::run_model::load(&run, Some(1), &rt).unwrap();
    let x = Tensor::randn([2, 3, 28, 28], (tch::Kind::Float, Device::Cpu));
    let f = tch::no_grad(|| r.model.backbone.features(&x, false)).unwrap();
    // The merged weights differ from the pretrained ones: LoRA trained.
    let merged: HashMap<String, Tensor> = Tensor::read_safetensors(&exported).unwrap().into_iter().collect();
    let w = "encoder.layers.encoder_layer_0.self_attention.in_proj_weight";
    assert!(!merged[w].equal(&file.iter().find(|(n, _)| n == w).unwrap().1));
    let io = dir.path().join("io.safetensors");
    Tensor::write_safetensors(&[("x", x), ("features", f)], &io).unwrap();
    run_python("vit_parity.py", &["check-export".as_ref(), exported.as_os_str(), io.as_os_str()]);
    // AdaptFormer has no place in torchvision's layout: refused by name.
    let ada = train("{name=\"adaptformer\"}", "1", "ada");
    let e = format!("{:#}", gcl::export::merged_backbone(&ada, None).err().unwrap());
    assert!(e.contains("Adaptformer") && e.contains("only LoRA merges"), "{e}");
}

/// A whole CLIP state dict for 1-channel 28 px images: a small image tower (embedding 24) and a
/// random text tower of CLIP's vocabulary and context (width 32, 2 blocks: 2 heads of 16);
/// and a file of the image tower alone.
fn small_clip(dir: &std::path::Path) -> (std::path::PathBuf, VitSpec, std::path::PathBuf) {
    let spec = VitSpec { patch: 4, width: 32, depth: 2, heads: 2, mlp: 64, image_size: 28, layout: Layout::Clip, embed: 24, quick_gelu: true };
    let (image_only, mut named) = pretrained(dir, spec, 1);
    let path = dir.join("clip.safetensors");
    let (w, e) = (32i64, 24i64);
    let r = |dims: &[i64]| Tensor::randn(dims, (tch::Kind::Float, Device::Cpu)) / (*dims.last().unwrap() as f64).sqrt();
    let one = |n: i64| Tensor::ones([n], (tch::Kind::Float, Device::Cpu));
    named.push(("token_embedding.weight".into(), r(&[49408, w]) * 4.0));
    named.push(("positional_embedding".into(), r(&[77, w])));
    for i in 0..2 {
        let b = format!("transformer.resblocks.{i}");
        for (n, t) in [
            ("ln_1.weight", one(w)),
            ("ln_1.bias", r(&[w])),
            ("attn.in_proj_weight", r(&[3 * w, w])),
            ("attn.in_proj_bias", r(&[3 * w])),
            ("attn.out_proj.weight", r(&[w, w])),
            ("attn.out_proj.bias", r(&[w])),
            ("ln_2.weight", one(w)),
            ("ln_2.bias", r(&[w])),
            ("mlp.c_fc.weight", r(&[4 * w, w])),
            ("mlp.c_fc.bias", r(&[4 * w])),
            ("mlp.c_proj.weight", r(&[w, 4 * w])),
            ("mlp.c_proj.bias", r(&[w])),
        ] {
            named.push((format!("{b}.{n}"), t));
        }
    }
    named.push(("ln_final.weight".into(), one(w)));
    named.push(("ln_final.bias".into(), r(&[w])));
    named.push(("text_projection".into(), r(&[w, e])));
    named.push(("logit_scale".into(), Tensor::from(4.6f32)));
    Tensor::write_safetensors(&named, &path).unwrap();
    (path, spec, image_only)
}

#[test]
fn a_clip_zero_shot_run_classifies_with_the_text_embeddings_of_the_class_prompts() {
    use gcl::model::HeadInit;
    let dir = tempfile::tempdir().unwrap();
    let (weights, spec, image_only) = small_clip(dir.path());
    let prepared = common::prepare(&common::tiny_config(), common::tiny_fashion_mnist());
    let mut cfg = common::tiny_config();
    cfg.model = ModelConfig { arch: Some("vit".into()), vit: spec, pretrained: Some(weights.clone()), head_init: HeadInit::Text, ..Default::default() };
    cfg.model.text.heads = 2;
    cfg.model.text.templates = vec!["a photo of a {}.".into(), "a bad photo of the {}.".into()];
    cfg.stage1.epochs = 0;
    cfg.stage2.method = gcl::config::Stage2Method::None;
    cfg.validate().unwrap();
    let out = dir.path().join("zs");
    let res = gcl::train::train(&cfg, &prepared, &common::opts(&out, false, &[gcl::train::Stage::One])).unwrap();
    // The classifier is each class's mean prompt embedding, untouched by training.
    let names = gcl::model::clip_text::class_names(None, prepared.train.class_names()).unwrap();
    assert_eq!(names[0], "T-shirt/top");
    let text = TextTower::load(&weights, 2, true).unwrap().class_embeddings(&names, &cfg.model.text.templates).unwrap();
    let ck = gcl::train::checkpoint::Checkpoint::load(&out.join("stage1.safetensors")).unwrap();
    let head = &ck.tensors["model.head.weight"];
    let e = rel_diff(&head.transpose(0, 1), &text);
    assert!(e < 1e-5, "head rows differ from the text embeddings by {e:.1e}");
    assert!(res.stage1.is_some());
    // Class embeddings from a file: the same classifier.
    let file = dir.path().join("classes.npy");
    text.write_npy(&file).unwrap();
    let mut from_file = cfg.clone();
    from_file.model.head_init = HeadInit::Embeddings;
    from_file.model.class_embeddings = Some(file.clone());
    let out2 = dir.path().join("file");
    let res2 = gcl::train::train(&from_file, &prepared, &common::opts(&out2, false, &[gcl::train::Stage::One])).unwrap();
    assert_eq!(res2.stage1.unwrap().top1, res.stage1.as_ref().unwrap().top1);
    // gcl compare's CLIP list: its zero-shot row is this classifier's accuracy; LIFT and GCL-E
    // train adapters from the same start.
    let mut base = cfg.clone();
    base.stage1.epochs = 1;
    let methods = gcl::compare::parse_methods(gcl::compare::CLIP_METHODS, "clip").unwrap();
    let rows = gcl::compare::run(&base, &methods, &prepared, &dir.path().join("compare"), false).unwrap();
    assert_eq!(rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(), ["zero-shot", "lift", "gcl-e"]);
    assert_eq!(rows[0].acc.top1, res.stage1.as_ref().unwrap().top1);
    assert!(rows[1].params.unwrap().trainable < rows[1].params.unwrap().total / 2, "adapters and the classifier train, not the tower");
    // Bad input is named: a file of another shape, a state dict without a text tower, a
    // tower that is not CLIP's.
    Tensor::zeros([10, 7], (tch::Kind::Float, Device::Cpu)).write_npy(&file).unwrap();
    let e = format!("{:#}", gcl::train::train(&from_file, &prepared, &common::opts(&dir.path().join("bad"), false, &[gcl::train::Stage::One])).err().unwrap());
    assert!(e.contains("classes.npy") && e.contains("[10, 7]") && e.contains("10 classes x 24"), "{e}");
    let mut no_text = cfg.clone();
    no_text.model.pretrained = Some(image_only);
    let e = format!("{:#}", gcl::train::train(&no_text, &prepared, &common::opts(&dir.path().join("bad2"), false, &[gcl::train::Stage::One])).err().unwrap());
    assert!(e.contains("holds no CLIP text tower"), "{e}");
    let mut tv = cfg.clone();
    tv.model.vit.layout = Layout::Torchvision;
    tv.model.vit.embed = 0;
    tv.model.vit.quick_gelu = false;
    let e = format!("{:#}", tv.validate().err().unwrap());
    assert!(e.contains("needs a CLIP image tower"), "{e}");
}

#[test]
fn clip_preprocessing_is_openclips_on_real_photos() {
    use gcl::data::augment::{place, Normalize, Placement};
    use gcl::data::transform::TestTransform;
    // Photos of several sizes and aspect ratios (Debian's mate-backgrounds).
    let photos: Vec<std::path::PathBuf> =
        ["nature/Aqua.jpg", "nature/FreshFlower.jpg", "abstract/Elephants.jpg"].iter().map(|p| std::path::Path::new("/usr/share/backgrounds/mate").join(p)).collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pre.safetensors");
    let mut args: Vec<&std::ffi::OsStr> = vec!["preprocess".as_ref(), out.as_os_str()];
    args.extend(photos.iter().map(|p| p.as_os_str()));
    run_python("vit_parity.py", &args);
    let theirs: HashMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    for (i, p) in photos.iter().enumerate() {
        let img = gcl::data::image::decode(&std::fs::read(p).unwrap(), gcl::data::image::Color::Rgb).unwrap();
        let s = TestTransform::Clip { size: 224 }.apply(img).unwrap();
        assert_eq!((s.geometry.h, s.geometry.w), (224, 224));
        let mut buf = vec![0f32; 3 * 224 * 224];
        place(&mut buf, &s.pixels, s.geometry, &Normalize::CLIP, Placement { dy: 0, dx: 0, flip: false }, false);
        let ours = Tensor::from_slice(&buf).view([3, 224, 224]);
        // The resizers differ in rounding only: one 8-bit level is 0.015 after normalising.
        let d = (&ours - &theirs[&i.to_string()]).abs();
        let (mean, max) = (d.mean(tch::Kind::Float).double_value(&[]), d.max().double_value(&[]));
        eprintln!("{}: mean |difference| {mean:.4}, max {max:.3}", p.display());
        assert!(mean < 0.004 && max < 0.1, "{}: mean {mean}, max {max}", p.display());
    }
}
