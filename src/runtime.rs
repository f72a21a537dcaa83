//! What a run actually uses, resolved once from the settings for its device: the device
//! itself, the thread count, the memory layout, our kernels, the evaluation batch and the
//! loader's prefetch. Everything downstream reads these, never the raw settings.
use crate::kernels::autocast::Precision;
use crate::kernels::Kernels;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Device;

/// The settings' `[run]`: how a run executes (not what it learns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub seed: u64,
    /// "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// Intra-op threads; 0 lets libtorch choose.
    pub threads: usize,
    /// Default: 128 on the CPU, 1024 on CUDA.
    pub eval_batch_size: Option<usize>,
    /// Training images below which a class is few-shot, and above which it is many-shot.
    pub few_below: usize,
    pub many_above: usize,
    /// Post-hoc logit adjustment at evaluation: argmax(logits - tau * log prior).
    pub posthoc_tau: Option<f64>,
    /// fp32, or bf16 autocast (opt-in).
    pub precision: Precision,
    /// Channels-last (NHWC) images and convolution weights on the CPU, which oneDNN runs
    /// faster; CUDA runs keep the default layout.
    pub channels_last: bool,
    /// Batches each loader worker prepares ahead. Default: 2; in-memory sets on the CPU: 0,
    /// which prepares each batch on the training thread.
    pub prefetch: Option<usize>,
    /// Threads that read, decode and transform images (0: the training thread). Default:
    /// image files: the cores libtorch's threads leave free on the CPU (none when they use
    /// all), up to 8 with CUDA; in-memory sets: 0 on the CPU, 1 with CUDA.
    pub workers: Option<usize>,
    /// Training-mode BatchNorm, residual add and ReLU as one fused kernel on channels-last
    /// CPU tensors (csrc/bn_act.cpp); CUDA runs use libtorch's ops.
    pub fused: bool,
    /// The 3x3 stride-1 convolutions by Winograd's F(2x2, 3x3) on fp32 CPUs with AVX2 or AVX-512
    /// (csrc/winograd.cpp): in stage 1 their forward and input gradient (the weights'
    /// gradient stays libtorch's), in stage 2 and evaluation the frozen backbone's forward.
    pub winograd: bool,
    /// Every this many epochs of each stage, measure the embedding on the probe set (0: never;
    /// `train::probe`).
    pub probe_every: usize,
    /// The probe set without a val set: up to this many training images per class.
    pub probe_per_class: usize,
    /// Stage-1 epochs whose probe features are kept for `gcl report`'s t-SNE pictures.
    pub snapshots: Vec<usize>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            device: "cpu".into(),
            threads: 0,
            eval_batch_size: None,
            few_below: 20,
            many_above: 100,
            posthoc_tau: None,
            precision: Precision::Fp32,
            channels_last: true,
            prefetch: None,
            workers: None,
            fused: true,
            winograd: true,
            probe_every: 0,
            probe_per_class: 50,
            snapshots: Vec::new(),
        }
    }
}

/// Who makes the batches: `workers` threads (0: the caller's), each at most `ahead` batches
/// ahead of the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    pub workers: usize,
    pub ahead: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Runtime {
    pub device: Device,
    pub precision: Precision,
    /// Intra-op threads libtorch uses.
    pub threads: usize,
    /// Channels-last (NHWC) images and convolution weights (the CPU's layout).
    pub channels_last: bool,
    pub kernels: Kernels,
    pub eval_batch: usize,
    /// `run.prefetch` and `run.workers` as set (their defaults depend on the data).
    pub prefetch: Option<usize>,
    pub workers: Option<usize>,
}

/// The device `name` names (cpu, cuda, cuda:N).
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        n => match n.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Ok(Device::Cuda(i)),
            None => bail!("unknown device `{name}` (use cpu, cuda or cuda:N)"),
        },
    }
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Runtime {
    /// Resolves `r` on this machine and sets libtorch's thread count. A CUDA device that is
    /// not there falls back to the CPU, loudly.
    pub fn resolve(r: &RunConfig) -> Result<Self> {
        let mut device = parse_device(&r.device)?;
        if let Device::Cuda(i) = device {
            let n = tch::Cuda::device_count();
            if !tch::Cuda::is_available() || i as i64 >= n {
                eprintln!("gcl: warning: device {} asked for, but libtorch sees {n} CUDA device(s); running on the CPU instead", r.device);
                device = Device::Cpu;
            }
        }
        let threads = if r.threads == 0 {
            tch::get_num_threads().max(1) as usize
        } else if r.threads > cores() {
            eprintln!("gcl: warning: run.threads = {} is more than the {} cores here; using {}", r.threads, cores(), cores());
            cores()
        } else {
            r.threads
        };
        if r.threads > 0 {
            tch::set_num_threads(threads as i32);
        }
        let cpu = device == Device::Cpu;
        if cpu && r.precision == Precision::Bf16 && !crate::kernels::cpu_has_bf16() {
            eprintln!(
                "gcl: warning: bf16 on a CPU without AVX-512 BF16 or AMX is emulated and runs several times slower than fp32; \
                 use --precision fp32 here"
            );
        }
        let channels_last = r.channels_last && cpu;
        Ok(Self {
            device,
            precision: r.precision,
            threads,
            channels_last,
            // The fused op is written for channels-last CPU tensors, the Winograd kernel for
            // fp32 CPUs with AVX2 or AVX-512; elsewhere libtorch's ops are as fast.
            kernels: Kernels { fused: r.fused && channels_last, winograd: r.winograd && cpu && crate::kernels::winograd_supported() },
            // The CPU: 128 keeps activations in cache (+18% over 512); CUDA: large batches.
            eval_batch: r.eval_batch_size.unwrap_or(if cpu { 128 } else { 1024 }),
            prefetch: r.prefetch,
            workers: r.workers,
        })
    }

    /// Who prepares batches of a source (`from_files`: decoded from files on demand).
    pub fn loader(&self, from_files: bool) -> Workers {
        let cpu = self.device == Device::Cpu;
        let workers = self.workers.unwrap_or(match (from_files, cpu) {
            // The cores libtorch's threads leave free: a decoder on a core they use stalls
            // their team (2 cores, 2 threads, 28x28 PNG: 284 img/s inline, 118 with one
            // worker), and at ImageNet sizes decoding is a few % of a CPU training step.
            (true, true) => cores().saturating_sub(self.threads).min(8),
            (true, false) => cores().min(8),
            // The CPU: a second busy thread makes libtorch's thread team wait (-25% on 2
            // cores), and in-memory batches are quick to make.
            (false, true) => usize::from(self.prefetch.is_some_and(|p| p > 0)),
            (false, false) => 1,
        });
        Workers { workers, ahead: self.prefetch.unwrap_or(if cpu { 2 } else { 3 }).max(1) }
    }

    /// One line for the log: what this run uses.
    pub fn describe(&self) -> String {
        let on = |b: bool| if b { "on" } else { "off" };
        format!(
            "device {:?}, {:?}, {} threads, channels-last {}, fused BatchNorm {}, Winograd {}",
            self.device,
            self.precision,
            self.threads,
            on(self.channels_last),
            on(self.kernels.fused),
            on(self.kernels.winograd)
        )
    }
}
