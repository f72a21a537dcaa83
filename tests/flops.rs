//! The arithmetic `gcl bench` reports (src/model/flops.rs, counted from our layers) is
//! PyTorch's own count (torch.utils.flop_counter) of the same networks: the reference's
//! ResNet-32, torchvision's ResNet-50 and ViT-B/16, forward and backward, one image.
mod common;

use gcl::kernels::Kernels;
use gcl::model::flops::cost;
use gcl::model::{Classifier, HeadKind, ModelConfig};
use serde_json::Value;

#[test]
fn our_flop_counts_are_pytorchs_for_the_reference_resnet32_resnet50_and_vit_b16() {
    // (our architecture, PyTorch's model, image side, channels, classes)
    let cases = [("cifar-resnet", "reference-resnet32", 28, 1, 10), ("resnet50", "resnet50", 224, 3, 1000), ("vit_b_16", "vit_b_16", 224, 3, 1000)];
    let spec: Vec<Value> = cases.iter().map(|&(_, m, size, ch, classes)| serde_json::json!({"model": m, "size": size, "channels": ch, "classes": classes})).collect();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(common::venv_python()).arg(root.join("scripts/count_flops.py")).arg(serde_json::to_string(&spec).unwrap()).output().unwrap();
    assert!(out.status.success(), "count_flops.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for ((arch, _, size, ch, classes), t) in cases.iter().zip(&theirs) {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig { arch: (*arch != "cifar-resnet").then(|| arch.to_string()), depth: 32, ..Default::default() };
        let model = Classifier::new(&vs.root(), &cfg, *ch, *classes, HeadKind::Cosine, Kernels::NONE).unwrap();
        let ours = cost(&model.ops(*size, *size));
        let (f, b) = (t["forward"].as_f64().unwrap(), t["backward"].as_f64().unwrap());
        // PyTorch counts the same products; the cosine head's normalisations are not products.
        assert!((ours.forward / f - 1.0).abs() < 1e-3, "{arch}: forward {} FLOPs, PyTorch {f}", ours.forward);
        assert!((ours.backward / b - 1.0).abs() < 1e-3, "{arch}: backward {} FLOPs, PyTorch {b}", ours.backward);
    }
}
