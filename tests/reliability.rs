//! Faults and bad input (issue 15's list): each gives a clear error or a correct result, and
//! leaves the run folder consistent.
mod common;
use common::*;
use gcl::config::Config;
use gcl::data::split::SplitRule;
use gcl::train::run_dir::{Mode, RunDir};
use gcl::train::{train, Stage, TrainOptions};
use std::path::Path;

fn err_of<T>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.err().expect("an error"))
}

/// A quick configuration: ResNet-8, one epoch of each stage.
fn quick() -> Config {
    let mut c = tiny_config();
    c.stage1.epochs = 1;
    c.stage2.epochs = 1;
    c
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn compare_reuses_a_run_only_when_it_trained_on_the_same_split_contents() {
    use gcl::compare::{parse_methods, run};
    let dir = tempfile::tempdir().unwrap();
    let split = dir.path().join("split.txt");
    let base_data = tiny_fashion_mnist();
    // A split file (a subset of the tiny set's indices), then the same path with other contents.
    let labels = base_data.train.labels().to_vec();
    let pick = |per_class: usize| -> Vec<i64> {
        let mut n = [0usize; 10];
        (0..labels.len() as i64)
            .filter(|&i| {
                let c = labels[i as usize] as usize;
                n[c] += 1;
                n[c] <= per_class
            })
            .collect()
    };
    gcl::data::split::write_index_file(&split, &pick(100)).unwrap();
    let mut cfg = quick();
    cfg.data.split = SplitRule::IndexFile { path: split.clone() };
    let methods = parse_methods("[[method]]\nname = \"ce\"\nstage1.loss = { name = \"ce\" }\nstage2.method = { name = \"none\" }\n", "t").unwrap();
    let out = dir.path().join("cmp");
    let data = prepare(&cfg, tiny_fashion_mnist());
    let first = run(&cfg, &methods, &data, &out, false).unwrap();
    assert!(!first[0].reused);
    // Same path and settings, same contents: reused.
    assert!(run(&cfg, &methods, &data, &out, false).unwrap()[0].reused);
    // Same path and settings, other contents: trained again, on the new split.
    gcl::data::split::write_index_file(&split, &pick(50)).unwrap();
    let data2 = prepare(&cfg, tiny_fashion_mnist());
    assert_ne!(data2.counts, data.counts);
    let again = run(&cfg, &methods, &data2, &out, false).unwrap();
    assert!(!again[0].reused, "a changed split file must not reuse the old results");
    let res: serde_json::Value = serde_json::from_slice(&read(&out.join("ce/results.json"))).unwrap();
    assert_eq!(res["train_counts"], serde_json::json!(data2.counts));
}

#[test]
fn a_second_run_into_a_locked_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _held = RunDir::open(dir.path(), Mode::Fresh).unwrap();
    let err = err_of(RunDir::open(dir.path(), Mode::Fresh));
    assert!(err.contains("another gcl run is using"), "{err}");
    drop(_held);
    assert!(RunDir::open(dir.path(), Mode::Fresh).is_ok(), "the lock ends with its run");
}

#[test]
fn a_finished_run_is_neither_overwritten_silently_nor_mixed_with_a_new_one() {
    let cfg = quick();
    let data = prepare(&cfg, tiny_fashion_mnist());
    let dir = tempfile::tempdir().unwrap();
    train(&cfg, &data, &opts(dir.path(), false, BOTH)).unwrap();
    let before: Vec<Vec<u8>> = ["config.toml", "split.txt", "results.json"].iter().map(|f| read(&dir.path().join(f))).collect();
    // Again without --resume or --overwrite: refused, nothing touched.
    let err = err_of(train(&cfg, &data, &opts(dir.path(), false, BOTH)));
    assert!(err.contains("already holds a run") && err.contains("--overwrite"), "{err}");
    // A --resume that is then rejected (another split) writes nothing either.
    let mut other = cfg.clone();
    other.data.ratio = 5.0;
    let other_data = prepare(&other, tiny_fashion_mnist());
    let err = err_of(train(&other, &other_data, &opts(dir.path(), true, BOTH)));
    assert!(err.contains("data.ratio: 10.0 -> 5.0"), "names the differing setting: {err}");
    let after: Vec<Vec<u8>> = ["config.toml", "split.txt", "results.json"].iter().map(|f| read(&dir.path().join(f))).collect();
    assert!(before == after, "a rejected run changed the folder");
    // --overwrite replaces the whole run: a stage-1-only run leaves no stale stage 2 behind.
    let o = TrainOptions { overwrite: true, ..opts(dir.path(), false, &[Stage::One]) };
    train(&cfg, &data, &o).unwrap();
    assert!(!dir.path().join("stage2.safetensors").exists(), "a stale stage-2 checkpoint was left beside the new stage 1");
    let res: serde_json::Value = serde_json::from_slice(&read(&dir.path().join("results.json"))).unwrap();
    assert!(res["stage1"].is_object() && res["stage2"].is_null());
    // --resume without a checkpoint to continue is an error, not a fresh start.
    let empty = tempfile::tempdir().unwrap();
    let err = err_of(train(&cfg, &data, &opts(empty.path(), true, BOTH)));
    assert!(err.contains("no run to continue"), "{err}");
    assert!(err_of(train(&cfg, &data, &TrainOptions { overwrite: true, ..opts(empty.path(), true, BOTH) })).contains("give one of them"));
}

/// Trains `cfg` for stage 1 and returns the error, after checking that no checkpoint with a
/// non-finite value was written.
fn diverges(cfg: &Config) -> String {
    let data = prepare(cfg, tiny_fashion_mnist());
    let dir = tempfile::tempdir().unwrap();
    let err = err_of(train(cfg, &data, &opts(dir.path(), false, &[Stage::One])));
    let ck = dir.path().join("stage1.safetensors");
    if ck.exists() {
        for (name, t) in tch::Tensor::read_safetensors(&ck).unwrap() {
            if t.is_floating_point() {
                assert!(t.isfinite().all().int64_value(&[]) == 1, "checkpoint tensor {name} is not finite");
            }
        }
    }
    err
}

#[test]
fn divergence_is_caught_and_named_for_ce_and_gcl() {
    let mut ce = quick();
    ce.stage1.loss = gcl::config::loss_by_name("ce").unwrap();
    ce.stage2.method = gcl::config::Stage2Method::None;
    ce.stage1.lr = 1000.0;
    ce.stage1.warmup_fraction = 0.0;
    let err = diverges(&ce);
    assert!(err.contains("diverged") && err.contains("stage1.lr = 1000"), "{err}");
    let mut g = quick();
    g.stage1.lr = 1000.0;
    g.stage1.warmup_fraction = 0.0;
    let err = diverges(&g);
    assert!(err.contains("diverged") && err.contains("stage1.lr = 1000"), "{err}");
}

#[test]
fn every_number_is_checked_against_its_range_before_any_work() {
    for (set, key) in [
        ("run.posthoc_tau=nan", "run.posthoc_tau = NaN"),
        ("stage1.loss.s=0", "stage1.loss.s = 0"),
        ("stage1.weight_decay=-1e-4", "stage1.weight_decay = -0.0001"),
        ("stage1.crop_pad=-1", "stage1.crop_pad = -1"),
        ("stage1.warmup_fraction=1.5", "stage1.warmup_fraction = 1.5"),
        ("stage1.decay_at=[0.8, 1.5]", "stage1.decay_at[1] = 1.5"),
        ("run.few_below=200", "run.few_below = 200"),
        ("run.eval_batch_size=0", "run.eval_batch_size = 0"),
        ("stage1.epochs=0", "stage1.epochs = 0"),
        ("stage2.method.loss.noise_mul=-1", "stage2.method.loss.noise_mul = -1"),
        ("stage1.momentum=1", "stage1.momentum = 1"),
    ] {
        let err = err_of(Config::default().set(set));
        assert!(err.contains(key) && err.contains("valid:"), "--set {set}: {err}");
    }
    // Several at once are reported together.
    let err = err_of(Config::default().merge_table("[stage1]\nlr = 0\n[stage2]\nlr = -1\n".parse().unwrap()));
    assert!(err.contains("stage1.lr = 0") && err.contains("stage2.lr = -1"), "{err}");
}

#[test]
fn a_saved_config_repeats_the_run_from_anywhere() {
    let cfg = quick();
    let data = prepare(&cfg, tiny_fashion_mnist());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    train(&cfg, &data, &TrainOptions { ..opts(&out, false, &[Stage::One]) }).unwrap();
    let saved = Config::default().merge_file(&out.join("config.toml")).unwrap();
    match &saved.data.split {
        SplitRule::IndexFile { path } => {
            assert!(path.is_absolute(), "{}", path.display());
            assert_eq!(path, &std::path::absolute(out.join("split.txt")).unwrap());
        }
        other => panic!("the saved split should point to the run's split.txt, not {other:?}"),
    }
    // From another working folder the saved settings give the same split.
    let again = prepare(&saved, tiny_fashion_mnist());
    assert_eq!(again.indices, data.indices);
    assert_eq!(again.fingerprint().unwrap(), data.fingerprint().unwrap());
}

#[test]
fn a_checkpoint_with_another_head_is_named_as_such() {
    let cfg = quick();
    let data = prepare(&cfg, tiny_fashion_mnist());
    let dir = tempfile::tempdir().unwrap();
    train(&cfg, &data, &opts(dir.path(), false, &[Stage::One])).unwrap();
    let mut linear = cfg.clone();
    linear.stage1.loss = gcl::config::loss_by_name("ce").unwrap();
    linear.stage2.method = gcl::config::Stage2Method::Crt;
    let other = tempfile::tempdir().unwrap();
    let o = TrainOptions { stage1_checkpoint: Some(dir.path().join("stage1.safetensors")), ..opts(other.path(), false, &[Stage::Two]) };
    let err = err_of(train(&linear, &data, &o));
    assert!(err.contains("cosine classifier") && err.contains("linear one"), "{err}");
    assert!(!other.path().join("config.toml").exists(), "the refused run wrote its settings");
}

#[test]
fn the_device_that_ran_is_recorded() {
    if tch::Cuda::device_count() > 7 {
        return; // cuda:7 exists here: nothing falls back
    }
    let mut cfg = quick();
    cfg.run.device = "cuda:7".into();
    let data = prepare(&cfg, tiny_fashion_mnist());
    let dir = tempfile::tempdir().unwrap();
    train(&cfg, &data, &opts(dir.path(), false, &[Stage::One])).unwrap();
    let saved = Config::default().merge_file(&dir.path().join("config.toml")).unwrap();
    assert_eq!(saved.run.device, "cpu");
}

#[test]
fn threads_beyond_the_cores_are_capped() {
    let mut run = gcl::config::RunConfig::default();
    run.threads = 1000;
    let rt = gcl::runtime::Runtime::resolve(&run).unwrap();
    assert_eq!(rt.threads, gcl::runtime::cores());
}

#[test]
fn the_command_line_reports_a_full_stdout_and_ctrl_c() {
    let exe = env!("CARGO_BIN_EXE_gcl");
    // Standard output that cannot be written: an error, not a panic.
    let full = std::fs::File::options().write(true).open("/dev/full").unwrap();
    let out = std::process::Command::new(exe).args(["config", "--list"]).stdout(full).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot write to standard output") && !err.contains("panicked"), "{err}");
    // Ctrl-C during training: it stops with a word about what is kept. A small run: ResNet-8
    // on the first 600 images.
    let dir = tempfile::tempdir().unwrap();
    let split = dir.path().join("split.txt");
    gcl::data::split::write_index_file(&split, &(0..600).collect::<Vec<i64>>()).unwrap();
    let interrupt = |stage_args: &[&str], out: &Path, when: &str| {
        let child = std::process::Command::new(exe)
            .args(["train", "--quiet", "--set", "model.depth=8", "--split"])
            .arg(&split)
            .args(stage_args)
            .arg("--out")
            .arg(out)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while !out.join(when).exists() && t0.elapsed().as_secs() < 120 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // In stage 1, once training has begun (the settings are written after every check).
    let err = interrupt(&["--epochs", "200"], &dir.path().join("a"), "split.txt");
    assert!(err.contains("interrupted (Ctrl-C) in stage 1"), "{err}");
    // In stage 2: stage 1's results are already in results.json, and stay there.
    let b = dir.path().join("b");
    let err = interrupt(&["--epochs", "1", "--cls-epochs", "500"], &b, "results.json");
    assert!(err.contains("interrupted (Ctrl-C) in stage 2"), "{err}");
    let res: serde_json::Value = serde_json::from_slice(&read(&b.join("results.json"))).unwrap();
    assert!(res["stage1"]["top1"].is_number() && res["stage2"].is_null(), "{res}");
}
