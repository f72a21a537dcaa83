// 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3), for fp32 CPU tensors
// (channels-last in and out): the frozen backbone's (stage 2, evaluation), with the folded
// BatchNorm's bias, the residual add and the ReLU that follow applied on the way out; and the
// training convolutions' forward and input gradient (stage 1); their weight gradient stays
// libtorch's.
//
// Why: libtorch's convolutions (oneDNN's direct kernels) already run near the cores' fp32 peak,
// so the only way to faster convolutions is fewer multiplications. F(2x2, 3x3) computes each
// 2x2 output tile from a 4x4 input tile with 16 products per input and output channel instead
// of 36 (2.25x fewer); its transforms use only 0, +-1 and +-1/2, so the result equals the
// direct convolution to fp32 rounding.
//
// Per block of tiles: input transform V = B^T d B (adds only) into V[16][tiles][Cin]; 16
// small matrix products M[p] = V[p] U[p], U = G g G^T per layer as [16][Cin][Cout]; output
// transform Y = A^T M A (+ bias, + residual, ReLU). AVX-512 only; anything else (another ISA,
// dtype, shape, autocast) goes to libtorch's conv2d.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <immintrin.h>
#include <torch/autograd.h>

#include "ffi.h"

#include <vector>

namespace {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma,avx2")
// GCC 12's own _mm512_max_ps starts from _mm512_undefined_ps() and warns about it when
// inlined (GCC bug 105593); nothing of ours is uninitialised.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// The padding: as many zeros as the widest layer has channels (64).
alignas(64) const float kZeros[64] = {};

// Input transform of one tile for all C channels: rows/cols are 4 pointers each to the
// tile's input pixels' channel vectors (kZeros where the tile reaches into the padding).
template <int C>
inline void input_tile(const float* const* px, float* v, int64_t pstride) {
  for (int j = 0; j < C / 16; ++j) {
    __m512 d[4][4];
    for (int i = 0; i < 4; ++i)
      for (int k = 0; k < 4; ++k) d[i][k] = _mm512_loadu_ps(px[i * 4 + k] + j * 16);
    __m512 t[4][4];
    for (int k = 0; k < 4; ++k) {  // B^T d: over rows
      t[0][k] = _mm512_sub_ps(d[0][k], d[2][k]);
      t[1][k] = _mm512_add_ps(d[1][k], d[2][k]);
      t[2][k] = _mm512_sub_ps(d[2][k], d[1][k]);
      t[3][k] = _mm512_sub_ps(d[1][k], d[3][k]);
    }
    for (int i = 0; i < 4; ++i) {  // (B^T d) B: over columns
      float* o = v + (i * 4) * pstride + j * 16;
      _mm512_storeu_ps(o, _mm512_sub_ps(t[i][0], t[i][2]));
      _mm512_storeu_ps(o + pstride, _mm512_add_ps(t[i][1], t[i][2]));
      _mm512_storeu_ps(o + 2 * pstride, _mm512_sub_ps(t[i][2], t[i][1]));
      _mm512_storeu_ps(o + 3 * pstride, _mm512_sub_ps(t[i][1], t[i][3]));
    }
  }
}

// R rows of M[p] = V[p] U[p] (R tiles x Cout), accumulators in registers.
template <int C, int R>
inline void gemm_rows(const float* vp, const float* up, float* mp) {
  constexpr int J = C / 16;
  __m512 acc[R][J];
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 64
    for (int j = 0; j < J; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int k = 0; k < C; ++k) {
    __m512 u[J];
#pragma GCC unroll 64
    for (int j = 0; j < J; ++j) u[j] = _mm512_loadu_ps(up + k * C + j * 16);
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(vp[r * C + k]);
#pragma GCC unroll 64
      for (int j = 0; j < J; ++j) acc[r][j] = _mm512_fmadd_ps(a, u[j], acc[r][j]);
    }
  }
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 64
    for (int j = 0; j < J; ++j) _mm512_storeu_ps(mp + r * C + j * 16, acc[r][j]);
}

// Rows per register block: R x C/16 accumulators plus C/16 weight vectors within 32 registers.
template <int C>
constexpr int rows_per_block() {
  return C == 16 ? 14 : C == 32 ? 12 : 6;
}

// The last nb % R rows in one register block of their own (a one-row loop would be one
// latency-bound chain of FMAs).
template <int C, int R>
inline void gemm_tail(const float* vp, const float* up, float* mp, int rows) {
  if constexpr (R > 0) {
    if (rows == R) return gemm_rows<C, R>(vp, up, mp);
    gemm_tail<C, R - 1>(vp, up, mp, rows);
  }
}

template <int C>
void gemm(const float* vp, const float* up, float* mp, int nb) {
  constexpr int R = rows_per_block<C>();
  int b = 0;
  for (; b + R <= nb; b += R) gemm_rows<C, R>(vp + b * C, up, mp + b * C);
  if (b < nb) gemm_tail<C, R - 1>(vp + b * C, up, mp + b * C, nb - b);
}

// Output transform of one tile: Y = A^T M A, + bias (+ residual), ReLU, stored where the
// 2x2 tile lies inside the output (odd sizes cut the last row/column of tiles).
template <int C>
inline void output_tile(const float* m, int64_t pstride, const float* bias, float* const* out, const float* const* res,
                        bool relu) {
  const __m512 zero = _mm512_setzero_ps();
  for (int j = 0; j < C / 16; ++j) {
    __m512 s[2][4];
    for (int k = 0; k < 4; ++k) {  // A^T M: over rows
      const __m512 m0 = _mm512_loadu_ps(m + (0 * 4 + k) * pstride + j * 16);
      const __m512 m1 = _mm512_loadu_ps(m + (1 * 4 + k) * pstride + j * 16);
      const __m512 m2 = _mm512_loadu_ps(m + (2 * 4 + k) * pstride + j * 16);
      const __m512 m3 = _mm512_loadu_ps(m + (3 * 4 + k) * pstride + j * 16);
      s[0][k] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
      s[1][k] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
    }
    const __m512 bv = _mm512_loadu_ps(bias + j * 16);
    for (int i = 0; i < 2; ++i) {
      __m512 y[2];
      y[0] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]), bv);
      y[1] = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]), bv);
      for (int k = 0; k < 2; ++k) {
        float* o = out[i * 2 + k];
        if (!o) continue;
        __m512 v = y[k];
        if (res) v = _mm512_add_ps(v, _mm512_loadu_ps(res[i * 2 + k] + j * 16));
        // max(0, v) returns v when v is NaN (as libtorch's ReLU lets NaN through).
        if (relu) v = _mm512_max_ps(zero, v);
        _mm512_storeu_ps(o + j * 16, v);
      }
    }
  }
}

// The whole convolution over tiles [t0, t1) of N images (H x W, C channels, NHWC).
template <int C>
void conv_tiles(const float* x, const float* u, const float* bias, const float* res, float* y, int64_t H, int64_t W,
                bool relu, int64_t t0, int64_t t1) {
  // Tiles per block: a multiple of the register block, V and M blocks of about 64 KiB each.
  // (256 to 4096 floats per tile point measured the same.)
  constexpr int64_t BT = rows_per_block<C>() * (1024 / C / rows_per_block<C>() + 1);
  const int64_t th = (H + 1) / 2, tw = (W + 1) / 2;
  std::vector<float> vbuf(16 * BT * C), mbuf(16 * BT * C);
  const int64_t pstride = BT * C;
  // Tile t is (image n, tile row ty, tile column tx); counters instead of divisions per tile.
  struct Pos {
    int64_t n, ty, tx;
  };
  auto next = [&](Pos& q) {
    if (++q.tx == tw) {
      q.tx = 0;
      if (++q.ty == th) {
        q.ty = 0;
        ++q.n;
      }
    }
  };
  Pos pos{t0 / (th * tw), (t0 / tw) % th, t0 % tw};
  for (int64_t b0 = t0; b0 < t1; b0 += BT) {
    const int nb = static_cast<int>(std::min(BT, t1 - b0));
    const Pos first = pos;
    for (int b = 0; b < nb; ++b, next(pos)) {
      const int64_t n = pos.n, ty = pos.ty, tx = pos.tx;
      const float* px[16];
      for (int i = 0; i < 4; ++i)
        for (int k = 0; k < 4; ++k) {
          const int64_t r = 2 * ty - 1 + i, c = 2 * tx - 1 + k;
          px[i * 4 + k] = (r < 0 || r >= H || c < 0 || c >= W) ? kZeros : x + ((n * H + r) * W + c) * C;
        }
      input_tile<C>(px, vbuf.data() + b * C, pstride);
    }
    for (int p = 0; p < 16; ++p) gemm<C>(vbuf.data() + p * pstride, u + p * C * C, mbuf.data() + p * pstride, nb);
    Pos q = first;
    for (int b = 0; b < nb; ++b, next(q)) {
      const int64_t n = q.n, ty = q.ty, tx = q.tx;
      float* po[4];
      const float* pr[4];
      for (int i = 0; i < 2; ++i)
        for (int k = 0; k < 2; ++k) {
          const int64_t r = 2 * ty + i, c = 2 * tx + k;
          const bool in = r < H && c < W;
          const int64_t off = ((n * H + r) * W + c) * C;
          po[i * 2 + k] = in ? y + off : nullptr;
          pr[i * 2 + k] = in && res ? res + off : nullptr;
        }
      output_tile<C>(mbuf.data() + b * C, pstride, bias, po, res ? pr : nullptr, relu);
    }
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

}  // namespace

namespace {

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return yes;
}

// Whether 3x3 weights w fit the kernel: CPU fp32, 16/32/64 channels in and out, on a CPU with
// AVX-512.
bool weight_fits(const at::Tensor& w) {
  if (!has_avx512() || !w.device().is_cpu() || w.scalar_type() != at::kFloat) return false;
  if (w.dim() != 4 || w.size(2) != 3 || w.size(3) != 3 || w.size(0) != w.size(1)) return false;
  const int64_t C = w.size(0);
  return C == 16 || C == 32 || C == 64;
}

// Whether conv(x, w) (3x3, stride 1, padding 1) can take the kernel: weights that fit, a CPU fp32
// input with their channels, no autocast (bf16 runs keep oneDNN's bf16 convolutions).
bool fits(const at::Tensor& x, const at::Tensor& w) {
  if (!weight_fits(w) || at::autocast::is_autocast_enabled(at::kCPU)) return false;
  return x.device().is_cpu() && x.dim() == 4 && x.scalar_type() == at::kFloat && x.numel() > 0 &&
         x.size(1) == w.size(1);
}

// U = G g G^T for every (out, in) channel pair, as [16][Cin][Cout] (tile point major).
at::Tensor winograd_weight(const at::Tensor& w) {
  const int64_t co_n = w.size(0), ci_n = w.size(1);
  auto wf = w.detach().to(at::kFloat).contiguous();
  auto u = at::empty({16, ci_n, co_n}, wf.options());
  const float* g = wf.data_ptr<float>();
  float* up = u.data_ptr<float>();
  static const float G[4][3] = {{1.f, 0.f, 0.f}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0.f, 0.f, 1.f}};
  for (int64_t co = 0; co < co_n; ++co)
    for (int64_t ci = 0; ci < ci_n; ++ci) {
      const float* k = g + (co * ci_n + ci) * 9;
      float t[4][3];  // G g
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 3; ++j) t[i][j] = G[i][0] * k[j] + G[i][1] * k[3 + j] + G[i][2] * k[6 + j];
      for (int i = 0; i < 4; ++i)  // (G g) G^T
        for (int j = 0; j < 4; ++j)
          up[((i * 4 + j) * ci_n + ci) * co_n + co] = t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2];
    }
  return u;
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
  const float* bp = bc.defined() ? bc.data_ptr<float>() : kZeros;  // no bias: C <= 64 zeros
  const float* rp = rc.defined() ? rc.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // Grain: enough tiles per thread to fill several blocks.
  at::parallel_for(0, tiles, 4096 / C, [&](int64_t t0, int64_t t1) {
    switch (C) {
      case 16: conv_tiles<16>(xp, up, bp, rp, yp, H, W, relu, t0, t1); break;
      case 32: conv_tiles<32>(xp, up, bp, rp, yp, H, W, relu, t0, t1); break;
      default: conv_tiles<64>(xp, up, bp, rp, yp, H, W, relu, t0, t1); break;
    }
  });
  return y;
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

// Training: the forward and the input's gradient by Winograd (weights transformed on each
// call, since they change every step), the weights' gradient by libtorch's
// convolution_backward on the saved input.
struct WinogradConv : public torch::autograd::Function<WinogradConv> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    ctx->save_for_backward({x, w});
    return run(x, winograd_weight(w), at::Tensor(), at::Tensor(), false);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    // The input's gradient is itself a 3x3 stride-1 convolution: of the output's gradient with
    // the weights rotated by 180 degrees and in/out swapped. The weights' gradient stays
    // libtorch's.
    at::Tensor dx;
    if (ctx->needs_input_grad(0))
      dx = run(grads[0], winograd_weight(saved[1].flip({2, 3}).transpose(0, 1)), at::Tensor(), at::Tensor(), false);
    at::Tensor dw;
    if (ctx->needs_input_grad(1)) {
      const std::array<bool, 3> mask = {false, true, false};
      dw = std::get<1>(at::convolution_backward(grads[0], saved[0], saved[1], std::nullopt, {1, 1}, {1, 1}, {1, 1},
                                                false, {0, 0}, 1, mask));
    }
    return {dx, dw};
  }
};

at::Tensor winograd_conv_train(const at::Tensor& x, const at::Tensor& w) {
  if (!fits(x, w)) return at::conv2d(x, w, {}, 1, 1);
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
// conv3x3(x, w, stride 1, padding 1, no bias) with autograd: forward and input gradient by
// Winograd where it applies, the weights' gradient by libtorch.
int gcl_winograd_conv_train(const at::Tensor* x, const at::Tensor* w, at::Tensor** out) {
  return gcl::guarded([&] { gcl::give(out, winograd_conv_train(*x, *w)); });
}
// The transformed weights of a 3x3 convolution for gcl_winograd_conv; null in *out where the
// kernel does not take these weights (no AVX-512; not CPU fp32 with 16/32/64 channels in and
// out): the convolution then stays libtorch's.
int gcl_winograd_weight(const at::Tensor* w, at::Tensor** out) {
  return gcl::guarded([&] {
    *out = nullptr;
    if (weight_fits(*w)) gcl::give(out, winograd_weight(*w));
  });
}
}
