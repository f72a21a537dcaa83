//! 3x3 stride-1 convolutions by Winograd's F(2x2, 3x3) (csrc/winograd.cpp): 16 products per
//! tile and channel pair instead of 36. For the frozen backbone with the folded bias, residual
//! add and ReLU in the same pass; for training, the forward and both gradients. fp32 on CPUs
//! with AVX-512 or AVX2 + FMA; the C++ side hands anything else to libtorch's conv2d, with the
//! same result.
use super::{ffi, maybe_tensor, opt_ptr, tensor};
use anyhow::Result;
use tch::Tensor;

/// The transformed weights G w G^T ([16, in, out]) of a 3x3 convolution's weights
/// `w` ([out, in, 3, 3]), or `None` where the kernel does not take them (no AVX2; not CPU
/// fp32 with as many channels in as out, 16 to 512, a power of 2).
pub fn transform_weights(w: &Tensor) -> Result<Option<Tensor>> {
    // SAFETY: a valid tensor handle; a fresh handle (or null: declined) out.
    maybe_tensor(&|| format!("Winograd weights of shape {:?}", w.size()), |out| unsafe { ffi::gcl_winograd_weight(w.as_ptr(), out) })
}

/// `relu(conv2d(x, w, bias, stride 1, padding 1) + residual)` (without the residual when
/// `None`, without ReLU when `relu` is false), by Winograd with `u` (from
/// `transform_weights(w)`) where it applies, else by libtorch. Inference only: no gradient.
pub fn conv3x3(x: &Tensor, w: &Tensor, u: Option<&Tensor>, bias: &Tensor, residual: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    // SAFETY: valid tensor handles (null for no u or residual); a fresh handle out.
    tensor(&|| format!("Winograd convolution on an input of shape {:?}", x.size()), |out| unsafe {
        ffi::gcl_winograd_conv(x.as_ptr(), w.as_ptr(), opt_ptr(u), bias.as_ptr(), opt_ptr(residual), relu as i32, out)
    })
}

/// `conv2d(x, w, no bias, stride 1, padding 1)` with autograd, for training: the forward, the
/// input's gradient and the weights' gradient by Winograd where it applies (weights
/// transformed on each call).
pub fn conv3x3_train(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    // SAFETY: valid tensor handles; a fresh handle out.
    tensor(&|| format!("Winograd convolution (training) on an input of shape {:?}", x.size()), |out| unsafe {
        ffi::gcl_winograd_conv_train(x.as_ptr(), w.as_ptr(), out)
    })
}
