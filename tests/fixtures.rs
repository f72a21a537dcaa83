//! Parity with the PyTorch reference (shared/reference/gcl_reference.py) on the fixture
//! file: losses and their gradients, long-tail profiles, cloud sizes, samplers, shot
//! groups. `cargo test fixtures` runs exactly these; GCL_FIXTURES=PATH swaps the file.
mod common;
use common::*;
use gcl::data::sampler::{balanced_weights, cben_weights};
use gcl::data::split::{longtail_counts, Profile};
use gcl::eval::ShotGroup;
use gcl::loss::margin::{log_prior, posthoc_adjust};
use gcl::loss::{
    effective_number_weights, CloudForm, CloudSize, Criterion, CrossEntropy, Focal, GclA, GclAParams, GclE, GclParams, Ldam,
    LogitAdjusted,
};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn cloud_form(case: &Value) -> CloudForm {
    match case["params"].get("cloud").and_then(Value::as_str).unwrap_or("log") {
        "log" => CloudForm::Log,
        "pow3" => CloudForm::Pow3,
        "pow4" => CloudForm::Pow4,
        other => panic!("unknown cloud form {other}"),
    }
}

fn weight(case: &Value) -> Option<Tensor> {
    case.get("weight").filter(|w| !w.is_null()).map(|w| Tensor::from_slice(&f64s(w)))
}

/// Runs `loss` on the case's input and checks loss and d loss / d input.
fn check_case(case: &Value, loss: impl Fn(&Tensor, &Tensor) -> Tensor) {
    let name = case["name"].as_str().unwrap();
    let input = matrix(&case["input"]).set_requires_grad(true);
    let target = targets(&case["target"]);
    let l = loss(&input, &target);
    l.backward();
    assert_close(&[l.double_value(&[])], &[case["expected_loss"].as_f64().unwrap()], &format!("{name} loss"));
    let grad = Vec::<f64>::try_from(&input.grad().flatten(0, -1)).unwrap();
    let want: Vec<f64> = case["expected_grad"].as_array().unwrap().iter().flat_map(f64s).collect();
    assert_close(&grad, &want, &format!("{name} grad"));
}

/// GCL-E and GCL-A at Gaussians other than the paper's (mean, std, clamp), from the
/// reference formula (scripts/gen_fixtures.py --gaussians).
fn gaussian_fixtures() -> Value {
    serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gaussians.json")).unwrap()).unwrap()
}

#[test]
fn fixtures_gcl_e_matches_reference_loss_and_gradient() {
    check_gcl_e(&fixtures());
}

#[test]
fn gcl_at_other_gaussians_matches_the_reference_formula() {
    check_gcl_e(&gaussian_fixtures());
    check_gcl_a(&gaussian_fixtures());
}

fn check_gcl_e(fx: &Value) {
    let cases = cases(fx, "gcl_e");
    assert!(!cases.is_empty(), "no gcl_e case in the fixtures");
    for case in cases {
        let params = GclParams {
            s: param(case, "s", 30.0),
            m: param(case, "m", 0.0),
            noise_mul: param(case, "noise_mul", 0.5),
            mean: param(case, "mean", 0.0),
            std: param(case, "std", 1.0 / 3.0),
            clamp: param(case, "clamp", 1.0),
            focal_gamma: case["params"].get("focal_gamma").and_then(Value::as_f64),
            cloud: cloud_form(case),
            ..Default::default()
        };
        let gcl = GclE::new(&usizes(&case["counts"]), params, weight(case), Device::Cpu);
        let noise = matrix(&case["noise"]);
        check_case(case, |x, y| gcl.loss_with_noise(x, y, &noise));
    }
}

#[test]
fn fixtures_cross_entropy_matches_reference() {
    let fx = fixtures();
    let cases = cases(&fx, "cross_entropy");
    assert!(!cases.is_empty(), "no cross_entropy case in the fixtures");
    for case in cases {
        let ce = CrossEntropy { weight: weight(case) };
        check_case(case, |x, y| ce.loss(x, y));
    }
}

#[test]
fn fixtures_gcl_a_matches_reference_loss_and_gradient() {
    check_gcl_a(&fixtures());
}

fn check_gcl_a(fx: &Value) {
    let cases = cases(fx, "gcl_a");
    assert!(!cases.is_empty(), "no gcl_a case in the fixtures");
    for case in cases {
        let params = GclAParams {
            s: param(case, "s", 30.0),
            m: param(case, "m", 0.0),
            epsilon: param(case, "epsilon", 0.1),
            easy_margin: case["params"].get("easy_margin").and_then(Value::as_bool).unwrap_or(false),
            mean: param(case, "mean", 0.0),
            std: param(case, "std", 1.0 / 3.0),
            clamp: param(case, "clamp", 1.0),
            focal_gamma: case["params"].get("focal_gamma").and_then(Value::as_f64),
            cloud: cloud_form(case),
            ..Default::default()
        };
        let gcl = GclA::new(&usizes(&case["counts"]), params, weight(case), Device::Cpu);
        let noise = matrix(&case["noise"]);
        check_case(case, |x, y| gcl.loss_with_noise(x, y, &noise));
    }
}

#[test]
fn fixtures_focal_matches_reference() {
    let fx = fixtures();
    let cases = cases(&fx, "focal");
    assert!(!cases.is_empty(), "no focal case in the fixtures");
    for case in cases {
        let f = Focal { gamma: param(case, "gamma", 1.0), weight: weight(case) };
        check_case(case, |x, y| f.loss(x, y));
    }
}

#[test]
fn fixtures_ldam_matches_reference() {
    let fx = fixtures();
    let cases = cases(&fx, "ldam");
    assert!(!cases.is_empty(), "no ldam case in the fixtures");
    for case in cases {
        let counts = usizes(&case["counts"]);
        let l = Ldam::new(&counts, param(case, "max_m", 0.5), param(case, "s", 30.0), weight(case), Device::Cpu);
        check_case(case, |x, y| l.loss(x, y));
    }
}

#[test]
fn fixtures_balanced_softmax_and_logit_adjusted_match_reference() {
    let fx = fixtures();
    let bs = cases(&fx, "balanced_softmax");
    let la = cases(&fx, "logit_adjusted");
    assert!(!bs.is_empty() && !la.is_empty(), "missing balanced_softmax / logit_adjusted cases");
    for case in bs {
        let l = LogitAdjusted::new(&usizes(&case["counts"]), 1.0, Device::Cpu);
        check_case(case, |x, y| l.loss(x, y));
    }
    for case in la {
        let l = LogitAdjusted::new(&usizes(&case["counts"]), param(case, "tau", 1.0), Device::Cpu);
        check_case(case, |x, y| l.loss(x, y));
    }
}

#[test]
fn fixtures_posthoc_adjustment_subtracts_the_log_prior() {
    // posthoc_adjust(logits, counts, tau) = logits - tau * log(n_j / sum n), on every case's input.
    let fx = fixtures();
    for case in cases(&fx, "logit_adjusted") {
        let counts = usizes(&case["counts"]);
        let tau = param(case, "tau", 1.0);
        let x = matrix(&case["input"]);
        let got = posthoc_adjust(&x, &log_prior(&counts, Device::Cpu), tau);
        let total: usize = counts.iter().sum();
        let row0: Vec<f64> = f64s(&case["input"][0]);
        let want: Vec<f64> = row0.iter().zip(&counts).map(|(v, &n)| v - tau * (n as f64 / total as f64).ln()).collect();
        assert_close(&Vec::<f64>::try_from(&got.get(0)).unwrap(), &want, "posthoc");
    }
}

#[test]
fn fixtures_longtail_profiles_give_the_reference_counts() {
    let fx = fixtures();
    let profiles = fx["profiles"].as_array().expect("profiles");
    assert!(!profiles.is_empty());
    for p in profiles {
        let profile = match p["profile"].as_str().unwrap() {
            "exp" => Profile::Exp,
            "step" => Profile::Step,
            other => panic!("unknown profile {other}"),
        };
        let got = longtail_counts(
            p["n_max"].as_u64().unwrap() as usize,
            p["num_classes"].as_u64().unwrap() as usize,
            p["ratio"].as_f64().unwrap(),
            profile,
        );
        assert_eq!(got, usizes(&p["expected"]), "profile {p}");
    }
}

#[test]
fn fixtures_cloud_sizes_head_zero_rarest_one() {
    let fx = fixtures();
    for c in fx["cloud_sizes"].as_array().expect("cloud_sizes") {
        let form = match c["form"].as_str().unwrap() {
            "log" => CloudForm::Log,
            "pow3" => CloudForm::Pow3,
            "pow4" => CloudForm::Pow4,
            other => panic!("unknown form {other}"),
        };
        let got = CloudSize::new(&usizes(&c["counts"]), form);
        assert_close(&got.0, &f64s(&c["expected"]), &format!("cloud {form:?}"));
    }
}

#[test]
fn fixtures_sampling_and_class_weights() {
    let fx = fixtures();
    for s in fx["sampling"].as_array().expect("sampling") {
        let counts = usizes(&s["counts"]);
        assert_close(&balanced_weights(&counts), &f64s(&s["balanced"]), "balanced");
        assert_close(&cben_weights(&counts, 0.9999, 1e-5), &f64s(&s["cben"]), "cben");
        assert_close(&effective_number_weights(&counts, 0.9999), &f64s(&s["effective_number_weights"]), "effective number");
    }
}

#[test]
fn fixtures_shot_groups() {
    let fx = fixtures();
    for s in fx["shot_split"].as_array().expect("shot_split") {
        let many = s.get("many").and_then(Value::as_u64).unwrap_or(100) as usize;
        let few = s.get("few").and_then(Value::as_u64).unwrap_or(20) as usize;
        let got: Vec<&str> = usizes(&s["counts"])
            .iter()
            .map(|&n| match ShotGroup::of(n, many, few) {
                ShotGroup::Many => "many",
                ShotGroup::Medium => "medium",
                ShotGroup::Few => "few",
            })
            .collect();
        let want: Vec<&str> = s["expected"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(got, want);
    }
}

#[test]
fn equal_class_counts_mean_no_cloud_not_nan() {
    let counts = vec![100; 5];
    assert_eq!(CloudSize::new(&counts, CloudForm::Log).0, vec![0.0; 5]);
    let params = GclParams { s: 30.0, m: 0.0, noise_mul: 0.5, focal_gamma: None, cloud: CloudForm::Log, ..Default::default() };
    let gcl = GclE::new(&counts, params, None, Device::Cpu);
    let cos = Tensor::rand([4, 5], (Kind::Double, Device::Cpu)) * 2.0 - 1.0;
    let y = Tensor::from_slice(&[0i64, 1, 2, 4]);
    let got = gcl.loss(&cos, &y).double_value(&[]);
    let plain = CrossEntropy { weight: None }.loss(&(&cos * 30.0), &y).double_value(&[]);
    assert!(got.is_finite());
    assert!((got - plain).abs() < 1e-9, "with no cloud GCL-E is CE of s * cos: {got} vs {plain}");
}

#[test]
fn the_cloud_lowers_tail_logits_only() {
    // A cloud of size 0 leaves the head's logit alone; the rarest class is pushed down.
    let counts = vec![1000, 100, 10];
    let params = GclParams { s: 1.0, m: 0.0, noise_mul: 1.0, focal_gamma: None, cloud: CloudForm::Log, ..Default::default() };
    let gcl = GclE::new(&counts, params, None, Device::Cpu);
    let cos = Tensor::zeros([1, 3], (Kind::Double, Device::Cpu));
    let noise = Tensor::full([1, 3], 0.5, (Kind::Double, Device::Cpu));
    // With cos = 0 everywhere, the head class (no cloud) gets the highest adjusted logit,
    // so its loss is the lowest of the three targets.
    let l: Vec<f64> = (0..3).map(|t| gcl.loss_with_noise(&cos, &Tensor::from_slice(&[t as i64]), &noise).double_value(&[])).collect();
    assert!(l[0] < l[1] && l[1] < l[2], "{l:?}");
}

#[test]
fn gcl_draws_its_own_noise_and_a_seeded_step_repeats_exactly() {
    use gcl::loss::Criterion;
    let counts = vec![1000, 100, 10];
    let gcl = GclE::new(&counts, GclParams::default(), None, Device::Cpu);
    let cos = Tensor::rand([64, 3], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let y = Tensor::from_slice(&(0..64).map(|i| i % 3).collect::<Vec<i64>>());
    let at = |seed: u64| {
        gcl.seed_step(seed);
        gcl.loss(&cos, &y).double_value(&[])
    };
    assert_eq!(at(7), at(7), "the same step seed gives the same noise");
    assert_ne!(at(7), at(8), "another step, other noise");
    // Within a step each call draws afresh (mixup's two terms get independent clouds).
    gcl.seed_step(7);
    let (first, second) = (gcl.loss(&cos, &y).double_value(&[]), gcl.loss(&cos, &y).double_value(&[]));
    assert_ne!(first, second);
}
