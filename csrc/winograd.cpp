// 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3), for fp32 CPU tensors
// (channels-last in and out): the frozen backbone's (stage 2, evaluation), with the folded
// BatchNorm's bias, the residual add and the ReLU that follow applied on the way out; and the
// training convolutions' forward, input gradient and weight gradient (stage 1).
//
// Why: libtorch's convolutions (oneDNN's direct kernels) already run near the cores' fp32 peak,
// so the only way to faster convolutions is fewer multiplications. F(2x2, 3x3) computes each
// 2x2 output tile from a 4x4 input tile with 16 products per input and output channel instead
// of 36 (2.25x fewer); its transforms use only 0, +-1 and +-1/2, so the result equals the
// direct convolution to fp32 rounding.
//
// Per block of tiles: input transform V = B^T d B (adds only) into V[16][tiles][Cin]; 16
// small matrix products M[p] = V[p] U[p], U = G g G^T per layer as [16][Cin][Cout]; output
// transform Y = A^T M A (+ bias, + residual, ReLU). AVX-512 or AVX2 + FMA (csrc/
// winograd_kernels.inc, once per ISA); anything else (an older CPU, another dtype, shape,
// autocast) goes to libtorch's conv2d.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <immintrin.h>
#include <torch/autograd.h>

#include "ffi.h"

#include <type_traits>
#include <vector>

namespace {
// The padding: as many zeros as the widest layer has channels (512).
alignas(64) const float kZeros[512] = {};
}  // namespace

// One copy of the kernels per instruction set, chosen per call (gcl::isa()): AVX-512 where the
// CPU has it, else AVX2 + FMA.
// GCC 12's own _mm512_max_ps starts from _mm512_undefined_ps() and warns about it when
// inlined (GCC bug 105593); nothing of ours is uninitialised.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma,avx2")
namespace k512 {
using V = __m512;
constexpr int L = 16;
inline V load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, V v) { _mm512_storeu_ps(p, v); }
inline V add(V a, V b) { return _mm512_add_ps(a, b); }
inline V sub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V set1(float a) { return _mm512_set1_ps(a); }
inline V zero() { return _mm512_setzero_ps(); }
inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
// 32 registers: R x J accumulators, J weight vectors and the broadcast; all columns at once
// up to 64 channels, blocks of 64 beyond.
constexpr int rows_per_block(int C) { return C == 16 ? 14 : C == 32 ? 12 : 6; }
constexpr int cols_per_block(int C) { return C <= 64 ? C / L : 4; }
#include "winograd_kernels.inc"
}  // namespace k512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace k256 {
using V = __m256;
constexpr int L = 8;
inline V load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, V v) { _mm256_storeu_ps(p, v); }
inline V add(V a, V b) { return _mm256_add_ps(a, b); }
inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V set1(float a) { return _mm256_set1_ps(a); }
inline V zero() { return _mm256_setzero_ps(); }
inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }
// 16 registers: 6 rows x 2 vectors of accumulators, 2 weight vectors, the broadcast.
constexpr int rows_per_block(int) { return 6; }
constexpr int cols_per_block(int) { return 2; }
#include "winograd_kernels.inc"
}  // namespace k256
#pragma GCC pop_options
#pragma GCC diagnostic pop
namespace {

// f(std::integral_constant<int, C>) for the widths the kernels are compiled for (16 to 512,
// powers of 2; weight_fits admits no other).
template <typename F>
void by_width(int64_t C, F&& f) {
  switch (C) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    case 256: return f(std::integral_constant<int, 256>{});
    default: return f(std::integral_constant<int, 512>{});
  }
}

// Whether 3x3 weights w fit the kernel: CPU fp32, as many channels in as out, 16 to 512 (a
// power of 2: the CIFAR ResNets' 16/32/64, the ImageNet ones' 64 to 512), on a CPU with AVX2 +
// FMA at least.
bool weight_fits(const at::Tensor& w) {
  if (gcl::isa() < 1 || !w.device().is_cpu() || w.scalar_type() != at::kFloat) return false;
  if (w.dim() != 4 || w.size(2) != 3 || w.size(3) != 3 || w.size(0) != w.size(1)) return false;
  const int64_t C = w.size(0);
  return C == 16 || C == 32 || C == 64 || C == 128 || C == 256 || C == 512;
}

// Whether conv(x, w) (3x3, stride 1, padding 1) can take the kernel: weights that fit, a CPU fp32
// input with their channels, no autocast (bf16 runs keep oneDNN's bf16 convolutions).
bool fits(const at::Tensor& x, const at::Tensor& w) {
  if (!weight_fits(w) || at::autocast::is_autocast_enabled(at::kCPU)) return false;
  return x.device().is_cpu() && x.dim() == 4 && x.scalar_type() == at::kFloat && x.numel() > 0 &&
         x.size(1) == w.size(1);
}

// G (x) G, [16][9]: U[p] = sum_k (G (x) G)[p][k] g[k] maps a 3x3 kernel to its 16 transformed
// values (so all pairs' transforms are one matrix product), and its transpose maps dU back to dg.
at::Tensor kron_g() {
  static const float G[4][3] = {{1.f, 0.f, 0.f}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0.f, 0.f, 1.f}};
  auto kron = at::empty({16, 9}, at::kFloat);
  float* kp = kron.data_ptr<float>();
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j)
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) kp[(i * 4 + j) * 9 + a * 3 + b] = G[i][a] * G[j][b];
  return kron;
}

// U = G g G^T for every (out, in) channel pair, as [16][Cin][Cout] (tile point major); a
// training step transforms every layer's weights twice.
at::Tensor winograd_weight(const at::Tensor& w) {
  const int64_t co_n = w.size(0), ci_n = w.size(1);
  // [9][Cin][Cout]: each tap's weights in U's order (a cheap copy from channels-last weights
  // and from their transpose, the input gradient's).
  auto g = w.detach().to(at::kFloat).permute({2, 3, 1, 0}).contiguous().view({9, ci_n * co_n});
  return at::mm(kron_g(), g).view({16, ci_n, co_n});
}

// The kernel proper: y = relu?(conv(x) + bias + residual?), channels-last out.
at::Tensor run(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias, const at::Tensor& residual,
               bool relu) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto uc = u.contiguous();
  at::Tensor bc;
  if (bias.defined()) bc = bias.to(at::kFloat).contiguous();
  at::Tensor rc;
  if (residual.defined()) rc = residual.contiguous(at::MemoryFormat::ChannelsLast);
  auto y = at::empty({N, C, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t tiles = N * ((H + 1) / 2) * ((W + 1) / 2);
  const float* xp = xc.data_ptr<float>();
  const float* up = uc.data_ptr<float>();
  const float* bp = bc.defined() ? bc.data_ptr<float>() : kZeros;  // no bias: C <= 512 zeros
  const float* rp = rc.defined() ? rc.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // Grain: enough tiles per thread to fill several blocks.
  const bool wide = gcl::isa() >= 2;
  at::parallel_for(0, tiles, 4096 / C, [&](int64_t t0, int64_t t1) {
    by_width(C, [&](auto c) {
      constexpr int K = decltype(c)::value;
      wide ? k512::conv_tiles<K>(xp, up, bp, rp, yp, H, W, relu, t0, t1)
           : k256::conv_tiles<K>(xp, up, bp, rp, yp, H, W, relu, t0, t1);
    });
  });
  return y;
}

// The weights' gradient of conv(x, w) (3x3, stride 1, padding 1, C in and out) for the output
// gradient dy: per thread dU = sum over its tiles of V^T dM, summed, then dg = G^T dU G.
at::Tensor wgrad(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& w) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto gc = dy.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t tiles = N * ((H + 1) / 2) * ((W + 1) / 2);
  const int nt = at::get_num_threads();
  auto du = at::zeros({nt, 16, C, C}, x.options());
  const float* xp = xc.data_ptr<float>();
  const float* gp = gc.data_ptr<float>();
  float* dp = du.data_ptr<float>();
  const bool wide = gcl::isa() >= 2;
  at::parallel_for(0, tiles, 4096 / C, [&](int64_t t0, int64_t t1) {
    float* d = dp + at::get_thread_num() * 16 * C * C;
    by_width(C, [&](auto c) {
      constexpr int K = decltype(c)::value;
      wide ? k512::wgrad_tiles<K>(xp, gp, d, H, W, t0, t1) : k256::wgrad_tiles<K>(xp, gp, d, H, W, t0, t1);
    });
  });
  // dg[a][b][ci][co] = sum_p (G (x) G)[p][ab] dU[p][ci][co], as [co][ci][a][b].
  auto dg = at::mm(kron_g().t(), du.sum(0).view({16, C * C})).view({3, 3, C, C}).permute({3, 2, 0, 1});
  return dg.contiguous(w.suggest_memory_format());
}

// Inference (frozen backbone): transformed weights given, bias, residual and ReLU fused.
at::Tensor winograd_conv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& u, const at::Tensor& bias,
                         const at::Tensor& residual, bool relu) {
  const int64_t C = x.dim() == 4 ? x.size(1) : 0;
  const bool ok = fits(x, w) && !x.requires_grad() && !w.requires_grad() && u.defined() &&
                  u.scalar_type() == at::kFloat && u.sizes() == at::IntArrayRef({16, C, C}) &&
                  (!residual.defined() || (residual.sizes() == x.sizes() && residual.scalar_type() == at::kFloat));
  if (!ok) {
    auto out = at::conv2d(x, w, bias, 1, 1);
    if (residual.defined()) out.add_(residual);
    return relu ? out.relu_() : out;
  }
  return run(x, u, bias, residual, relu);
}

// Training: the forward, the input's gradient and (where it pays) the weights' gradient by
// Winograd (weights transformed on each call, since they change every step).
struct WinogradConv : public torch::autograd::Function<WinogradConv> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    ctx->save_for_backward({x, w});
    return run(x, winograd_weight(w), at::Tensor(), at::Tensor(), false);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    // The input's gradient is itself a 3x3 stride-1 convolution: of the output's gradient with
    // the weights rotated by 180 degrees and in/out swapped.
    at::Tensor dx;
    if (ctx->needs_input_grad(0))
      dx = run(grads[0], winograd_weight(saved[1].flip({2, 3}).transpose(0, 1)), at::Tensor(), at::Tensor(), false);
    at::Tensor dw;
    if (ctx->needs_input_grad(1)) {
      // The weights' gradient by Winograd where it pays (gcl bench, stage 1 of ResNet-32, A/B
      // alternating): +15% on AVX2; on AVX-512 -3% for 16 and 32 channels, whose transforms
      // cost what the products save, so libtorch's there; 64 channels and more gain there too.
      if (gcl::isa() < 2 || saved[1].size(0) >= 64) {
        dw = wgrad(saved[0], grads[0], saved[1]);
      } else {
        const std::array<bool, 3> mask = {false, true, false};
        dw = std::get<1>(at::convolution_backward(grads[0], saved[0], saved[1], std::nullopt, {1, 1}, {1, 1}, {1, 1},
                                                  false, {0, 0}, 1, mask));
      }
    }
    return {dx, dw};
  }
};

at::Tensor winograd_conv_train(const at::Tensor& x, const at::Tensor& w) {
  // 512 channels (ResNet-50's 7x7 layer4) gain 1.2x in the products, which transforming the
  // weights twice a step (about 2 ms each) takes back: libtorch's there.
  if (!fits(x, w) || w.size(0) > 256) return at::conv2d(x, w, {}, 1, 1);
  return WinogradConv::apply(x, w);
}

}  // namespace

extern "C" {
// relu(conv3x3(x, w, bias, stride 1, padding 1) + residual) (bias and residual may be null),
// by Winograd F(2x2, 3x3) with the transformed weights u when it applies, else libtorch's
// conv2d. Inference only.
int gcl_winograd_conv(const at::Tensor* x, const at::Tensor* w, const at::Tensor* u, const at::Tensor* bias,
                      const at::Tensor* residual, int relu, at::Tensor** out) {
  return gcl::guarded([&] {
    gcl::give(out, winograd_conv(*x, *w, gcl::opt(u), gcl::opt(bias), gcl::opt(residual), relu != 0));
  });
}
// conv3x3(x, w, stride 1, padding 1, no bias) with autograd: forward and both gradients by
// Winograd where it applies, else libtorch's conv2d.
int gcl_winograd_conv_train(const at::Tensor* x, const at::Tensor* w, at::Tensor** out) {
  return gcl::guarded([&] { gcl::give(out, winograd_conv_train(*x, *w)); });
}
// The transformed weights of a 3x3 convolution for gcl_winograd_conv; null in *out where the
// kernel does not take these weights (no AVX2; not CPU fp32 with as many channels in as out,
// 16 to 512): the convolution then stays libtorch's.
int gcl_winograd_weight(const at::Tensor* w, at::Tensor** out) {
  return gcl::guarded([&] {
    *out = nullptr;
    if (weight_fits(*w)) gcl::give(out, winograd_weight(*w));
  });
}
}
