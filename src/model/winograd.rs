//! 3x3 stride-1 convolutions by Winograd's F(2x2, 3x3) (csrc/winograd.cpp): 16 products per
//! tile and channel pair instead of 36. For the frozen backbone with the folded bias, residual
//! add and ReLU in the same pass; for training, the forward and the input's gradient (the
//! weights' gradient is libtorch's). fp32 on AVX-512 CPUs; anything else goes through
//! libtorch's conv2d with the same result.
use super::bn_act::owned;
use tch::Tensor;

extern "C" {
    fn gcl_winograd_conv(
        x: *const torch_sys::C_tensor,
        w: *const torch_sys::C_tensor,
        u: *const torch_sys::C_tensor,
        bias: *const torch_sys::C_tensor,
        residual: *const torch_sys::C_tensor,
        relu: i32,
    ) -> *mut torch_sys::C_tensor;
    fn gcl_winograd_conv_train(x: *const torch_sys::C_tensor, w: *const torch_sys::C_tensor) -> *mut torch_sys::C_tensor;
    fn gcl_winograd_weight(w: *const torch_sys::C_tensor) -> *mut torch_sys::C_tensor;
    fn gcl_winograd_error() -> *const std::os::raw::c_char;
}

/// The transformed weights G w G^T ([16, in, out]) of a 3x3 convolution's weights
/// `w` ([out, in, 3, 3]), or `None` where the Winograd path cannot take them (no AVX-512;
/// not CPU fp32 with 16, 32 or 64 channels in and out).
pub fn transform_weights(w: &Tensor) -> Option<Tensor> {
    // SAFETY: a valid tensor handle; the shim catches C++ exceptions and returns a fresh
    // handle owned by the new Tensor, or null.
    let p = unsafe { gcl_winograd_weight(w.as_ptr()) };
    // SAFETY: a fresh heap handle.
    (!p.is_null()).then(|| unsafe { Tensor::from_ptr(p) })
}

/// `relu(conv2d(x, w, bias, stride 1, padding 1) + residual)` (without the residual when
/// `None`, without ReLU when `relu` is false), by Winograd with `u` (from
/// `transform_weights(w)`) where it applies, else by libtorch. Inference only: no gradient.
pub fn conv3x3(x: &Tensor, w: &Tensor, u: Option<&Tensor>, bias: &Tensor, residual: Option<&Tensor>, relu: bool) -> Tensor {
    let u = u.map_or(std::ptr::null(), |u| u.as_ptr());
    let r = residual.map_or(std::ptr::null(), |r| r.as_ptr());
    // SAFETY: valid tensor handles (or null for u and the residual); see above.
    owned(unsafe { gcl_winograd_conv(x.as_ptr(), w.as_ptr(), u, bias.as_ptr(), r, relu as i32) }, "Winograd convolution", x, gcl_winograd_error)
}

/// `conv2d(x, w, no bias, stride 1, padding 1)` with autograd, for training: the forward and
/// the input's gradient by Winograd where it applies (weights transformed on each call), the
/// weights' gradient by libtorch's convolution backward.
pub fn conv3x3_train(x: &Tensor, w: &Tensor) -> Tensor {
    // SAFETY: valid tensor handles; see above.
    owned(unsafe { gcl_winograd_conv_train(x.as_ptr(), w.as_ptr()) }, "Winograd convolution", x, gcl_winograd_error)
}

