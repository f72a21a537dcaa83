//! `gcl sweep`: the product of its grids, ratios and seeds; finished runs reused, a killed
//! run continued; its Slurm script's tasks run as the array would run them; failed tasks
//! listed with the rest kept; bad input named.
mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};

const GCL: &str = env!("CARGO_BIN_EXE_gcl");

/// A list dataset of 30 Fashion-MNIST images per class (test: 10 per class).
fn dataset(dir: &Path) {
    write_split(dir, "train", &fashion_samples(30), false);
    write_split(dir, "test", &fashion_samples(10), false);
}

/// `gcl sweep` on that dataset with a tiny ResNet-8 recipe, then `extra`.
fn sweep(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut c = Command::new(GCL);
    c.args(["sweep", "--dataset", "list", "--profile", "exp", "--train-list", "train.txt", "--test-list", "test.txt"]);
    c.arg("--data").arg(data).arg("--out").arg(out);
    c.args(["--set", "model.depth=8", "--epochs", "1", "--cls-epochs", "1", "--batch-size", "32", "--set", "stage2.batch_size=32"]);
    c.args(extra).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn csv_rows(dir: &Path) -> Vec<Vec<String>> {
    let t = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
    // The cell labels hold commas: they are quoted.
    t.lines()
        .map(|l| {
            let (mut cells, mut cur, mut quoted) = (Vec::new(), String::new(), false);
            for c in l.chars() {
                match c {
                    '"' => quoted = !quoted,
                    ',' if !quoted => cells.push(std::mem::take(&mut cur)),
                    c => cur.push(c),
                }
            }
            cells.push(cur);
            cells
        })
        .collect()
}

fn modified(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn a_sweep_trains_the_product_reuses_finished_runs_and_continues_killed_ones() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("sw");
    let o = sweep(data.path(), &out, &["--grid", "stage1.lr=0.05,0.1", "--ratios", "5,10", "--seeds", "3", "--jobs", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    // 2 learning rates x 2 ratios x 1 seed: four runs, each with its own settings.
    let rows = csv_rows(&out);
    let col = |name: &str| rows[0].iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {:?}", rows[0]));
    let cells: Vec<(String, String, String, String)> = rows[1..].iter().map(|r| (r[col("stage1.lr")].clone(), r[col("ratio")].clone(), r[col("seed")].clone(), r[col("state")].clone())).collect();
    let want: Vec<(String, String, String, String)> =
        [("0.05", "5"), ("0.05", "10"), ("0.1", "5"), ("0.1", "10")].iter().map(|(l, r)| (l.to_string(), r.to_string(), "3".to_string(), "done".to_string())).collect();
    assert_eq!(cells, want);
    for r in &rows[1..] {
        let run = out.join("runs").join(&r[0]);
        let res: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
        assert_eq!(res["config"]["stage1"]["lr"].as_f64().unwrap().to_string(), r[col("stage1.lr")]);
        assert_eq!(res["config"]["data"]["ratio"].as_f64().unwrap().to_string(), r[col("ratio")]);
        assert_eq!(res["config"]["run"]["seed"], 3);
        // The ratio made the split: 30 images of the head class, 30/ratio of the rarest.
        let counts: Vec<usize> = serde_json::from_value(res["train_counts"].clone()).unwrap();
        assert_eq!(counts.iter().max().unwrap() / counts.iter().min().unwrap(), r[col("ratio")].parse::<usize>().unwrap());
        assert!(r[col("stage2_top1")].parse::<f64>().unwrap() > 0.0);
        // --jobs 2: the cores split between the two trainings.
        let threads = (gcl::runtime::cores() / 2).max(1);
        assert!(res["runtime"].as_str().unwrap().contains(&format!(" {threads} threads")), "{}", res["runtime"]);
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("4 cells (4 settings x 1 seeds): 4 done, 0 failed, 0 not run"), "{summary}");
    assert_eq!(summary.lines().filter(|l| l.ends_with("| best |") && !l.contains("ratio")).count(), 2, "one best per ratio:\n{summary}");
    for f in ["sweep-stage1-lr.svg", "sweep-stage1-lr.png", "index.html"] {
        assert!(out.join(f).exists(), "no {f}");
    }
    assert!(std::fs::read_to_string(out.join("index.html")).unwrap().contains("<svg"));

    // Again: nothing is trained again.
    let first = out.join("runs").join(&rows[1][0]);
    let before = modified(&first.join("results.json"));
    let o = sweep(data.path(), &out, &["--grid", "stage1.lr=0.05,0.1", "--ratios", "5,10", "--seeds", "3", "--jobs", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).matches(": reused").count(), 4, "{}", text(&o));
    assert_eq!(modified(&first.join("results.json")), before);

    // A sweep killed at any moment: one run gone, one stopped after stage 1 of 2 epochs
    // (its checkpoint says epoch 1 of 2, as a kill leaves it). Run again: those two go on.
    let plan = gcl::sweep::Plan::load(&out).unwrap();
    let cells = plan.cells();
    std::fs::remove_dir_all(gcl::sweep::run_dir(&out, &cells[0])).unwrap();
    let mut two = plan.clone();
    two.base = two.base.replace("epochs = 1\n", "epochs = 2\n");
    assert_ne!(two.base, plan.base);
    std::fs::write(out.join("sweep.json"), serde_json::to_string(&two).unwrap()).unwrap();
    let cfg = two.config(&cells[1]).unwrap();
    let mut one = cfg.clone();
    one.stage1.epochs = 1;
    let killed = gcl::sweep::run_dir(&out, &cells[1]);
    let data_prepared = cfg.data.prepare().unwrap();
    gcl::train::train(&one, &data_prepared, &gcl::train::TrainOptions { overwrite: true, ..opts(&killed, false, &[gcl::train::Stage::One]) }).unwrap();
    std::fs::write(killed.join("config.toml"), gcl::train::run_dir::saved_config(&cfg, &killed).unwrap().to_toml()).unwrap();
    let o = Command::new(GCL).args(["sweep", "task"]).arg(&out).args(["--index", "1"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resuming from") && text(&o).contains("after epoch 1/2"), "{}", text(&o));
    let o = Command::new(GCL).args(["sweep", "collect"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // Cell 0 is gone and the others trained 1 epoch where the plan now says 2: only cell 1 is done.
    assert!(text(&o).contains("1 done, 0 failed, 3 not run"), "{}", text(&o));
}

#[test]
fn the_slurm_script_runs_each_cell_as_an_array_task_and_collect_gathers_them() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("slurm");
    let o = sweep(data.path(), &out, &["--methods", "ce,gcl-e", "--ratios", "10", "--emit", "slurm", "--sbatch=--partition=short", "--sbatch", "--time=0:30:00"]);
    assert!(o.status.success(), "{}", text(&o));
    let script = std::fs::read_to_string(out.join("sweep.slurm")).unwrap();
    assert!(script.contains("#SBATCH --array=0-1\n") && script.contains("#SBATCH --partition=short\n") && script.contains("#SBATCH --time=0:30:00\n"), "{script}");
    assert!(!out.join("runs").exists(), "--emit slurm trains nothing");
    // Each array task, as Slurm starts it: the script with its SLURM_ARRAY_TASK_ID.
    for task in 0..2 {
        let o = Command::new("bash").arg(out.join("sweep.slurm")).env("SLURM_ARRAY_TASK_ID", task.to_string()).env("SLURM_CPUS_PER_TASK", "1").output().unwrap();
        assert!(o.status.success(), "task {task}: {}", text(&o));
    }
    let o = Command::new(GCL).args(["sweep", "collect"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let rows = csv_rows(&out);
    assert_eq!(rows[1..].iter().map(|r| (r[1].clone(), r[rows[0].iter().position(|h| h == "state").unwrap()].clone())).collect::<Vec<_>>(), [("ce".into(), "done".into()), ("gcl-e".into(), "done".into())]);
    // CE has no stage 2 in the baselines; GCL-E re-trains its classifier.
    let s2 = rows[0].iter().position(|h| h == "stage2_top1").unwrap();
    assert!(rows[1][s2].is_empty() && !rows[2][s2].is_empty(), "{rows:?}");
    let o = Command::new("bash").arg(out.join("sweep.slurm")).env("SLURM_ARRAY_TASK_ID", "2").output().unwrap();
    assert!(!o.status.success() && text(&o).contains("has 2 cells (0 to 1); there is no task 2"), "{}", text(&o));
}

#[test]
fn a_failed_task_is_listed_with_its_error_and_the_others_are_kept() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("fail");
    let o = sweep(data.path(), &out, &["--grid", "stage1.lr=0.05,1e9", "--ratios", "10"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("1 of 2 tasks failed"), "{t}");
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("1 done, 1 failed") && summary.contains("## Failed tasks") && summary.contains("stage1.lr=1e9") && summary.contains("diverged"), "{summary}");
    let rows = csv_rows(&out);
    let state = rows[0].iter().position(|h| h == "state").unwrap();
    assert_eq!((rows[1][state].as_str(), rows[2][state].as_str()), ("done", "failed"));
}

#[test]
fn bad_sweeps_are_refused_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("bad");
    let refused = |extra: &[&str], want: &str| {
        let o = sweep(data.path(), &out, extra);
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(text(&o).contains(want), "{extra:?}: wanted `{want}` in\n{}", text(&o));
    };
    refused(&["--grid", "stage1.lrr=0.1,0.2"], "stage1.lrr");
    refused(&["--grid", "stage1.epochs=two,3"], "stage1.epochs");
    refused(&["--grid", "stage1.lr="], "the grid of `stage1.lr` is empty");
    refused(&["--grid", "stage1.lr=0.1", "--grid", "stage1.lr=0.2"], "has two grids");
    refused(&["--grid", "data.ratio=10,100"], "use --ratios");
    refused(&["--methods", "ce,nope"], "`nope` is neither a file");
    refused(&["--ratios", "0.5"], "not an imbalance ratio");
    refused(&["--study", "cloud-forms", "--loss", "ce"], "must train GCL-E or GCL-A");
    assert!(!out.exists(), "nothing is written for a refused sweep");
    // A folder that holds another sweep, or other files.
    let o = sweep(data.path(), &out, &["--grid", "stage1.lr=0.1", "--emit", "slurm"]);
    assert!(o.status.success(), "{}", text(&o));
    refused(&["--grid", "stage1.lr=0.2", "--emit", "slurm"], "holds another sweep");
    std::fs::write(root.path().join("other.txt"), "x").unwrap();
    let o = sweep(data.path(), root.path(), &["--emit", "slurm"]);
    assert!(!o.status.success() && text(&o).contains("holds no sweep"), "{}", text(&o));
}

#[test]
fn the_cloud_form_study_runs_gcl_with_each_form_and_says_which_wins_where() {
    let base = gcl::config::preset("fmnist-lt-quick").unwrap();
    let plan = gcl::sweep::Plan::new(&base, &[], &[], &[], None, Some(gcl::sweep::Study::CloudForms)).unwrap();
    let cells = plan.cells();
    // 3 forms x ratios 10, 50, 100, 200 x seeds 0, 1, 2.
    assert_eq!(cells.len(), 36);
    assert_eq!(plan.ratios, [10.0, 50.0, 100.0, 200.0]);
    for cell in [&cells[0], &cells[12], &cells[35]] {
        let cfg = plan.config(cell).unwrap();
        let form = cell.method.as_deref().unwrap().trim_start_matches("cloud-");
        let gcl::loss::LossConfig::GclE(p1) = cfg.stage1.loss else { panic!() };
        let gcl::config::Stage2Method::Retrain { loss: gcl::loss::LossConfig::GclE(p2) } = cfg.stage2.method else { panic!() };
        let name = |f: gcl::loss::CloudForm| serde_json::to_value(f).unwrap();
        assert_eq!((name(p1.cloud), name(p2.cloud)), (serde_json::json!(form), serde_json::json!(form)));
    }
}
