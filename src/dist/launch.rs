//! `gcl train --nproc N`: N workers of the same command on this machine, with torchrun's
//! environment, watched until all end. When one fails, the others are given a short while
//! to stop by themselves (c10d tells them a peer is gone) and are then killed, so that a run
//! never hangs on a dead worker.
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long the other workers get to stop by themselves after one has failed.
pub const GRACE: Duration = Duration::from_secs(15);

/// `args` without `--nproc N` / `--nproc=N` and `--oversubscribe` (the workers are not
/// launchers).
pub fn worker_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        match a.to_str() {
            Some("--nproc") => skip = true,
            Some(s) if s.starts_with("--nproc=") || s == "--oversubscribe" => {}
            _ => out.push(a.clone()),
        }
    }
    out
}

/// A port nobody listens on now, for the rendezvous.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free local port for the workers' rendezvous")?;
    Ok(l.local_addr()?.port())
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(9)) => "was killed (signal 9, SIGKILL; out of memory?)".into(),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("ended ({status})"),
    }
}

/// Refuses more CPU workers than cores (unless `oversubscribe`) and more CUDA workers than
/// GPUs; warns when `nproc` workers of `worker_bytes` each would not fit in the memory the
/// machine has free. Each worker is a whole process with its own copy of libtorch, the
/// model and the data: 100 of them on 2 cores are killed for memory, not faster.
pub fn check_size(nproc: usize, cuda: bool, oversubscribe: bool, worker_bytes: u64) -> Result<()> {
    let gb = |b: u64| b as f64 / (1u64 << 30) as f64;
    if cuda {
        let gpus = tch::Cuda::device_count() as usize;
        if nproc > gpus {
            bail!("--nproc {nproc}: CUDA workers take one GPU each and this machine has {gpus}; give --nproc {gpus} or fewer");
        }
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if nproc > cores && !oversubscribe {
            bail!(
                "--nproc {nproc}: more CPU workers than this machine's {cores} cores (each would get a fraction of a core, \
                 and its own copy of libtorch, the model and the data: about {:.1} GB each, {:.1} GB in all); \
                 give --nproc {cores} or fewer, or --oversubscribe to start them anyway",
                gb(worker_bytes),
                gb(worker_bytes * nproc as u64)
            );
        }
    }
    if let Some(free) = available_memory() {
        let need = worker_bytes * nproc as u64;
        if need > free {
            crate::util::warn_once(&format!(
                "{nproc} workers need about {:.1} GB ({:.1} GB each, a rough estimate) and this machine has {:.1} GB available: \
                 the kernel may kill them for memory; fewer workers or a smaller stage1.batch_size need less",
                gb(need),
                gb(worker_bytes),
                gb(free)
            ));
        }
    }
    Ok(())
}

/// MemAvailable of /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

/// Runs `nproc` workers of this program with `args` (the command line without `--nproc`);
/// `cuda`: one GPU each (LOCAL_RANK picks it), else the CPU's cores split between them.
pub fn run_local(nproc: usize, args: &[OsString], cuda: bool) -> Result<()> {
    if nproc == 0 {
        bail!("--nproc 0: give at least one worker");
    }
    let exe = std::env::current_exe().context("cannot find gcl's own executable to start the workers")?;
    let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p,
        Err(_) => free_port()?.to_string(),
    };
    // CPU workers share the cores: each gets its part (OpenMP reads this; an explicit
    // run.threads still wins), as torchrun sets OMP_NUM_THREADS for its workers.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / nproc).max(1);
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", &port);
        if !cuda && std::env::var_os("OMP_NUM_THREADS").is_none() {
            cmd.env("OMP_NUM_THREADS", threads.to_string());
        }
        match cmd.spawn() {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                for (_, c) in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e).with_context(|| format!("cannot start worker {rank} ({})", exe.display()));
            }
        }
    }
    watch(children)
}

/// Waits for every worker; the first failure (and who failed) becomes the error.
fn watch(mut children: Vec<(usize, Child)>) -> Result<()> {
    let mut failed: Option<(usize, ExitStatus, Instant)> = None;
    let mut killed = Vec::new();
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            match children[i].1.try_wait() {
                Ok(Some(status)) => {
                    let (rank, _) = children.swap_remove(i);
                    if !status.success() && failed.is_none() {
                        failed = Some((rank, status, Instant::now()));
                    }
                }
                Ok(None) => i += 1,
                Err(e) => return Err(e).context("cannot watch the workers"),
            }
        }
        if let Some((_, _, at)) = failed {
            if at.elapsed() > GRACE {
                for (rank, c) in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                    killed.push(*rank);
                }
                children.clear();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failed {
        None => Ok(()),
        Some((rank, status, _)) => {
            let others = if killed.is_empty() {
                "the other workers stopped".to_string()
            } else {
                format!("worker(s) {killed:?} did not stop within {} s and were killed", GRACE.as_secs())
            };
            bail!("worker {rank} {} (its error, if it printed one, is above); {others}", describe(status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_not_launchers() {
        let a: Vec<OsString> = ["train", "--nproc", "2", "--epochs", "1", "--nproc=3", "--oversubscribe", "-q"].iter().map(OsString::from).collect();
        let w: Vec<String> = worker_args(&a).iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(w, ["train", "--epochs", "1", "-q"]);
    }
}
