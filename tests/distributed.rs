//! Data-parallel training on c10d, as the issue states it, with 2 processes talking Gloo
//! over 127.0.0.1: (a) after N steps every worker holds bit-identical weights; (b) they are,
//! to fp32 rounding, what one process gets by computing each worker's shard gradient and
//! averaging them (the all-reduce is exactly gradient averaging); (c) when a worker dies or
//! hangs the others stop by themselves, with an error naming it; and `gcl train --nproc 2`
//! runs two stages to results.json.
mod common;
use common::*;
use gcl::data::loader::Shard;
use gcl::dist::{Dist, Env};
use gcl::runtime::Runtime;
use gcl::train::{Session, Stage, StageRun};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

const WORLD: usize = 2;
const STEPS: usize = 5;
/// Set in the environment of the processes that `worker` runs in.
const WORKER_OUT: &str = "GCL_TEST_WORKER_OUT";

fn config() -> gcl::config::Config {
    let mut c = tiny_config();
    c.stage1.batch_size = 16;
    c.run.threads = 1;
    c
}

/// A free local port for a rendezvous.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits for `child` at most `limit`; kills it after that (a hung test fails, never hangs).
fn wait_for(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} did not end within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The worker side of `workers_hold_identical_weights_equal_to_averaged_gradients`: a no-op
/// unless that test started this binary as a worker.
#[test]
fn worker() {
    let Some(out) = std::env::var_os(WORKER_OUT) else { return };
    let env = Env::from_process().unwrap().expect("started with WORLD_SIZE 2");
    let dist = Dist::join(&env, Device::Cpu, Duration::from_secs(120)).unwrap();
    let cfg = config();
    let data = prepare(&cfg, tiny_fashion_mnist());
    let rt = Runtime::resolve(&cfg.run).unwrap();
    let mut s = Session::new(&cfg, &data, rt, false).unwrap().among(dist);
    let mut run = StageRun::new(&mut s, Stage::One).unwrap();
    run.session.sync_from_writer().unwrap();
    run.run_epoch(0, |st| Ok(st.index + 1 < STEPS)).unwrap();
    run.opt.flat_params().save(Path::new(&out).join(format!("rank{}.pt", env.rank))).unwrap();
}

#[test]
fn workers_hold_identical_weights_equal_to_averaged_gradients() {
    if std::env::var_os(WORKER_OUT).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let mut children: Vec<Child> = (0..WORLD)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "worker", "--nocapture", "--test-threads", "1"])
                .env(WORKER_OUT, dir.path())
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", WORLD.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, c) in children.iter_mut().enumerate() {
        assert!(wait_for(c, Duration::from_secs(300), &format!("worker {rank}")).success(), "worker {rank} failed");
    }
    let ranks: Vec<Tensor> = (0..WORLD).map(|r| Tensor::load(dir.path().join(format!("rank{r}.pt"))).unwrap()).collect();
    // (a) One model: every weight of every worker equal to the bit.
    for (r, t) in ranks.iter().enumerate().skip(1) {
        assert!(t.equal(&ranks[0]), "rank {r}'s weights differ from rank 0's (max {})", (t - &ranks[0]).abs().max().double_value(&[]));
    }

    // (b) One process: each step, every worker's shard gradient, averaged, applied.
    let cfg = config();
    let data = prepare(&cfg, tiny_fashion_mnist());
    let mut s = Session::new(&cfg, &data, Runtime::resolve(&cfg.run).unwrap(), false).unwrap();
    let mut run = StageRun::new(&mut s, Stage::One).unwrap();
    let before = run.opt.flat_params();
    let lr = run.lr(0);
    for step in 0..STEPS {
        let grads: Vec<Tensor> = (0..WORLD).map(|rank| run.shard_gradient(0, step, Shard { rank, world: WORLD }).unwrap()).collect();
        let mean = Tensor::stack(&grads, 0).mean_dim(0, false, tch::Kind::Float);
        let _ = run.opt.apply(mean, lr);
    }
    let want = run.opt.flat_params();
    let moved = (&want - &before).abs().max().double_value(&[]);
    let off = (&ranks[0] - &want).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "the weights barely moved ({moved}): the comparison would say nothing");
    assert!(off <= 1e-5 * want.abs().max().double_value(&[]).max(1.0), "data-parallel weights are {off} away from averaged shard gradients (steps moved them by {moved})");
    // And the shards are not the same batch twice: the workers' gradients differ.
    let g0 = run.shard_gradient(0, 0, Shard { rank: 0, world: WORLD }).unwrap();
    let g1 = run.shard_gradient(0, 0, Shard { rank: 1, world: WORLD }).unwrap();
    assert!((g0 - g1).abs().max().double_value(&[]) > 1e-4);
}

/// Rank `rank`'s worker among the children of the launcher `pid`.
fn worker_pid(launcher: u32, rank: usize) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).find(|p| {
        std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|e| e.split(|&b| b == 0).any(|v| v == format!("RANK={rank}").as_bytes()))
    })
}

fn gcl_train(args: &[&str], split: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gcl"));
    c.arg("train")
        .args(["--set", "model.depth=8", "--set", &format!("data.split={{rule=\"index-file\", path=\"{}\"}}", split.display())])
        .args(args)
        .env_remove("MASTER_PORT")
        .env_remove("WORLD_SIZE");
    c
}

#[test]
fn nproc_2_trains_two_stages_to_results() {
    if std::env::var_os(WORKER_OUT).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let split = small_split(dir.path());
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let mut child = gcl_train(&["--nproc", "2", "--epochs", "6", "--cls-epochs", "1", "--batch-size", "32", "--out", o], &split)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(&mut child, Duration::from_secs(600), "gcl train --nproc 2");
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(status.success(), "gcl train --nproc 2 failed:\n{stderr}");
    // Rank 0 alone prints the table and writes.
    assert_eq!(stdout.matches("Top-1 accuracy").count(), 1, "{stdout}");
    let res: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    for stage in ["stage1", "stage2"] {
        let top1 = res[stage]["top1"].as_f64().unwrap();
        // One process with batch 64 gets 48.7% / 46.7% here.
        assert!(top1 > 0.3, "{stage} top-1 {top1}: six epochs of ResNet-8 on this split do better than chance (0.1)");
    }
    assert!(res["runtime"].as_str().unwrap().contains("2 data-parallel workers (Gloo)"), "{}", res["runtime"]);
    for f in ["config.toml", "split.txt", "stage1.safetensors", "stage2.safetensors"] {
        assert!(out.join(f).exists(), "{f} missing");
    }

}

#[test]
fn a_dead_or_hung_worker_stops_the_others_and_the_run_resumes_with_one_process() {
    if std::env::var_os(WORKER_OUT).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let split = small_split(dir.path());
    for (signal, name) in [("KILL", "killed"), ("STOP", "hung")] {
        let out = dir.path().join(name);
        let args = ["--epochs", "12", "--batch-size", "32", "--out", out.to_str().unwrap()];
        let mut child = gcl_train(&[&args[..], &["--nproc", "2", "--dist-timeout", "5"]].concat(), &split)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Both workers up, and one epoch's checkpoint written.
        let t = Instant::now();
        while !(out.join("stage1.safetensors").exists() && worker_pid(child.id(), 1).is_some()) {
            assert!(t.elapsed() < Duration::from_secs(120), "the workers did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let victim = worker_pid(child.id(), 1).unwrap();
        assert!(Command::new("kill").args([&format!("-{signal}"), &victim.to_string()]).status().unwrap().success());
        let t = Instant::now();
        let status = wait_for(&mut child, Duration::from_secs(90), &format!("gcl train after worker 1 was {name}"));
        let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
        assert!(!status.success());
        // Killed: c10d tells rank 0 at once; hung: rank 0 gives up after --dist-timeout 5 s,
        // and the launcher kills the stopped worker.
        assert!(t.elapsed() < Duration::from_secs(60), "{name}: took {:?}", t.elapsed());
        match name {
            "killed" => assert!(stderr.contains("worker 1 was killed (signal 9"), "{stderr}"),
            _ => assert!(stderr.contains("worker 0 exited with status 1") && stderr.contains("[1] did not stop"), "{stderr}"),
        }
        assert!(stderr.contains("rank 0 of 2: all-reduce"), "rank 0 names the failed exchange:\n{stderr}");
        if name == "killed" {
            // The checkpoint the two workers wrote continues in one process.
            let resumed = gcl_train(&[&args[..], &["--resume", "--stages", "one"]].concat(), &split).output().unwrap();
            let log = String::from_utf8_lossy(&resumed.stderr);
            assert!(resumed.status.success(), "{log}");
            assert!(log.contains("stage 1: resuming from") && log.contains("after epoch"), "{log}");
            let res: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
            assert!(res["stage1"]["top1"].as_f64().unwrap() > 0.3, "{}", res["stage1"]);
        }
    }
}

#[test]
fn a_busy_port_or_an_unreachable_master_is_a_clear_error() {
    if std::env::var_os(WORKER_OUT).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let split = small_split(dir.path());
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let run = |rank: &str, port: u16| {
        let out = gcl_train(&["--dist-timeout", "2", "--out", dir.path().join(rank).to_str().unwrap()], &split)
            .env("WORLD_SIZE", "2")
            .env("RANK", rank)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("0", port);
    assert!(err.contains(&format!("could not serve the rendezvous at MASTER_ADDR=127.0.0.1:MASTER_PORT={port}")) && err.contains("address already in use"), "{err}");
    drop(busy);
    let err = run("1", free_port());
    assert!(err.contains("could not reach the rendezvous") && err.contains("--dist-timeout 2 s"), "{err}");
    assert!(!err.contains("frame #"), "no C++ backtraces for a user:\n{err}");
}

#[test]
fn torchrun_starts_gcl_unchanged() {
    if std::env::var_os(WORKER_OUT).is_some() {
        return;
    }
    let torchrun = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    assert!(torchrun.exists(), "{} is missing: run `bash scripts/setup.sh`", torchrun.display());
    let dir = tempfile::tempdir().unwrap();
    let split = small_split(dir.path());
    let out = dir.path().join("run");
    let port = free_port().to_string();
    // torchrun's agent serves the rendezvous store (TORCHELASTIC_USE_AGENT_STORE): rank 0
    // must connect to it, not listen on the same port.
    let gcl = gcl_train(&["--epochs", "1", "--stages", "one", "-q", "--out", out.to_str().unwrap()], &split);
    let mut child = Command::new(&torchrun)
        .args(["--no-python", "--nproc-per-node", "2", "--master-port", &port])
        .arg(gcl.get_program())
        .args(gcl.get_args())
        .env_remove("WORLD_SIZE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(&mut child, Duration::from_secs(300), "torchrun gcl train");
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(status.success(), "{stderr}");
    let res: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert!(res["runtime"].as_str().unwrap().contains("2 data-parallel workers"), "{}", res["runtime"]);
}
