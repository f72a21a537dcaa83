//! Checkpoints: round trips, resuming, and refusing a checkpoint of another run.
mod common;
use common::*;
use gcl::kernels::Kernels;
use gcl::model::HeadKind;
use gcl::train::checkpoint::Checkpoint;
use gcl::train::{train, Stage, TrainOptions};
use tch::{nn, Device, Kind, Tensor};

/// libtorch draws initial weights from one global generator: `Session::new` seeds and draws
/// under its own lock, but this file's round-trip test draws without it. Tests that draw
/// here, and the one that compares two seeded runs, take this lock so they never overlap
/// (they raced: the resumed run's initial weights differed now and then).
static GLOBAL_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn checkpoint_round_trip_restores_the_same_function() {
    let _draws = GLOBAL_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let vs = nn::VarStore::new(Device::Cpu);
    let m = classifier(&vs, 20, 1, 10, HeadKind::Cosine, Kernels::NONE).unwrap();
    // Move the BatchNorm statistics away from their initial values.
    let x = Tensor::randn([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let _ = m.forward(&x, true).unwrap();
    let mut ck = Checkpoint::new();
    ck.put_model(&vs);
    ck.save(&path).unwrap();
    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let m2 = classifier(&vs2, 20, 1, 10, HeadKind::Cosine, Kernels::NONE).unwrap();
    Checkpoint::load(&path).unwrap().restore_model(&mut vs2, &path).unwrap();
    let (a, b) = (m.forward(&x, false).unwrap(), m2.forward(&x, false).unwrap());
    assert!(a.allclose(&b, 1e-6, 1e-6, false));
    // A model of another shape is refused with a clear error.
    let mut vs3 = nn::VarStore::new(Device::Cpu);
    let _ = classifier(&vs3, 20, 1, 100, HeadKind::Cosine, Kernels::NONE).unwrap();
    let err = format!("{:#}", Checkpoint::load(&path).unwrap().restore_model(&mut vs3, &path).err().unwrap());
    assert!(err.contains("head.weight") && err.contains("shape"), "{err}");
    // A truncated file is an error, not a crash.
    let raw = std::fs::read(&path).unwrap();
    std::fs::write(&path, &raw[..raw.len() / 2]).unwrap();
    assert!(Checkpoint::load(&path).is_err());
}

#[test]
fn resumed_stage1_equals_the_uninterrupted_run() {
    let _draws = GLOBAL_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = tiny_config();
    cfg.stage1.epochs = 2;
    cfg.stage2.epochs = 0;
    let data = prepare(&cfg, tiny_fashion_mnist());
    let full = tempfile::tempdir().unwrap();
    let opts = |d: &std::path::Path, resume| opts(d, resume, &[Stage::One]);
    let a = train(&cfg, &data, &opts(full.path(), false)).unwrap();
    // Run one epoch, then resume to two.
    let part = tempfile::tempdir().unwrap();
    let mut one = cfg.clone();
    one.stage1.epochs = 1;
    train(&one, &data, &opts(part.path(), false)).unwrap();
    // As a 2-epoch run killed after its first epoch leaves it: its settings, one epoch done.
    let saved = gcl::train::run_dir::saved_config(&cfg, part.path()).unwrap();
    std::fs::write(part.path().join("config.toml"), saved.to_toml()).unwrap();
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
fn a_resumed_adaptive_cloud_continues_from_the_weights_its_last_epoch_left() {
    let _draws = GLOBAL_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = tiny_config();
    (cfg.stage1.epochs, cfg.stage2.epochs) = (2, 0);
    let gcl::loss::LossConfig::GclE(p) = &mut cfg.stage1.loss else { panic!("the tiny config trains GCL-E") };
    p.adaptive = Some(gcl::loss::Adaptive { rate: 0.8, max: 3.0 });
    let data = prepare(&cfg, tiny_fashion_mnist());
    let full = tempfile::tempdir().unwrap();
    let a = train(&cfg, &data, &opts(full.path(), false, &[Stage::One])).unwrap();
    let part = tempfile::tempdir().unwrap();
    let mut one = cfg.clone();
    one.stage1.epochs = 1;
    train(&one, &data, &opts(part.path(), false, &[Stage::One])).unwrap();
    let saved = gcl::train::run_dir::saved_config(&cfg, part.path()).unwrap();
    std::fs::write(part.path().join("config.toml"), saved.to_toml()).unwrap();
    let b = train(&cfg, &data, &opts(part.path(), true, &[Stage::One])).unwrap();
    // Epoch 2 of the resumed run trained with the weights epoch 1 left, as the whole run did.
    let (la, lb) = (metrics_lines(full.path()), metrics_lines(part.path()));
    assert_eq!(la[1]["cloud_scale"], lb[1]["cloud_scale"]);
    assert_ne!(la[1]["cloud_scale"], serde_json::json!(vec![1.0; 10]));
    assert_eq!(a.stage1.unwrap().per_class, b.stage1.unwrap().per_class);
}

#[test]
fn stage2_refuses_a_checkpoint_of_another_network_or_an_unfinished_stage1() {
    let mut cfg = tiny_config();
    cfg.stage1.epochs = 2;
    let data = prepare(&cfg, tiny_fashion_mnist());
    let dir = tempfile::tempdir().unwrap();
    let mut one = cfg.clone();
    one.stage1.epochs = 1;
    train(&one, &data, &opts(dir.path(), false, &[Stage::One])).unwrap();
    let ck = dir.path().join("stage1.safetensors");
    let from = |c: &gcl::config::Config, out: &std::path::Path| {
        let o = TrainOptions { stage1_checkpoint: Some(ck.clone()), ..opts(out, false, &[Stage::Two]) };
        format!("{:#}", train(c, &data, &o).err().expect("refused"))
    };
    let other = tempfile::tempdir().unwrap();
    // Another depth: named, not a missing tensor.
    let mut deeper = one.clone();
    deeper.model.depth = 14;
    let err = from(&deeper, other.path());
    assert!(err.contains("cifar-resnet8") && err.contains("cifar-resnet14"), "{err}");
    // Saved after epoch 1 of 2 (the settings of a run that was stopped): not finished.
    let mut stopped = Checkpoint::load(&ck).unwrap();
    stopped.put_i64("meta.epochs_total", &[2]);
    stopped.save(&ck).unwrap();
    let err = from(&one, other.path());
    assert!(err.contains("epoch 1 of 2") && err.contains("did not finish"), "{err}");
}
