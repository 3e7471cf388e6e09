// Shared declarations of the dprope CUDA extension.
#pragma once

#include <ATen/ATen.h>

namespace dprope {

// 2 pi / 2**64: scales a signed 64-bit turn fraction to radians in [-pi, pi).
constexpr float kRadiansPerPhaseUnit = 3.4061215800865545e-19f;

// Rotates the first 2 * phases.numel() dims of q [B, T, Hq, D] and k [B, T, Hk, D] into
// out_q / out_k (which may alias them) by the exact angles pos * phase (mod 2**64).
void rope_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& out_q, const at::Tensor& out_k,
               const at::Tensor& phases, const at::Tensor& positions, bool interleaved, bool conjugate);

// Adds to out [n_freq, bins] the bins of positions [n_pos] (or of start .. start + n_pos - 1),
// counted once (int64 out) or with their weights (weights' dtype == out's dtype).
void histogram_cuda(const at::Tensor& phases, const c10::optional<at::Tensor>& positions,
                    const c10::optional<at::Tensor>& weights, const at::Tensor& out, int64_t n_pos,
                    int64_t start, int64_t bins);

}  // namespace dprope
