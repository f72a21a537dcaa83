// Mixed precision (autocast) for any device type. tch exposes only CUDA's autocast; CPU
// autocast to bfloat16 (what `torch.autocast("cpu", torch.bfloat16)` does) needs these.
#include <ATen/autocast_mode.h>

static at::DeviceType device_type(int device) { return device == 0 ? at::kCPU : at::kCUDA; }

extern "C" {
// Sets autocast on `device` (0 = CPU, 1 = CUDA) with `dtype` (0 = bfloat16, 1 = float16);
// returns whether it was on before, or -1 on error.
int gcl_autocast_set(int device, int enabled, int dtype) {
  try {
    auto dev = device_type(device);
    bool prev = at::autocast::is_autocast_enabled(dev);
    at::autocast::set_autocast_dtype(dev, dtype == 0 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(dev, enabled != 0);
    return prev ? 1 : 0;
  } catch (...) {
    return -1;
  }
}
int gcl_autocast_increment_nesting() { return static_cast<int>(at::autocast::increment_nesting()); }
int gcl_autocast_decrement_nesting() { return static_cast<int>(at::autocast::decrement_nesting()); }
void gcl_autocast_clear_cache() { at::autocast::clear_cache(); }
}

// Channels-last (NHWC) memory format, which oneDNN's CPU convolutions prefer.
#include <ATen/ATen.h>
extern "C" {
// A channels-last copy of a 4-d tensor (a new handle the caller owns), or null on error.
at::Tensor* gcl_channels_last(const at::Tensor* t) {
  try {
    return new at::Tensor(t->contiguous(at::MemoryFormat::ChannelsLast));
  } catch (...) {
    return nullptr;
  }
}
// Re-lays a 4-d parameter out channels-last in place (same values, same autograd leaf).
int gcl_param_channels_last(at::Tensor* t) {
  try {
    t->set_data(t->contiguous(at::MemoryFormat::ChannelsLast));
    return 0;
  } catch (...) {
    return -1;
  }
}
}
