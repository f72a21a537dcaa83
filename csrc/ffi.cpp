// gcl_last_error(): the message behind the last -1 an entry point returned on this thread;
// gcl::isa(): the instruction set our kernels run with.
#include "ffi.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

namespace {

int cpu_level() {
  static const int level = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                   __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")
                               ? 2
                           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1
                                                                                              : 0;
  return level;
}

// The cap: GCL_CPU_ISA at start, or what gcl_set_cpu_isa last set.
std::atomic<int>& cap() {
  static std::atomic<int> c = [] {
    const char* e = std::getenv("GCL_CPU_ISA");
    if (!e) return 2;
    if (!std::strcmp(e, "avx2")) return 1;
    if (!std::strcmp(e, "none")) return 0;
    return 2;
  }();
  return c;
}

}  // namespace

int gcl::isa() { return std::min(cpu_level(), cap().load(std::memory_order_relaxed)); }

std::string& gcl::last_error() {
  thread_local std::string message;
  return message;
}

extern "C" const char* gcl_last_error() { return gcl::last_error().c_str(); }

// The instruction set our kernels use: min(what the CPU has, `level`) (2 AVX-512, 1 AVX2, 0 none);
// returns the level in effect.
extern "C" int gcl_set_cpu_isa(int level) {
  cap().store(level, std::memory_order_relaxed);
  return gcl::isa();
}
// The level in effect.
extern "C" int gcl_cpu_isa() { return gcl::isa(); }
