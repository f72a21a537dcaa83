//! Helpers shared by the integration tests.
#![allow(dead_code)]
use serde_json::Value;
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// ../shared/fixtures/losses.json, or the file named by GCL_FIXTURES.
pub fn fixtures() -> Value {
    let path = std::env::var_os("GCL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/losses.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read fixtures {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixtures {} are not JSON: {e}", path.display()))
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("count") as usize).collect()
}

pub fn matrix(v: &Value) -> Tensor {
    let rows: Vec<Vec<f64>> = v.as_array().expect("rows").iter().map(f64s).collect();
    let (r, c) = (rows.len() as i64, rows[0].len() as i64);
    Tensor::from_slice(&rows.concat()).view([r, c]).to_kind(Kind::Double)
}

pub fn targets(v: &Value) -> Tensor {
    let t: Vec<i64> = v.as_array().expect("targets").iter().map(|x| x.as_i64().expect("target")).collect();
    Tensor::from_slice(&t)
}

/// |got - want| <= 1e-4 * |want| (+ a tiny absolute floor for exact zeros), elementwise.
pub fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * w.abs() + 1e-10;
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

/// The case's `params` field `key` as f64, or `default`.
pub fn param(case: &Value, key: &str, default: f64) -> f64 {
    case["params"].get(key).and_then(Value::as_f64).unwrap_or(default)
}

pub fn cases<'a>(fx: &'a Value, loss: &str) -> Vec<&'a Value> {
    fx["cases"].as_array().expect("cases").iter().filter(|c| c["loss"] == loss).collect()
}

/// Folder of the Fashion-MNIST files that scripts/setup.sh installs.
pub fn fashion_mnist_dir() -> PathBuf {
    let dir = PathBuf::from("/usr/share/datasets/fashion-mnist");
    assert!(dir.is_dir(), "Fashion-MNIST is missing: run `bash scripts/setup.sh` (it installs dataset-fashion-mnist)");
    dir
}
