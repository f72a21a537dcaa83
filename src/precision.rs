//! Numeric precision of training: fp32, or bf16 autocast (as `torch.autocast` does:
//! matrix products and convolutions in bfloat16, fp32 weights, reductions in fp32).
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

extern "C" {
    fn gcl_autocast_set(device: i32, enabled: i32, dtype: i32) -> i32;
    fn gcl_autocast_increment_nesting() -> i32;
    fn gcl_autocast_decrement_nesting() -> i32;
    fn gcl_autocast_clear_cache();
}

/// Autocast on `device` while alive (thread-local, like PyTorch's).
pub struct AutocastGuard {
    device: i32,
    previous: bool,
    active: bool,
}

impl AutocastGuard {
    pub fn new(precision: Precision, device: Device) -> Self {
        let dev = if device.is_cuda() { 1 } else { 0 };
        if precision == Precision::Fp32 {
            return Self { device: dev, previous: false, active: false };
        }
        // SAFETY: plain C functions of csrc/autocast.cpp; they catch C++ exceptions.
        let prev = unsafe { gcl_autocast_set(dev, 1, 0) };
        unsafe { gcl_autocast_increment_nesting() };
        Self { device: dev, previous: prev == 1, active: true }
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        if self.active {
            // SAFETY: as above.
            unsafe {
                if gcl_autocast_decrement_nesting() == 0 {
                    gcl_autocast_clear_cache();
                }
                gcl_autocast_set(self.device, self.previous as i32, 0);
            }
        }
    }
}

extern "C" {
    fn gcl_channels_last(t: *const torch_sys::C_tensor) -> *mut torch_sys::C_tensor;
    fn gcl_param_channels_last(t: *mut torch_sys::C_tensor) -> i32;
}

/// A channels-last (NHWC) copy of a 4-d tensor.
pub fn channels_last(t: &tch::Tensor) -> tch::Tensor {
    // SAFETY: the shim returns a fresh heap handle (owned by the new Tensor) or null.
    let p = unsafe { gcl_channels_last(t.as_ptr()) };
    assert!(!p.is_null(), "channels-last conversion failed for a tensor of shape {:?}", t.size());
    unsafe { tch::Tensor::from_ptr(p) }
}

/// Re-lays 4-d parameters out channels-last in place.
pub fn params_channels_last(params: &mut [tch::Tensor]) {
    for p in params.iter_mut().filter(|p| p.dim() == 4) {
        // SAFETY: a valid tensor handle; the shim catches C++ exceptions.
        let rc = unsafe { gcl_param_channels_last(p.as_mut_ptr()) };
        assert_eq!(rc, 0, "channels-last conversion failed");
    }
}
