// The one convention of gcl's C entry points (bound in src/kernels/mod.rs):
//   - every entry point is `extern "C" int gcl_...(inputs..., outputs...)`;
//   - it returns 0 on success and -1 when a C++ exception was thrown, whose message
//     gcl_last_error() then returns (per thread, until the next failure);
//   - a tensor result is written to an `at::Tensor** out` as a new heap handle that the
//     caller owns; an entry point that may decline (a kernel that does not apply) writes
//     null there and still returns 0, so "does not apply" and "failed" never look alike.
#pragma once

#include <ATen/ATen.h>

#include <exception>
#include <string>
#include <utility>

namespace gcl {

// The message of this thread's last failed call.
std::string& last_error();

// Runs `body`; a C++ exception becomes -1 with its message kept for gcl_last_error().
template <typename F>
int guarded(F&& body) noexcept {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    // libtorch's errors carry a C++ backtrace that says nothing to a user.
    last_error() = e.what_without_backtrace();
  } catch (const std::exception& e) {
    last_error() = e.what();
  } catch (...) {
    last_error() = "unknown C++ exception";
  }
  return -1;
}

// The vector instructions our kernels use: 2 = AVX-512, 1 = AVX2 + FMA, 0 = plain C++. What
// the CPU has, capped by GCL_CPU_ISA (avx512, avx2, none) or gcl_set_cpu_isa: so that the AVX2
// paths run, and are tested and timed, on AVX-512 machines too.
int isa();

// A tensor result handed to the caller as a new heap handle (Rust's Tensor takes it over).
inline void give(at::Tensor** out, at::Tensor t) { *out = new at::Tensor(std::move(t)); }

// An optional input: null stands for an undefined tensor.
inline at::Tensor opt(const at::Tensor* t) { return t ? *t : at::Tensor(); }

}  // namespace gcl
