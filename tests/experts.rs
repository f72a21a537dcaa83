//! GCL on a mixture of experts (RIDE: Wang et al., ICLR 2021): the experts' layout, RIDE's
//! diversity term against a PyTorch reference of its formula, pretrained weights, and
//! two-stage training with `gcl compare`.
mod common;
use common::*;
use gcl::kernels::Kernels;
use gcl::loss::{Diversity, DiversityConfig};
use gcl::model::{param_counts, Classifier, HeadKind, ModelConfig};
use std::collections::HashMap;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// RIDE's diversity term,
///
///   L_div = lambda Tbar^2 sum_e KL( softmax(zbar / T) || softmax(z_e / T) ),
///
/// KL averaged over the batch, zbar = (1/E) sum_e z_e carrying no gradient, T one temperature
/// or per class T_j = T w_j / max_k w_k with w_j = C n_j / N r + 1 - r, Tbar = mean_j T_j,
/// equals scripts/diversity_reference.py's (RIDELoss.forward's own lines) in value and in its
/// gradient with respect to every expert's logits.
#[test]
fn the_diversity_term_is_rides() {
    let dir = tempfile::tempdir().unwrap();
    run_python("diversity_reference.py", &[dir.path().as_os_str()]);
    let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cases.json")).unwrap()).unwrap();
    let t: HashMap<String, Tensor> = Tensor::read_safetensors(dir.path().join("diversity.safetensors")).unwrap().into_iter().collect();
    let counts = usizes(&fx["counts"]);
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 4 && cases.iter().any(|c| c["reweight_factor"].is_null()) && cases.iter().any(|c| c["reweight_factor"].is_number()));
    for (i, case) in cases.iter().enumerate() {
        let cfg = DiversityConfig {
            factor: case["factor"].as_f64().unwrap(),
            temperature: case["temperature"].as_f64().unwrap(),
            reweight_factor: case["reweight_factor"].as_f64(),
        };
        let e = case["experts"].as_u64().unwrap() as usize;
        let logits: Vec<Tensor> = (0..e).map(|k| t[&format!("case{i}.logits{k}")].copy().set_requires_grad(true)).collect();
        let loss = Diversity::new(&cfg, &counts, Device::Cpu).term(&logits);
        assert_close(&[loss.double_value(&[])], &[case["loss"].as_f64().unwrap()], &format!("case {i}: L_div"));
        let grads = Tensor::run_backward(&[loss], &logits, false, false);
        for (k, g) in grads.iter().enumerate() {
            let want = &t[&format!("case{i}.grad{k}")];
            assert!(rel_diff(g, want) < 1e-6, "case {i}: gradient of expert {k}: {}", rel_diff(g, want));
        }
    }
}

/// Experts that agree with their ensemble have nothing to gain: the term is 0, and with
/// lambda < 0 it is negative as soon as they differ (diversity lowers the loss).
#[test]
fn diversity_is_zero_for_agreeing_experts_and_rewards_disagreement() {
    let counts = [100, 10, 1];
    let d = Diversity::new(&DiversityConfig::default(), &counts, Device::Cpu);
    let z = Tensor::randn([4, 3], (Kind::Double, Device::Cpu)) * 5.0;
    assert!(d.term(&[z.copy(), z.copy(), z.copy()]).double_value(&[]).abs() < 1e-12);
    let other = Tensor::randn([4, 3], (Kind::Double, Device::Cpu)) * 5.0;
    assert!(d.term(&[z.copy(), other, z.copy()]).double_value(&[]) < 0.0);
    let off = Diversity::new(&DiversityConfig { factor: 0.0, ..Default::default() }, &counts, Device::Cpu);
    assert_eq!(off.term(&[z.copy(), z * 2.0]).double_value(&[]), 0.0);
}

fn cifar(vs: &VarStore, cfg: ModelConfig) -> anyhow::Result<Classifier> {
    cfg.check()?;
    Classifier::new(&vs.root(), &cfg, 3, 10, HeadKind::Cosine, Kernels::NONE)
}

/// RIDE's CIFAR ResNet-32: stem and layer1 shared; layer2 and layer3 once per expert at 3/4
/// width (24 and 48 channels); a 48-wide cosine classifier per expert; the folded network
/// gives the same features; the output is the experts' mean, and for cosine heads that mean
/// is the cosine between `embedding` and `class_weights`.
#[test]
fn experts_share_the_first_stage_and_own_the_last_two_at_three_quarters_width() {
    let vs = VarStore::new(Device::Cpu);
    let m = cifar(&vs, ModelConfig { experts: 3, ..Default::default() }).unwrap();
    let v = vs.variables();
    let shape = |n: &str| v.get(n).unwrap_or_else(|| panic!("no variable {n}")).size();
    assert_eq!(shape("backbone.layer1.4.c2.weight"), [16, 16, 3, 3]);
    assert_eq!(shape("backbone.layer2s.0.0.c1.weight"), [24, 16, 3, 3]);
    assert_eq!(shape("backbone.layer3s.2.4.c2.weight"), [48, 48, 3, 3]);
    assert_eq!(shape("head.2.weight"), [48, 10]);
    assert!(!v.keys().any(|n| n.starts_with("backbone.layer2.") || n.starts_with("backbone.layer3.") || n.starts_with("head.3")));
    assert_eq!((m.backbone.feature_dim(), m.backbone.experts(), m.experts()), (144, 3, 3));
    assert_eq!(m.backbone.arch(), "cifar-resnet32 with 3 experts (2 stages each, width 0.75)");

    let p = param_counts(&vs, 3);
    assert_eq!(p.total, p.shared + 3 * p.per_expert);
    let single_vs = VarStore::new(Device::Cpu);
    cifar(&single_vs, ModelConfig::default()).unwrap();
    let single = param_counts(&single_vs, 1);
    assert_eq!(single.total, single.shared + single.per_expert);
    // 3 experts at 3/4 width: (3/4)^2 x 3 = 1.7x the weights of the last two stages.
    let ratio = p.total as f64 / single.total as f64;
    assert!((1.6..1.8).contains(&ratio), "{} vs {} weights", p.total, single.total);

    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    for _ in 0..3 {
        let _ = m.backbone.features(&(&x * 1.5 + 0.3), true).unwrap(); // non-trivial BatchNorm statistics
    }
    let f = tch::no_grad(|| m.backbone.features(&x, false)).unwrap();
    assert_eq!(f.size(), [4, 144]);
    let folded = m.backbone.freeze().unwrap().features(&x).unwrap();
    assert!(rel_diff(&folded, &f) < 1e-4, "folded {}", rel_diff(&folded, &f));
    let experts = m.expert_outputs(&f);
    assert_eq!(experts.len(), 3);
    let mean = (&experts[0] + &experts[1] + &experts[2]) / 3.0;
    assert!(rel_diff(&m.output(&f), &mean) < 1e-6);
    assert!(experts[0].dist(&experts[1]).double_value(&[]) > 1e-3, "the experts are different networks");
    let cos = m.embedding(&f).matmul(&m.class_weights().transpose(0, 1));
    assert!(rel_diff(&cos, &mean) < 1e-5, "mean of cosines = cosine of (phi, omega): {}", rel_diff(&cos, &mean));
    assert!((m.embedding(&f).norm_scalaropt_dim(2, [1], false) - 1.0).abs().max().double_value(&[]) < 1e-5);

    // One expert is today's model, names and all; the other forms and bad settings.
    let one = VarStore::new(Device::Cpu);
    cifar(&one, ModelConfig::default()).unwrap();
    assert!(one.variables().contains_key("head.weight") && one.variables().contains_key("backbone.layer3.4.c2.weight"));
    let last = VarStore::new(Device::Cpu);
    let m1 = cifar(&last, ModelConfig { experts: 2, expert_stages: 1, expert_width: 1.0, depth: 20, ..Default::default() }).unwrap();
    assert_eq!(last.variables()["backbone.layer3s.1.0.c1.weight"].size(), [64, 32, 3, 3]);
    assert_eq!(m1.backbone.feature_dim(), 128);
    let err = |cfg: ModelConfig| cifar(&VarStore::new(Device::Cpu), cfg).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(ModelConfig { experts: 0, ..Default::default() }).contains("model.experts = 0"));
    assert!(err(ModelConfig { experts: 3, expert_stages: 3, ..Default::default() }).contains("model.expert_stages = 3"));
    assert!(err(ModelConfig { experts: 3, expert_width: 0.25, ..Default::default() }).contains("layer2 would have 8 channels"));
}

/// The ImageNet ResNets with experts (RIDE: layer3 + layer4 per expert): from one pretrained
/// torchvision state dict, full-width experts are copies of the pretrained model (each
/// expert's features are the single model's); at 3/4 width only the shared stages load and
/// the experts' own start fresh.
#[test]
fn full_width_experts_from_one_pretrained_model_are_copies_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let single_vs = VarStore::new(Device::Cpu);
    let arch = "resnet10";
    let single = Classifier::new(&single_vs.root(), &ModelConfig { arch: Some(arch.into()), ..Default::default() }, 3, 5, HeadKind::Cosine, Kernels::NONE).unwrap();
    let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
    for _ in 0..3 {
        let _ = single.backbone.features(&(&x * 2.0 + 0.5), true).unwrap();
    }
    let want = tch::no_grad(|| single.backbone.features(&x, false)).unwrap();
    let named: Vec<(String, Tensor)> = single_vs.variables().into_iter().filter_map(|(n, t)| n.strip_prefix("backbone.").map(|b| (b.to_string(), t))).collect();
    let file = dir.path().join("tv.safetensors");
    Tensor::write_safetensors(&named, &file).unwrap();

    for (width, copies) in [(1.0, true), (0.75, false)] {
        let cfg = ModelConfig { arch: Some(arch.into()), experts: 3, expert_width: width, pretrained: Some(file.clone()), ..Default::default() };
        cfg.check().unwrap();
        let vs = VarStore::new(Device::Cpu);
        let m = Classifier::new(&vs.root(), &cfg, 3, 5, HeadKind::Cosine, Kernels::NONE).unwrap();
        let loaded = gcl::model::weights::load_pretrained(&vs, &cfg).unwrap().unwrap();
        let f = tch::no_grad(|| m.backbone.features(&x, false)).unwrap();
        if copies {
            assert_eq!(loaded.fresh, 0);
            assert_eq!(f.size(), [2, 3 * 512]);
            for (e, part) in f.chunk(3, 1).iter().enumerate() {
                assert!(rel_diff(part, &want) < 1e-5, "expert {e}: {}", rel_diff(part, &want));
            }
        } else {
            assert!(loaded.fresh > 0 && loaded.set > 0, "{loaded:?}");
            assert_eq!(f.size(), [2, 3 * 384]);
            assert!(vs.variables()["backbone.conv1.weight"].equal(&single_vs.variables()["backbone.conv1.weight"]));
        }
    }
    // Freezing reaches the shared modules only.
    let mut m = Classifier::new(&VarStore::new(Device::Cpu).root(), &ModelConfig { arch: Some(arch.into()), experts: 2, ..Default::default() }, 3, 5, HeadKind::Cosine, Kernels::NONE).unwrap();
    assert!(m.backbone.freeze_through("layer2").is_ok());
    assert!(m.backbone.freeze_through("layer3").unwrap_err().to_string().contains("experts' own"));
}

/// `gcl compare --methods experts`: single-expert and 3-expert GCL at one budget. With
/// experts, results.json keeps each expert's accuracy beside the mean's, and the weights;
/// stage 2 re-trains every expert's classifier and nothing of the backbone.
#[test]
fn compare_runs_single_and_three_expert_gcl_and_stage2_retrains_every_classifier() {
    use gcl::compare::{builtin_list, parse_methods, run, table};
    let methods = parse_methods(builtin_list("experts".as_ref()).unwrap(), "experts").unwrap();
    assert_eq!(methods.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["gcl-e", "gcl-e-3experts"]);
    let base = tiny_config();
    let data = prepare(&base, tiny_fashion_mnist());
    let dir = tempfile::tempdir().unwrap();
    let rows = run(&base, &methods, &data, dir.path(), false).unwrap();
    let (one, three) = (&rows[0], &rows[1]);
    assert!(one.acc.experts.is_empty() && three.acc.experts.len() == 3);
    // Chance is 10%; 6 epochs of ResNet-8 on 1100 images.
    assert!(three.acc.top1 > 0.25 && three.acc.experts.iter().all(|a| a.top1 > 0.15), "{:?}", three.acc);
    let (p1, p3) = (one.params.unwrap(), three.params.unwrap());
    assert_eq!((p1.experts, p3.experts), (1, 3));
    assert!(p3.total > p1.total);
    assert!(table(&rows, gcl::eval::table::pct).markdown().contains("| gcl-e-3experts |"));
    let res: gcl::eval::report::Results = serde_json::from_str(&std::fs::read_to_string(dir.path().join("gcl-e-3experts/results.json")).unwrap()).unwrap();
    assert_eq!(res.stage1.as_ref().unwrap().experts.len(), 3);
    let text = gcl::eval::report::table(&res, 100, 20);
    assert!(text.contains("stage 1 (3 experts' mean)") && text.contains("expert 3 alone"), "{text}");

    let read = |s: &str| -> HashMap<String, Tensor> { Tensor::read_safetensors(dir.path().join(format!("gcl-e-3experts/{s}.safetensors"))).unwrap().into_iter().collect() };
    let (s1, s2) = (read("stage1"), read("stage2"));
    let backbone: Vec<&String> = s1.keys().filter(|n| n.starts_with("model.backbone.")).collect();
    assert!(backbone.iter().any(|n| n.contains("layer3s.2.")));
    for n in backbone {
        assert!(s1[n].equal(&s2[n]), "{n} changed in stage 2");
    }
    for e in 0..3 {
        let n = format!("model.head.{e}.weight");
        assert!(!s1[&n].equal(&s2[&n]), "stage 2 left expert {e}'s classifier as it was");
    }
}
