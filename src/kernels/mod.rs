//! Our C++ kernels (csrc/) and their bindings, under one convention (csrc/ffi.h): every entry
//! point returns 0, or -1 after a C++ exception whose message `gcl_last_error` holds; tensor
//! results come back as new handles through an out-pointer, null where a kernel declines.
//! Here each call becomes a `Result` that names what was being done.
pub mod autocast;
pub mod bn_act;
pub mod dist;
pub mod layout;
pub mod winograd;

use anyhow::{bail, Context, Result};
use std::os::raw::{c_char, c_int};
use tch::Tensor;
use torch_sys::C_tensor;

/// Which of our own kernels a network uses; chosen once, when the network is built for its
/// device (`runtime::Runtime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kernels {
    /// Training-mode BatchNorm + residual add + ReLU as one op (channels-last CPU tensors).
    pub fused: bool,
    /// 3x3 stride-1 convolutions by Winograd F(2x2, 3x3) (fp32, AVX-512 or AVX2 CPUs).
    pub winograd: bool,
}

impl Kernels {
    /// libtorch's ops only.
    pub const NONE: Kernels = Kernels { fused: false, winograd: false };
}

/// The vector instruction sets our kernels have a path for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain C++ (the fused BatchNorm only; the Winograd kernel declines).
    Scalar = 0,
    /// AVX2 with FMA: 8 floats per vector, 16 registers.
    Avx2 = 1,
    /// AVX-512 (F, BW, DQ, VL): 16 floats per vector, 32 registers.
    Avx512 = 2,
}

impl Isa {
    fn from_level(l: c_int) -> Isa {
        match l {
            2 => Isa::Avx512,
            1 => Isa::Avx2,
            _ => Isa::Scalar,
        }
    }
}

/// The instruction set our kernels run with: the widest the CPU has, capped by the
/// environment's `GCL_CPU_ISA` (avx512, avx2, none) or `cap_isa`.
pub fn isa() -> Isa {
    // SAFETY: reads an atomic and the CPU's features.
    Isa::from_level(unsafe { ffi::gcl_cpu_isa() })
}

/// Caps the instruction set of our kernels at `cap` from now on (for every thread); returns
/// the one in effect, which is lower where the CPU lacks `cap`. The AVX2 paths run on AVX-512
/// machines this way (tests, `gcl bench --isa avx2`).
pub fn cap_isa(cap: Isa) -> Isa {
    // SAFETY: stores an atomic.
    Isa::from_level(unsafe { ffi::gcl_set_cpu_isa(cap as c_int) })
}

/// Whether the Winograd kernel runs here (it needs AVX2 with FMA, or AVX-512).
pub fn winograd_supported() -> bool {
    isa() >= Isa::Avx2
}

/// Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16; AMX CPUs have it too), which CPU bf16
/// autocast needs to be fast.
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) mod ffi {
    use super::*;
    extern "C" {
        pub fn gcl_last_error() -> *const c_char;
        pub fn gcl_cpu_isa() -> c_int;
        pub fn gcl_set_cpu_isa(level: c_int) -> c_int;

        pub fn gcl_autocast_enter(device: c_int, was_enabled: *mut c_int) -> c_int;
        pub fn gcl_autocast_exit(device: c_int, was_enabled: c_int) -> c_int;
        pub fn gcl_channels_last(t: *const C_tensor, out: *mut *mut C_tensor) -> c_int;
        pub fn gcl_param_channels_last(t: *mut C_tensor) -> c_int;
        pub fn gcl_set_grad(t: *mut C_tensor, g: *const C_tensor) -> c_int;

        pub fn gcl_bn_act(
            x: *const C_tensor,
            residual: *const C_tensor,
            weight: *const C_tensor,
            bias: *const C_tensor,
            running_mean: *const C_tensor,
            running_var: *const C_tensor,
            momentum: f64,
            eps: f64,
            relu: c_int,
            out: *mut *mut C_tensor,
        ) -> c_int;

        pub fn gcl_winograd_conv(
            x: *const C_tensor,
            w: *const C_tensor,
            u: *const C_tensor,
            bias: *const C_tensor,
            residual: *const C_tensor,
            relu: c_int,
            out: *mut *mut C_tensor,
        ) -> c_int;
        pub fn gcl_winograd_conv_train(x: *const C_tensor, w: *const C_tensor, out: *mut *mut C_tensor) -> c_int;
        pub fn gcl_winograd_weight(w: *const C_tensor, out: *mut *mut C_tensor) -> c_int;

        pub fn gcl_dist_init(host: *const c_char, port: c_int, rank: c_int, world: c_int, serve: c_int, nccl: c_int, timeout_ms: i64, out: *mut *mut dist::GclGroup) -> c_int;
        pub fn gcl_dist_free(g: *mut dist::GclGroup);
        pub fn gcl_dist_allreduce(g: *mut dist::GclGroup, ts: *const *mut C_tensor, n: c_int) -> c_int;
        pub fn gcl_dist_broadcast(g: *mut dist::GclGroup, ts: *const *mut C_tensor, n: c_int, root: c_int) -> c_int;
        pub fn gcl_dist_barrier(g: *mut dist::GclGroup) -> c_int;
    }
}

/// An entry point's return code as a `Result`, with the C++ message.
fn check(rc: c_int, what: &dyn Fn() -> String) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: gcl_last_error returns this thread's NUL-terminated message, which stays valid
    // until the next failure on this thread; it is copied at once.
    let msg = unsafe { std::ffi::CStr::from_ptr(ffi::gcl_last_error()) }.to_string_lossy().into_owned();
    bail!("{}: {msg}", what())
}

/// Runs an entry point that writes a tensor handle to its out-pointer: `None` where the
/// kernel declined.
fn maybe_tensor(what: &dyn Fn() -> String, call: impl FnOnce(*mut *mut C_tensor) -> c_int) -> Result<Option<Tensor>> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(call(&mut out), what)?;
    // SAFETY: after a 0 return the handle is null or a fresh heap tensor that nothing else
    // owns; the new Tensor takes it over (and frees it).
    Ok((!out.is_null()).then(|| unsafe { Tensor::from_ptr(out) }))
}

/// As `maybe_tensor`, for entry points that always produce a tensor.
fn tensor(what: &dyn Fn() -> String, call: impl FnOnce(*mut *mut C_tensor) -> c_int) -> Result<Tensor> {
    maybe_tensor(what, call)?.with_context(what)
}

/// A pointer for an optional tensor input (null for none).
fn opt_ptr(t: Option<&Tensor>) -> *const C_tensor {
    t.map_or(std::ptr::null(), |t| t.as_ptr())
}
