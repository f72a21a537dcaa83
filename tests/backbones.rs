//! The ImageNet backbones are torchvision's networks: the same state dicts, the same outputs
//! (fixtures made by scripts/backbone_parity.py with the venv's torchvision from random
//! weights), and gcl's weights load back into torchvision.
mod common;

use common::{rel_diff, run_python};
use gcl::kernels::layout::params_channels_last;
use gcl::kernels::Kernels;
use gcl::model::weights::load_torchvision;
use gcl::model::{Classifier, HeadKind, ModelConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// The fixtures, made once per test binary.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        run_python("backbone_parity.py", &["make".as_ref(), dir.path().as_os_str()]);
        dir
    })
    .path()
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn model(vs: &VarStore, arch: &str, classes: i64, head: HeadKind) -> Classifier {
    let cfg = ModelConfig { arch: Some(arch.into()), ..Default::default() };
    Classifier::new(&vs.root(), &cfg, 3, classes, head, Kernels::NONE).unwrap()
}

#[test]
fn every_architecture_gives_torchvisions_outputs_for_torchvisions_weights() {
    let dir = fixtures();
    // Every architecture the script made, each state dict in its format (zip, legacy, safetensors).
    let index = std::fs::read_to_string(dir.join("archs.txt")).unwrap();
    let archs: Vec<(&str, &str)> = index.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(archs.len(), gcl::model::Arch::ALL.len(), "the script covers every architecture: {archs:?}");
    for (arch, ext) in archs {
        let vs = VarStore::new(Device::Cpu);
        let m = model(&vs, arch, 1000, HeadKind::Linear);
        let loaded = load_torchvision(&vs, &dir.join(format!("{arch}.{ext}")), &[], true).unwrap();
        assert_eq!(loaded.set, vs.variables().len(), "{arch}: every variable comes from the file");
        let io = read(&dir.join(format!("{arch}.io.safetensors")));
        let (x, want_f, want_l) = (&io["x"], &io["features"], &io["logits"]);
        for channels_last in [false, true] {
            if channels_last {
                let mut w: Vec<Tensor> = vs.variables().into_values().collect();
                params_channels_last(&mut w).unwrap();
            }
            let x = if channels_last { common::cl(x) } else { x.shallow_clone() };
            let f = tch::no_grad(|| m.backbone.features(&x, false)).unwrap();
            let folded = m.backbone.freeze().unwrap().features(&x).unwrap();
            let logits = tch::no_grad(|| m.forward(&x, false)).unwrap();
            let at = format!("{arch} (channels-last {channels_last})");
            eprintln!("{at}: relative error features {:.1e}, folded {:.1e}, logits {:.1e}", rel_diff(&f, want_f), rel_diff(&folded, want_f), rel_diff(&logits, want_l));
            assert!(rel_diff(&f, want_f) < 1e-4, "{at}: features differ by {:.2e}", rel_diff(&f, want_f));
            assert!(rel_diff(&folded, want_f) < 1e-4, "{at}: folded features differ by {:.2e}", rel_diff(&folded, want_f));
            assert!(rel_diff(&logits, want_l) < 1e-4, "{at}: logits differ by {:.2e}", rel_diff(&logits, want_l));
        }
    }
}

#[test]
fn gcl_weights_load_into_torchvision_with_the_readmes_lines() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["resnet10", "resnext50_32x4d"] {
        tch::manual_seed(7);
        let vs = VarStore::new(Device::Cpu);
        let m = model(&vs, arch, 10, HeadKind::Cosine);
        // Running statistics of our own, so that they must travel too.
        tch::no_grad(|| {
            for _ in 0..2 {
                let _ = m.backbone.features(&(Tensor::randn([4, 3, 64, 64], (tch::Kind::Float, Device::Cpu)) * 2.0 + 0.5), true).unwrap();
            }
        });
        let ckpt = dir.path().join(format!("{arch}.safetensors"));
        let mut c = gcl::train::checkpoint::Checkpoint::new();
        c.put_model(&vs);
        c.save(&ckpt).unwrap();
        let x = Tensor::randn([2, 3, 64, 64], (tch::Kind::Float, Device::Cpu));
        let x_path = dir.path().join("x.safetensors");
        Tensor::write_safetensors(&[("x", &x)], &x_path).unwrap();
        let out = dir.path().join(format!("{arch}.out.safetensors"));
        run_python("backbone_parity.py", &["load".as_ref(), arch.as_ref(), ckpt.as_os_str(), x_path.as_os_str(), out.as_os_str()]);
        let theirs = &read(&out)["features"];
        let ours = tch::no_grad(|| m.backbone.features(&x, false)).unwrap();
        assert!(rel_diff(&ours, theirs) < 1e-4, "{arch}: torchvision's features differ by {:.2e}", rel_diff(&ours, theirs));
        // The checkpoint as --pretrained of another run: the same backbone.
        let vs2 = VarStore::new(Device::Cpu);
        let m2 = model(&vs2, arch, 3, HeadKind::Cosine);
        load_torchvision(&vs2, &ckpt, &[], false).unwrap();
        assert!(tch::no_grad(|| m2.backbone.features(&x, false)).unwrap().equal(&ours), "{arch}: a gcl checkpoint as pretrained weights");
    }
}

fn load_err(arch: &str, file: &Path) -> String {
    let vs = VarStore::new(Device::Cpu);
    let _m = model(&vs, arch, 10, HeadKind::Cosine);
    format!("{:#}", load_torchvision(&vs, file, &[], false).unwrap_err())
}

#[test]
fn a_state_dict_of_another_network_is_refused_naming_its_tensors() {
    let dir = fixtures();
    let r50 = dir.join("resnet50.legacy.pth");
    // ResNet-101 has 23 blocks in layer3, ResNet-50 six: 17 blocks of 3 convolutions and 3
    // BatchNorms (4 tensors each) missing.
    let e = load_err("resnet101", &r50);
    assert!(e.contains("does not fit this model") && e.contains("missing from the file (255)") && e.contains("layer3.10.bn1.bias [256]"), "{e}");
    // ResNeXt-50 has ResNet-50's names with other widths.
    let e = load_err("resnext50_32x4d", &r50);
    assert!(e.contains("of another shape") && e.contains("layer1.0.conv1.weight: [64, 64, 1, 1] in the file, [128, 64, 1, 1] in the model"), "{e}");
    // A bottleneck file into a basic-block network: names it does not have.
    let e = load_err("resnet10", &r50);
    assert!(e.contains("in the file but not in the model") && e.contains("layer1.0.conv3.weight"), "{e}");
    let e = load_err("resnet10", &dir.join("nothing.pth"));
    assert!(e.contains("no such file"), "{e}");
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let e = load_err("resnet10", &junk);
    assert!(e.contains("not a PyTorch state dict"), "{e}");
}

fn values(vs: &VarStore) -> HashMap<String, Tensor> {
    vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect()
}

#[test]
fn partial_fine_tuning_freezes_through_the_named_block_and_reinit_keeps_fresh_weights() {
    let dir = fixtures();
    let file: PathBuf = dir.join("resnet10.pth");
    let vs = VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        arch: Some("resnet10".into()),
        pretrained: Some(file.clone()),
        freeze_through: Some("layer3".into()),
        reinit: vec!["layer4.0".into()],
        ..Default::default()
    };
    tch::manual_seed(0);
    let mut m = Classifier::new(&vs.root(), &cfg, 3, 5, HeadKind::Cosine, Kernels::NONE).unwrap();
    gcl::model::weights::freeze(&mut m, &cfg).unwrap();
    let loaded = gcl::model::weights::load_pretrained(&vs, &cfg).unwrap().unwrap();
    assert!(loaded.fresh > 0 && loaded.set > 0);
    let tv = gcl::model::weights::read_state_dict(&file).unwrap();
    let before = values(&vs);
    for (name, v) in &before {
        let Some(tv_name) = name.strip_prefix("backbone.") else { continue };
        let same = v.equal(&tv[tv_name]);
        assert_eq!(same, !tv_name.starts_with("layer4.0."), "{name}: from the file unless re-initialised");
    }
    // One training step's forward and backward.
    let x = Tensor::randn([4, 3, 64, 64], (tch::Kind::Float, Device::Cpu));
    let loss = m.forward(&x, true).unwrap().square().mean(None);
    loss.backward();
    for (name, t) in vs.variables() {
        let Some(tv_name) = name.strip_prefix("backbone.") else { continue };
        let frozen = !tv_name.starts_with("layer4");
        if name.contains("running_") {
            assert_eq!(t.equal(&before[&name]), frozen, "{name}: BatchNorm statistics move only in the trained part");
        } else {
            assert_eq!(t.requires_grad(), !frozen, "{name}");
            if !frozen {
                assert!(t.grad().defined(), "{name} has a gradient");
            }
        }
    }
    // Not a module of the network: an error naming it.
    let bad = ModelConfig { freeze_through: Some("layer5".into()), ..cfg.clone() };
    let e = format!("{:#}", bad.check().unwrap_err());
    assert!(e.contains("`layer5` is not a module of resnet10"), "{e}");
}
