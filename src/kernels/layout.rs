//! Channels-last (NHWC) memory layout, which oneDNN's CPU convolutions run fastest.
use super::{check, ffi, tensor};
use anyhow::Result;
use tch::Tensor;

/// A channels-last copy of a 4-d tensor.
pub fn channels_last(t: &Tensor) -> Result<Tensor> {
    // SAFETY: a valid tensor handle in, a fresh handle out (see `tensor`).
    tensor(&|| format!("channels-last copy of a tensor of shape {:?}", t.size()), |out| unsafe { ffi::gcl_channels_last(t.as_ptr(), out) })
}

/// Re-lays 4-d parameters out channels-last in place (same values, same autograd leaves).
pub fn params_channels_last(params: &mut [Tensor]) -> Result<()> {
    for p in params.iter_mut().filter(|p| p.dim() == 4) {
        // SAFETY: a valid, uniquely borrowed tensor handle; the shim only re-seats its data.
        let rc = unsafe { ffi::gcl_param_channels_last(p.as_mut_ptr()) };
        check(rc, &|| format!("channels-last layout of a parameter of shape {:?}", p.size()))?;
    }
    Ok(())
}

/// Makes `g` (of `p`'s shape and strides: a view of one flat buffer) the gradient that
/// backward accumulates `p`'s into, in place.
pub fn set_grad(p: &mut Tensor, g: &Tensor) -> Result<()> {
    // SAFETY: valid tensor handles; the shim only re-seats p's gradient.
    let rc = unsafe { ffi::gcl_set_grad(p.as_mut_ptr(), g.as_ptr()) };
    check(rc, &|| format!("the gradient of a parameter of shape {:?}", p.size()))
}
