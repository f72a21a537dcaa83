//! What this machine can do, so that a speed can be said as a fraction of it: the fp32 and
//! bf16 FLOP/s of a large matrix product in libtorch (oneDNN / MKL on the CPU, cuBLAS on CUDA),
//! and on the CPU the bound computed from cores x clock x FLOPs per cycle of the ISA.
use crate::kernels::autocast::Precision;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Peak FLOP/s (GFLOP/s) measured and computed, per precision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peak {
    pub fp32_measured: f64,
    /// None where the CPU has no native bf16 (libtorch's fallback is a slow scalar loop:
    /// a minute per 2048 x 2048 product on 2 cores, not a peak).
    pub bf16_measured: Option<f64>,
    /// The CPU's bound (None on CUDA).
    pub fp32_computed: Option<f64>,
    pub bf16_computed: Option<f64>,
    /// How the bound was computed, in words.
    pub basis: String,
    /// Side of the square matrices timed.
    pub size: i64,
}

impl Peak {
    /// The measured peak for runs in `p`.
    pub fn measured(&self, p: Precision) -> f64 {
        match p {
            Precision::Bf16 => self.bf16_measured.unwrap_or(f64::NAN),
            _ => self.fp32_measured,
        }
    }

    /// One line for the bench's output.
    pub fn describe(&self) -> String {
        let c = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        format!(
            "peak GFLOP/s, {n}x{n} matrix product in libtorch: fp32 {:.0}, bf16 {}; computed from {}: fp32 {}, bf16 {}",
            self.fp32_measured,
            self.bf16_measured.map_or("- (not native here)".to_string(), |v| format!("{v:.0}")),
            self.basis,
            c(self.fp32_computed),
            c(self.bf16_computed),
            n = self.size
        )
    }
}

/// GFLOP/s of the best of `reps` n x n products in `kind` on `device` (after two untimed).
fn matmul_gflops(n: i64, kind: Kind, device: Device, reps: usize) -> f64 {
    let _g = tch::no_grad_guard();
    let a = Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind);
    let b = Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind);
    let sync = |t: &Tensor| {
        let _ = t.get(0).get(0).double_value(&[]);
    };
    for _ in 0..2 {
        sync(&a.mm(&b));
    }
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        sync(&a.mm(&b));
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// Measures the peak on `device` with libtorch's current threads (`threads` of them, for the
/// computed bound).
pub fn measure(device: Device, threads: usize) -> Peak {
    let n = if device.is_cuda() { 8192 } else { 2048 };
    let fp32_measured = matmul_gflops(n, Kind::Float, device, 5);
    let native = device.is_cuda() || (crate::kernels::cpu_has_bf16() && !capped());
    let bf16_measured = native.then(|| matmul_gflops(n, Kind::BFloat16, device, 5));
    if device.is_cuda() {
        return Peak { fp32_measured, bf16_measured, fp32_computed: None, bf16_computed: None, basis: "(not computed for GPUs)".into(), size: n };
    }
    let (ghz, fp32, bf16, isa) = cpu_rate();
    let per = |f: f64| threads as f64 * ghz * f;
    Peak {
        fp32_measured,
        bf16_measured,
        fp32_computed: Some(per(fp32)),
        bf16_computed: Some(per(bf16)),
        basis: format!("{threads} cores x {ghz:.2} GHz x ({fp32:.0} fp32, {bf16:.0} bf16) FLOP/cycle ({isa})"),
        size: n,
    }
}

/// The CPU's clock (GHz, /proc/cpuinfo's "cpu MHz") and FLOPs per cycle and core in fp32 and
/// bf16 from its ISA: two FMA units per core of the widest vectors (AVX-512: 2 x 16 x 2 = 64,
/// AVX2: 32, SSE: 16); bf16 by AMX (1024) or AVX-512 BF16's dot products (128), else as fp32.
fn cpu_rate() -> (f64, f64, f64, String) {
    let mhz = crate::util::cpuinfo("cpu MHz").and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    let flags = crate::util::cpuinfo("flags").unwrap_or_default();
    let capped = capped();
    let has = |f: &str| flags.split(' ').any(|x| x == f) && !(capped && (f.starts_with("avx512") || f.starts_with("amx")));
    let (fp32, isa) = if has("avx512f") {
        (64.0, "AVX-512, 2 FMA units")
    } else if has("avx2") && has("fma") {
        (32.0, "AVX2, 2 FMA units")
    } else {
        (16.0, "SSE")
    };
    let (bf16, bisa) = if has("amx_bf16") {
        (1024.0, "AMX")
    } else if has("avx512_bf16") {
        (128.0, "AVX-512 BF16")
    } else {
        (fp32, "no native bf16")
    };
    (mhz / 1000.0, fp32, bf16, format!("{isa}; bf16: {bisa}"))
}

/// Whether this process runs below AVX-512 (`gcl bench --isa avx2` caps it through the same
/// setting as our kernels), and so without AVX-512's bf16 and AMX.
fn capped() -> bool {
    crate::kernels::isa() < crate::kernels::Isa::Avx512
}
