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
