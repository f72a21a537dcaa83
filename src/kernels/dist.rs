//! The data-parallel shim (csrc/dist.cpp): a c10d process group, Gloo on the CPU, NCCL on
//! CUDA, joined through a TCPStore; sums and broadcasts of tensors in place.
use super::{check, ffi};
use anyhow::Result;
use std::ffi::CString;
use std::os::raw::c_int;
use std::time::Duration;
use tch::Tensor;
use torch_sys::C_tensor;

/// The C++ side's handle (opaque).
#[repr(C)]
pub struct GclGroup {
    _private: [u8; 0],
}

/// Which c10d backend carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

/// One process's membership of a c10d process group.
pub struct ProcessGroup {
    ptr: *mut GclGroup,
    pub rank: usize,
    pub world: usize,
}

// SAFETY: c10d's backends are made to be called from any thread (DDP calls them from
// autograd's); the handle itself is immutable after creation.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group of `world` processes that meet at the rendezvous `host:port`, which
    /// rank 0 serves when `serve` (else the launcher does); waits at most `timeout` for the
    /// others, and later for each collective.
    pub fn join(host: &str, port: u16, rank: usize, world: usize, serve: bool, backend: Backend, timeout: Duration) -> Result<Self> {
        let c_host = CString::new(host)?;
        let mut ptr = std::ptr::null_mut();
        let ms = timeout.as_millis().min(i64::MAX as u128) as i64;
        // SAFETY: a valid C string and out-pointer; the shim writes a fresh handle on success.
        let rc = unsafe { ffi::gcl_dist_init(c_host.as_ptr(), port as c_int, rank as c_int, world as c_int, serve as c_int, (backend == Backend::Nccl) as c_int, ms, &mut ptr) };
        check(rc, &|| format!("rank {rank} of {world}: joining the process group at {host}:{port}"))?;
        Ok(Self { ptr, rank, world })
    }

    fn handles(ts: &[&Tensor]) -> Vec<*mut C_tensor> {
        ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
    }

    /// An exchange's return code as a `Result` (`check`), with what a failure most likely means.
    fn explain(&self, what: &str, rc: c_int) -> Result<()> {
        check(rc, &|| format!("rank {} of {}: {what}", self.rank, self.world)).map_err(|e| {
            let msg = e.to_string();
            let hint = if msg.contains("timed out") || msg.contains("Timed out") {
                "; not every worker answered within the timeout (--dist-timeout): one hung, died or is far behind"
            } else if msg.contains("reset by peer") || msg.contains("closed by peer") || msg.contains("Connection closed") {
                "; another worker is gone (it failed or was killed)"
            } else {
                ""
            };
            anyhow::anyhow!("{msg}{hint}")
        })
    }

    /// Sums each tensor over the processes, in place; all of them in flight at once.
    pub fn all_reduce_sum(&self, ts: &[&Tensor]) -> Result<()> {
        let h = Self::handles(ts);
        // SAFETY: live tensor handles for the duration of the call; the shim only reads the
        // handles and writes into the tensors' memory.
        let rc = unsafe { ffi::gcl_dist_allreduce(self.ptr, h.as_ptr(), h.len() as c_int) };
        self.explain("all-reduce", rc)
    }

    /// Replaces each tensor with rank `root`'s.
    pub fn broadcast(&self, ts: &[&Tensor], root: usize) -> Result<()> {
        let h = Self::handles(ts);
        // SAFETY: as in all_reduce_sum.
        let rc = unsafe { ffi::gcl_dist_broadcast(self.ptr, h.as_ptr(), h.len() as c_int, root as c_int) };
        self.explain(&format!("broadcast from rank {root}"), rc)
    }

    /// Waits until every process has arrived.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: a live handle.
        let rc = unsafe { ffi::gcl_dist_barrier(self.ptr) };
        self.explain("barrier", rc)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from gcl_dist_init and is freed once.
        unsafe { ffi::gcl_dist_free(self.ptr) }
    }
}
