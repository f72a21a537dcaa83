//! Training-mode BatchNorm fused with the residual add and ReLU after it (csrc/bn_act.cpp):
//! one C++ autograd op instead of three libtorch ops and their backward passes. Used for
//! channels-last CPU training; anything else goes through libtorch's own ops.
use tch::{nn, Tensor};

extern "C" {
    fn gcl_bn_act(
        x: *const torch_sys::C_tensor,
        residual: *const torch_sys::C_tensor,
        weight: *const torch_sys::C_tensor,
        bias: *const torch_sys::C_tensor,
        running_mean: *const torch_sys::C_tensor,
        running_var: *const torch_sys::C_tensor,
        momentum: f64,
        eps: f64,
        relu: i32,
    ) -> *mut torch_sys::C_tensor;
    fn gcl_last_error() -> *const std::os::raw::c_char;
}

/// The tensor behind a handle returned by one of our C++ shims, or a panic with the message
/// that the shim's `error` function holds.
pub(crate) fn owned(p: *mut torch_sys::C_tensor, what: &str, x: &Tensor, error: unsafe extern "C" fn() -> *const std::os::raw::c_char) -> Tensor {
    if p.is_null() {
        // SAFETY: a NUL-terminated thread-local string owned by the shim.
        let msg = unsafe { std::ffi::CStr::from_ptr(error()) }.to_string_lossy().into_owned();
        panic!("{what} failed for an input of shape {:?}: {msg}", x.size());
    }
    // SAFETY: a fresh heap handle, owned from here on by the new Tensor.
    unsafe { Tensor::from_ptr(p) }
}

/// BatchNorm settings of every network here (PyTorch's defaults), set where the layers are
/// made (`resnet::bn`): tch keeps a layer's config private.
pub const BN_MOMENTUM: f64 = 0.1;
pub const BN_EPS: f64 = 1e-5;

/// `relu(bn(x) + residual)` (without `residual` when `None`, without ReLU when `relu` is
/// false) with batch statistics, updating `bn`'s running statistics, as
/// `x.apply_t(bn, true)` followed by the add and the ReLU would.
pub fn bn_act(x: &Tensor, residual: Option<&Tensor>, bn: &nn::BatchNorm, relu: bool) -> Tensor {
    let (w, b) = match (&bn.ws, &bn.bs) {
        (Some(w), Some(b)) => (w, b),
        _ => {
            // Not affine: libtorch's ops (no network here builds one).
            let mut out = x.apply_t(bn, true);
            if let Some(r) = residual {
                out = out + r;
            }
            return if relu { out.relu() } else { out };
        }
    };
    let r = residual.map_or(std::ptr::null(), |r| r.as_ptr());
    // SAFETY: valid tensor handles (or null for the residual); the shim catches C++
    // exceptions and returns a fresh handle owned by the new Tensor, or null.
    let p = unsafe {
        gcl_bn_act(
            x.as_ptr(),
            r,
            w.as_ptr(),
            b.as_ptr(),
            bn.running_mean.as_ptr(),
            bn.running_var.as_ptr(),
            BN_MOMENTUM,
            BN_EPS,
            relu as i32,
        )
    };
    owned(p, "fused BatchNorm", x, gcl_last_error)
}
