// Shared declarations of the dprope CUDA extension.
#pragma once

#include <ATen/ATen.h>

namespace dprope {

// 2 pi / 2**64: scales a signed 64-bit turn fraction to radians.
constexpr float kRadiansPerPhaseUnit = 3.4061215800865545e-19f;

#ifdef __CUDACC__
// cos and sin of the exact angle pos * phase (mod 2**64 turns). The top two bits (rounded) of the
// turn pick the quadrant and the other 62 bits are the exact offset from it, so the only float
// work is one int64 -> fp32 conversion of |offset| <= 2**61 and a short polynomial on
// [-pi/4, pi/4] (Cephes sinf/cosf): no large-argument range reduction, no stack. < 2.5e-7 absolute.
__device__ __forceinline__ void exact_sincos(int64_t pos, int64_t phase, float* sin_out, float* cos_out) {
  const uint64_t turn = static_cast<uint64_t>(pos) * static_cast<uint64_t>(phase);  // wraps mod 2**64
  const uint64_t shifted = turn + (1ull << 61);
  const unsigned quadrant = static_cast<unsigned>(shifted >> 62);
  const int64_t offset = static_cast<int64_t>(shifted & ((1ull << 62) - 1)) - (1ll << 61);
  const float x = static_cast<float>(offset) * kRadiansPerPhaseUnit;
  const float z = x * x;
  const float s = fmaf(x * z, fmaf(z, fmaf(z, -1.9515295891e-4f, 8.3321608736e-3f), -1.6666654611e-1f), x);
  const float c = fmaf(z * z, fmaf(z, fmaf(z, 2.443315711809948e-5f, -1.388731625493765e-3f), 4.166664568298827e-2f),
                       fmaf(-0.5f, z, 1.0f));
  const bool odd = quadrant & 1u;
  const float cq = odd ? s : c, sq = odd ? c : s;
  *cos_out = ((quadrant + 1u) & 2u) ? -cq : cq;  // quadrants 1, 2
  *sin_out = (quadrant & 2u) ? -sq : sq;          // quadrants 2, 3
}
#endif

// Rotates the first 2 * phases.numel() dims of q [B, T, Hq, D] and k [B, T, Hk, D] into
// out_q / out_k by the exact angles positions[b, t] * phase (mod 2**64), cos and sin times scale
// (the attention factor). Pairs are read GPT-J (2i, 2i+1) or NeoX (i, i + half) style per
// in_interleaved and written per out_interleaved; the outputs may alias the inputs when both
// pairings are equal.
void rope_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& out_q, const at::Tensor& out_k,
               const at::Tensor& phases, const at::Tensor& positions, bool in_interleaved, bool out_interleaved,
               bool conjugate, double scale);

// Adds to out [n_freq, bins] the bins of positions [n_pos] (or of start .. start + n_pos - 1),
// counted once (int64 out) or with their weights (weights' dtype == out's dtype).
void histogram_cuda(const at::Tensor& phases, const c10::optional<at::Tensor>& positions,
                    const c10::optional<at::Tensor>& weights, const at::Tensor& out, int64_t n_pos,
                    int64_t start, int64_t bins);

// Projects x [N, hidden] with w_q / w_k / w_v ([H * D, hidden]; w_v optional) plus optional biases
// into out [N, Hq + Hk + Hv, D] (contiguous), applies the optional per-head RMSNorm weights n_q / n_k
// ([D]) to q / k heads and rotates them by the exact angles positions[n] * phase, with cos and sin
// times scale (the attention factor), in the GEMM's epilogue.
void qkv_rope_projection_cuda(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_k,
                              const c10::optional<at::Tensor>& w_v, const c10::optional<at::Tensor>& b_q,
                              const c10::optional<at::Tensor>& b_k, const c10::optional<at::Tensor>& b_v,
                              const c10::optional<at::Tensor>& n_q, const c10::optional<at::Tensor>& n_k,
                              double norm_eps, const at::Tensor& out, int64_t n_q_heads, int64_t n_k_heads,
                              const at::Tensor& phases, const at::Tensor& positions, bool interleaved,
                              double scale);

}  // namespace dprope
