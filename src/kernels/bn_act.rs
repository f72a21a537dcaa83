//! Training-mode BatchNorm fused with the residual add and ReLU after it (csrc/bn_act.cpp):
//! one C++ autograd op instead of three libtorch ops and their backward passes. For
//! channels-last CPU tensors (fp32, bf16); the C++ side hands anything else to libtorch's ops.
use super::{ffi, opt_ptr, tensor};
use anyhow::Result;
use tch::{nn, Tensor};

/// BatchNorm settings of every network here (PyTorch's defaults), set where the layers are
/// made: tch keeps a layer's config private.
pub const BN_MOMENTUM: f64 = 0.1;
pub const BN_EPS: f64 = 1e-5;

/// `relu(bn(x) + residual)` (without `residual` when `None`, without ReLU when `relu` is
/// false) with batch statistics, updating `bn`'s running statistics, as
/// `x.apply_t(bn, true)` followed by the add and the ReLU would.
pub fn bn_act(x: &Tensor, residual: Option<&Tensor>, bn: &nn::BatchNorm, relu: bool) -> Result<Tensor> {
    let (Some(w), Some(b)) = (&bn.ws, &bn.bs) else {
        // Not affine: libtorch's ops (no network here builds one).
        let mut out = x.apply_t(bn, true);
        if let Some(r) = residual {
            out = out + r;
        }
        return Ok(if relu { out.relu() } else { out });
    };
    // SAFETY: valid tensor handles (null for no residual); a fresh handle out.
    tensor(&|| format!("fused BatchNorm on an input of shape {:?}", x.size()), |out| unsafe {
        ffi::gcl_bn_act(
            x.as_ptr(),
            opt_ptr(residual),
            w.as_ptr(),
            b.as_ptr(),
            bn.running_mean.as_ptr(),
            bn.running_var.as_ptr(),
            BN_MOMENTUM,
            BN_EPS,
            relu as i32,
            out,
        )
    })
}
