// Training-mode BatchNorm fused with the residual add and the ReLU that follow it in a
// ResNet block, forward and backward, for channels-last CPU tensors (fp32 or bf16).
//
// Why: on the CPU, after the convolutions, a training step's time goes to BatchNorm, ReLU,
// their backward passes and the residual add: five or six separate passes over every
// activation. Here the forward reads x twice and writes y once; the backward reads the
// gradient twice. Same arithmetic as libtorch's batch_norm + add + relu (batch statistics,
// biased variance for normalising, unbiased for the running estimate).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include "ffi.h"

#include <cstdint>
#include <vector>

struct Bf16 {
  uint16_t bits;
};
static_assert(sizeof(Bf16) == sizeof(at::BFloat16), "bf16 layout");

// One copy of the row loops per instruction set, picked at run time: the binary also runs
// on machines without AVX-512 (the GPU machine's host, CI).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2")
namespace k512 {
#include "bn_act_kernels.inc"
}
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace k256 {
#include "bn_act_kernels.inc"
}
#pragma GCC pop_options
namespace kbase {
#include "bn_act_kernels.inc"
}

namespace {

#define GCL_ISA(F, ...)                 \
  switch (gcl::isa()) {                      \
    case 2: k512::F(__VA_ARGS__); break; \
    case 1: k256::F(__VA_ARGS__); break; \
    default: kbase::F(__VA_ARGS__); break; \
  }

constexpr int64_t GRAIN = 256;

// Per-thread partial sums of two per-channel quantities over all rows, then their totals.
template <typename F>
std::pair<std::vector<double>, std::vector<double>> reduce_rows(int64_t M, int64_t C, const F& f) {
  const int nt = at::get_num_threads();
  std::vector<double> a(static_cast<size_t>(nt) * C, 0.0), b(static_cast<size_t>(nt) * C, 0.0);
  at::parallel_for(0, M, GRAIN, [&](int64_t m0, int64_t m1) {
    const int t = at::get_thread_num();
    f(m0, m1, a.data() + t * C, b.data() + t * C);
  });
  for (int t = 1; t < nt; ++t)
    for (int64_t c = 0; c < C; ++c) {
      a[c] += a[t * C + c];
      b[c] += b[t * C + c];
    }
  a.resize(C);
  b.resize(C);
  return {a, b};
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mut_ptr(at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// Calls f with a value of the element type of a fusable tensor: Bf16 or float.
template <typename F>
void by_dtype(bool bf16, const F& f) {
  if (bf16) {
    f(Bf16{});
  } else {
    f(float{});
  }
}

bool fusable(const at::Tensor& x) {
  return x.device().is_cpu() && x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && x.numel() > 0;
}

struct BnAct : public torch::autograd::Function<BnAct> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& residual,
                            const at::Tensor& weight, const at::Tensor& bias, at::Tensor running_mean,
                            at::Tensor running_var, double momentum, double eps, bool relu, bool has_residual) {
    const int64_t C = x.size(1), M = x.numel() / C;
    auto w = weight.to(at::kFloat).contiguous(), b = bias.to(at::kFloat).contiguous();
    const bool bf = x.scalar_type() == at::kBFloat16;
    at::Tensor r;
    if (has_residual) r = residual.to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);

    // Batch statistics.
    auto [sum, sq] = reduce_rows(M, C, [&](int64_t m0, int64_t m1, double* s, double* q) {
      by_dtype(bf, [&](auto t) {
        using T = decltype(t);
        GCL_ISA(stats, ptr<T>(x), C, m0, m1, s, q)
      });
    });
    auto mean = at::empty({C}, x.options().dtype(at::kFloat));
    auto invstd = at::empty({C}, x.options().dtype(at::kFloat));
    std::vector<float> scale(C), shift(C);
    const float* wp = w.data_ptr<float>();
    const float* bp = b.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) {
      const double mu = sum[c] / M;
      const double var = std::max(sq[c] / M - mu * mu, 0.0);
      const double is = 1.0 / std::sqrt(var + eps);
      mean.data_ptr<float>()[c] = static_cast<float>(mu);
      invstd.data_ptr<float>()[c] = static_cast<float>(is);
      scale[c] = static_cast<float>(wp[c] * is);
      shift[c] = static_cast<float>(bp[c] - mu * wp[c] * is);
      if (running_mean.defined()) {
        auto* rm = running_mean.data_ptr<float>();
        rm[c] = static_cast<float>((1.0 - momentum) * rm[c] + momentum * mu);
      }
      if (running_var.defined()) {
        auto* rv = running_var.data_ptr<float>();
        const double unbiased = M > 1 ? var * M / (M - 1) : var;
        rv[c] = static_cast<float>((1.0 - momentum) * rv[c] + momentum * unbiased);
      }
    }

    auto y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
    at::parallel_for(0, M, GRAIN, [&](int64_t m0, int64_t m1) {
      by_dtype(bf, [&](auto t) {
        using T = decltype(t);
        GCL_ISA(apply, ptr<T>(x), r.defined() ? ptr<T>(r) : nullptr, mut_ptr<T>(y), scale.data(), shift.data(), C,
                m0, m1, relu)
      });
    });
    ctx->save_for_backward({x, y, w, mean, invstd});
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["residual"] = has_residual;
    ctx->saved_data["residual_dtype"] = static_cast<int64_t>(residual.scalar_type());
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& y = saved[1];
    const auto& w = saved[2];
    const auto& mean = saved[3];
    const auto& invstd = saved[4];
    const bool relu = ctx->saved_data["relu"].toBool();
    const bool has_res = ctx->saved_data["residual"].toBool();
    const int64_t C = x.size(1), M = x.numel() / C;
    const bool bf = x.scalar_type() == at::kBFloat16;
    auto dy = grads[0].to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor dr;
    if (has_res) dr = at::empty_like(x, at::MemoryFormat::ChannelsLast);

    const float* mp = mean.data_ptr<float>();
    auto [sdz, sdzx] = reduce_rows(M, C, [&](int64_t m0, int64_t m1, double* a, double* b) {
      by_dtype(bf, [&](auto t) {
        using T = decltype(t);
        GCL_ISA(grad_sums, ptr<T>(dy), ptr<T>(y), ptr<T>(x), has_res ? mut_ptr<T>(dr) : nullptr, mp, C, m0, m1, relu,
                a, b)
      });
    });
    // dx = g * invstd * (dz - sum(dz)/M - (x - mean) * invstd^2 * sum(dz (x - mean))/M)
    std::vector<float> ga(C), gb(C), gc(C);
    auto dw = at::empty({C}, w.options()), db = at::empty({C}, w.options());
    const float* wp = w.data_ptr<float>();
    const float* ip = invstd.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) {
      const double is = ip[c], a = wp[c] * is, k = sdzx[c] / M * is * is;
      ga[c] = static_cast<float>(a);
      gb[c] = static_cast<float>(-a * k);
      gc[c] = static_cast<float>(a * (k * mp[c] - sdz[c] / M));
      dw.data_ptr<float>()[c] = static_cast<float>(sdzx[c] * is);
      db.data_ptr<float>()[c] = static_cast<float>(sdz[c]);
    }
    auto dx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
    at::parallel_for(0, M, GRAIN, [&](int64_t m0, int64_t m1) {
      by_dtype(bf, [&](auto t) {
        using T = decltype(t);
        GCL_ISA(grad_input, ptr<T>(dy), ptr<T>(y), ptr<T>(x), mut_ptr<T>(dx), ga.data(), gb.data(), gc.data(), C, m0,
                m1, relu)
      });
    });
    const auto wdt = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    if (has_res) dr = dr.to(static_cast<at::ScalarType>(ctx->saved_data["residual_dtype"].toInt()));
    return {dx, dr, dw.to(wdt), db.to(wdt), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor bn_act(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& bias,
                  const at::Tensor& running_mean, const at::Tensor& running_var, double momentum, double eps,
                  bool relu) {
  const bool same = !residual.defined() || (residual.sizes() == x.sizes());
  const bool buffers = (!running_mean.defined() || (running_mean.scalar_type() == at::kFloat &&
                                                     running_mean.is_contiguous() && running_mean.device().is_cpu())) &&
                       (!running_var.defined() || (running_var.scalar_type() == at::kFloat &&
                                                    running_var.is_contiguous() && running_var.device().is_cpu()));
  if (fusable(x) && same && buffers && weight.defined() && bias.defined()) {
    // Autograd's custom functions take no undefined inputs: without a residual, x stands in
    // for it (flagged absent; it gets no gradient through that slot).
    const bool has = residual.defined();
    return BnAct::apply(x, has ? residual : x, weight, bias, running_mean, running_var, momentum, eps, relu, has);
  }
  // Anything else (CUDA, other layouts): libtorch's own ops, same arithmetic.
  auto out = at::batch_norm(x, weight, bias, running_mean, running_var, true, momentum, eps, true);
  if (residual.defined()) out = out + residual;
  return relu ? at::relu(out) : out;
}

}  // namespace

extern "C" {
// Training-mode BatchNorm of x (batch statistics; running statistics updated in place),
// plus `residual` when not null, then ReLU when `relu` is non-zero (ffi.h's convention).
int gcl_bn_act(const at::Tensor* x, const at::Tensor* residual, const at::Tensor* weight, const at::Tensor* bias,
               const at::Tensor* running_mean, const at::Tensor* running_var, double momentum, double eps, int relu,
               at::Tensor** out) {
  return gcl::guarded([&] {
    gcl::give(out, bn_act(*x, gcl::opt(residual), *weight, *bias, gcl::opt(running_mean), gcl::opt(running_var),
                          momentum, eps, relu != 0));
  });
}
}
