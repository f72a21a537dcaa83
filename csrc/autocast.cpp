// Mixed precision (autocast) on the CPU and CUDA, as `torch.autocast(device, dtype)` does;
// tch exposes only CUDA's. And the channels-last (NHWC) layout that oneDNN's CPU
// convolutions prefer. Entry points follow ffi.h.
#include <ATen/autocast_mode.h>

#include "ffi.h"

static at::DeviceType device_type(int device) { return device == 0 ? at::kCPU : at::kCUDA; }

extern "C" {
// Enters an autocast region on `device` (0 = CPU, 1 = CUDA) in bfloat16; `*was_enabled`
// receives whether autocast was on before (for gcl_autocast_exit).
int gcl_autocast_enter(int device, int* was_enabled) {
  return gcl::guarded([&] {
    auto dev = device_type(device);
    *was_enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
    at::autocast::set_autocast_dtype(dev, at::kBFloat16);
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::increment_nesting();
  });
}

// Leaves the region: the cast cache is cleared when the outermost region ends, and autocast
// is set back to `was_enabled`.
int gcl_autocast_exit(int device, int was_enabled) {
  return gcl::guarded([&] {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_type(device), was_enabled != 0);
  });
}

// A channels-last copy of a 4-d tensor.
int gcl_channels_last(const at::Tensor* t, at::Tensor** out) {
  return gcl::guarded([&] { gcl::give(out, t->contiguous(at::MemoryFormat::ChannelsLast)); });
}

// Re-lays a 4-d parameter out channels-last in place (same values, same autograd leaf).
int gcl_param_channels_last(at::Tensor* t) {
  return gcl::guarded([&] { t->set_data(t->contiguous(at::MemoryFormat::ChannelsLast)); });
}

// Makes `g` (a tensor of t's shape and strides, e.g. a view of one flat buffer) t's .grad:
// backward then adds each gradient into it in place, as it is computed.
int gcl_set_grad(at::Tensor* t, const at::Tensor* g) {
  return gcl::guarded([&] {
    TORCH_CHECK(t->sizes() == g->sizes() && t->strides() == g->strides(), "set_grad: the gradient's shape or strides differ from the parameter's");
    t->mutable_grad() = *g;
  });
}
}
