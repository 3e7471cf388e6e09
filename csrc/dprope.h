// Shared declarations of the dprope CUDA extension.
#pragma once

#include <ATen/ATen.h>

namespace dprope {

// 2 pi / 2**64: scales a signed 64-bit turn fraction to radians in [-pi, pi).
constexpr float kRadiansPerPhaseUnit = 3.4061215800865545e-19f;

#ifdef __CUDACC__
// The exact angle pos * phase (mod 2**64 turns), in radians in [-pi, pi).
__device__ __forceinline__ float exact_angle(int64_t pos, int64_t phase) {
  const uint64_t turn = static_cast<uint64_t>(pos) * static_cast<uint64_t>(phase);  // wraps mod 2**64
  return static_cast<float>(static_cast<int64_t>(turn)) * kRadiansPerPhaseUnit;
}
#endif

// Rotates the first 2 * phases.numel() dims of q [B, T, Hq, D] and k [B, T, Hk, D] into
// out_q / out_k (which may alias them) by the exact angles pos * phase (mod 2**64).
void rope_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& out_q, const at::Tensor& out_k,
               const at::Tensor& phases, const at::Tensor& positions, bool interleaved, bool conjugate);

// Adds to out [n_freq, bins] the bins of positions [n_pos] (or of start .. start + n_pos - 1),
// counted once (int64 out) or with their weights (weights' dtype == out's dtype).
void histogram_cuda(const at::Tensor& phases, const c10::optional<at::Tensor>& positions,
                    const c10::optional<at::Tensor>& weights, const at::Tensor& out, int64_t n_pos,
                    int64_t start, int64_t bins);

// Projects x [N, hidden] with w_q / w_k / w_v ([H * D, hidden]; w_v optional) plus optional
// biases into out_q / out_k / out_v (contiguous [N, H, D]; out_v [N, 0, D] without w_v), and
// rotates q and k by the exact angles positions[n] * phase in the GEMM's epilogue.
void qkv_rope_projection_cuda(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_k,
                              const c10::optional<at::Tensor>& w_v, const c10::optional<at::Tensor>& b_q,
                              const c10::optional<at::Tensor>& b_k, const c10::optional<at::Tensor>& b_v,
                              const at::Tensor& out_q, const at::Tensor& out_k, const at::Tensor& out_v,
                              const at::Tensor& phases, const at::Tensor& positions, bool interleaved);

}  // namespace dprope
