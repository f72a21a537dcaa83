//! Numeric precision of training: fp32, or bf16 autocast (as `torch.autocast` does: matrix
//! products and convolutions in bfloat16, fp32 weights, reductions in fp32).
use super::{check, ffi};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    #[default]
    Fp32,
    /// Autocast to bfloat16 (CPU: AVX-512 BF16 / AMX where present; CUDA: tensor cores).
    Bf16,
}

/// Autocast on `device` while alive (thread-local, like PyTorch's).
pub struct AutocastGuard {
    device: i32,
    was_enabled: i32,
    active: bool,
}

impl AutocastGuard {
    pub fn new(precision: Precision, device: Device) -> Result<Self> {
        let dev = if device.is_cuda() { 1 } else { 0 };
        if precision == Precision::Fp32 {
            return Ok(Self { device: dev, was_enabled: 0, active: false });
        }
        let mut was_enabled = 0;
        // SAFETY: a plain C function (csrc/autocast.cpp) writing one int through a valid pointer.
        check(unsafe { ffi::gcl_autocast_enter(dev, &mut was_enabled) }, &|| "entering bf16 autocast".into())?;
        Ok(Self { device: dev, was_enabled, active: true })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        if self.active {
            // SAFETY: a plain C function taking two ints.
            let rc = unsafe { ffi::gcl_autocast_exit(self.device, self.was_enabled) };
            // A destructor cannot return the error: say it, since autocast may now stay on.
            if let Err(e) = check(rc, &|| "leaving bf16 autocast".into()) {
                eprintln!("gcl: warning: {e:#}");
            }
        }
    }
}
