//! Data-parallel training: which of the workers this process is, and what the workers share.
//!
//! The workers are started as the ecosystem starts them: torchrun's (or Slurm's) environment
//! names this process (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`),
//! or `gcl train --nproc N` starts N local workers with that environment (`launch`). They
//! meet through c10d, PyTorch's distributed engine (Gloo on the CPU, NCCL on CUDA;
//! csrc/dist.cpp), never a protocol of our own.
//!
//! What stays the same across the workers, and how:
//! - the weights: rank 0's are broadcast before training, then every step applies the same
//!   averaged gradient (an all-reduce of the flat gradient in 25 MiB buckets, DDP's default),
//!   so they stay bit-identical;
//! - BatchNorm: each worker normalises its own batch with its own statistics (as DDP); the
//!   running statistics are averaged at the end of every epoch, so that all workers
//!   evaluate and save one model;
//! - the data: each epoch's order is drawn alike by all, then dealt out rank by rank
//!   (`data::loader::Shard`); augmentation, mixup and GCL's noise draw from streams of
//!   their own per rank.
pub mod launch;

use crate::kernels::dist::{Backend, ProcessGroup};
use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// Elements per all-reduce bucket (25 MiB of fp32, DDP's `bucket_cap_mb`).
pub const BUCKET_ELEMS: i64 = 25 * 1024 * 1024 / 4;

/// How long a worker waits for the others (rendezvous, each collective) by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// This process among the workers of a run.
pub struct Dist {
    pub rank: usize,
    pub world: usize,
    /// Rank among the workers on this machine (the CUDA device it takes).
    pub local_rank: usize,
    /// None for a single process.
    group: Option<ProcessGroup>,
    /// Nanoseconds spent averaging gradients since the last `take_exchange_time`.
    exchange_ns: AtomicU64,
}

/// The torchrun variables of this process, when it is one of several workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub addr: String,
    pub port: u16,
    /// The launcher serves the rendezvous store itself (torchrun's agent, which says so
    /// with TORCHELASTIC_USE_AGENT_STORE=True); else rank 0 serves it.
    pub agent_store: bool,
}

fn var<T: std::str::FromStr>(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<T>> {
    match get(name) {
        None => Ok(None),
        Some(v) => match v.trim().parse() {
            Ok(x) => Ok(Some(x)),
            Err(_) => bail!("the environment variable {name}={v:?} is not a valid value"),
        },
    }
}

impl Env {
    /// Reads the launcher's variables through `get`; None when WORLD_SIZE is unset or 1.
    pub fn read(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Env>> {
        let world: usize = match var(get, "WORLD_SIZE")? {
            None | Some(1) => return Ok(None),
            Some(0) => bail!("WORLD_SIZE=0: a run needs at least one worker"),
            Some(w) => w,
        };
        let need = |name: &str| -> Result<String> {
            get(name).with_context(|| format!("WORLD_SIZE={world} but {name} is not set (start the workers with torchrun, or with gcl train --nproc N)"))
        };
        let rank: usize = need("RANK")?.trim().parse().with_context(|| format!("RANK={:?} is not a number", get("RANK").unwrap_or_default()))?;
        if rank >= world {
            bail!("RANK={rank} is not below WORLD_SIZE={world}");
        }
        let local_rank = var(get, "LOCAL_RANK")?.unwrap_or(rank);
        let addr = need("MASTER_ADDR")?;
        let port_text = need("MASTER_PORT")?;
        let port = port_text.trim().parse().ok().filter(|&p: &u16| p > 0).with_context(|| format!("MASTER_PORT={port_text:?} is not a port number (1-65535)"))?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(Some(Env { rank, world, local_rank, addr, port, agent_store }))
    }

    /// From this process's environment.
    pub fn from_process() -> Result<Option<Env>> {
        Env::read(&|n| std::env::var(n).ok())
    }
}

impl Dist {
    /// One process: every collective is a no-op.
    pub fn single() -> Arc<Dist> {
        Arc::new(Dist { rank: 0, world: 1, local_rank: 0, group: None, exchange_ns: AtomicU64::new(0) })
    }

    /// Joins the workers `env` names (Gloo for CPU training, NCCL for CUDA), waiting at most
    /// `timeout` for them and later for each exchange.
    pub fn join(env: &Env, device: Device, timeout: Duration) -> Result<Arc<Dist>> {
        let backend = if device.is_cuda() { Backend::Nccl } else { Backend::Gloo };
        let group = ProcessGroup::join(&env.addr, env.port, env.rank, env.world, !env.agent_store, backend, timeout).map_err(|e| {
            let role = if env.rank == 0 && !env.agent_store { "serve" } else { "reach" };
            e.context(format!(
                "could not {role} the rendezvous at MASTER_ADDR={}:MASTER_PORT={} (rank 0 listens there, the others connect, for at most \
                 --dist-timeout {} s; check the address, that the port is free on rank 0's machine, and that all {} workers started)",
                env.addr,
                env.port,
                timeout.as_secs(),
                env.world
            ))
        })?;
        Ok(Arc::new(Dist { rank: env.rank, world: env.world, local_rank: env.local_rank, group: Some(group), exchange_ns: AtomicU64::new(0) }))
    }

    pub fn is_distributed(&self) -> bool {
        self.world > 1
    }

    /// Rank 0 alone writes checkpoints, results and logs.
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }

    /// The mean over the workers of a flat (1-d, contiguous) gradient, in place: a sum in
    /// buckets all in flight at once, then a division.
    pub fn average_gradient(&self, flat: &Tensor) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        let t = Instant::now();
        let n = flat.numel() as i64;
        let buckets: Vec<Tensor> = (0..n).step_by(BUCKET_ELEMS as usize).map(|o| flat.narrow(0, o, BUCKET_ELEMS.min(n - o))).collect();
        g.all_reduce_sum(&buckets.iter().collect::<Vec<_>>())?;
        tch::no_grad(|| {
            let _ = flat.shallow_clone().g_div_scalar_(self.world as f64);
        });
        self.exchange_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Seconds spent averaging gradients (waiting for the others included) since the last
    /// call: the price of data parallelism that an epoch's log line shows.
    pub fn take_exchange_time(&self) -> f64 {
        self.exchange_ns.swap(0, Ordering::Relaxed) as f64 * 1e-9
    }

    /// `exchange` on contiguous copies of `ts` (c10d works on whole storages), whose results,
    /// times `scale`, are copied back into `ts`.
    fn through_copies(&self, ts: &[Tensor], scale: f64, exchange: impl FnOnce(&ProcessGroup, &[&Tensor]) -> Result<()>) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        let copies: Vec<Tensor> = ts.iter().map(|t| t.detach().contiguous().copy()).collect();
        exchange(g, &copies.iter().collect::<Vec<_>>())?;
        tch::no_grad(|| {
            for (t, c) in ts.iter().zip(&copies) {
                let _ = t.detach().copy_(&(c * scale));
            }
        });
        Ok(())
    }

    /// Each tensor replaced by its mean over the workers (floating-point tensors).
    pub fn average(&self, ts: &[Tensor]) -> Result<()> {
        self.through_copies(ts, 1.0 / self.world as f64, |g, c| g.all_reduce_sum(c))
    }

    /// Each tensor summed over the workers, in place (contiguous tensors).
    pub fn sum(&self, ts: &[&Tensor]) -> Result<()> {
        match &self.group {
            None => Ok(()),
            Some(g) => g.all_reduce_sum(ts),
        }
    }

    /// Each tensor set to rank 0's.
    pub fn broadcast_from_writer(&self, ts: &[Tensor]) -> Result<()> {
        self.through_copies(ts, 1.0, |g, c| g.broadcast(c, 0))
    }

    /// Waits for all workers.
    pub fn barrier(&self) -> Result<()> {
        match &self.group {
            None => Ok(()),
            Some(g) => g.barrier(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<Env>> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::read(&move |n| m.get(n).cloned())
    }

    #[test]
    fn torchrun_variables_name_the_worker() {
        assert_eq!(env(&[]).unwrap(), None);
        assert_eq!(env(&[("WORLD_SIZE", "1")]).unwrap(), None);
        let e = env(&[("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500")]).unwrap().unwrap();
        assert_eq!(e, Env { rank: 3, world: 4, local_rank: 1, addr: "node0".into(), port: 29500, agent_store: false });
    }

    #[test]
    fn bad_variables_are_named() {
        let err = |p: &[(&str, &str)]| format!("{:#}", env(p).unwrap_err());
        assert!(err(&[("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")]).contains("RANK is not set"));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")]).contains("RANK=2 is not below WORLD_SIZE=2"));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "http")]).contains("MASTER_PORT=\"http\""));
        assert!(err(&[("WORLD_SIZE", "two")]).contains("WORLD_SIZE=\"two\""));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "1")]).contains("MASTER_ADDR is not set"));
    }
}
