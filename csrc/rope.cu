// RoPE apply with exact fixed-point angles.
//
// Grid (token blocks, B): no division of a flat token index. Each thread owns CH consecutive
// pairs of one token: it evaluates their cos/sin once, in registers (no shared memory, no
// barrier), then walks every head of q and of k with them. CH = 16 / sizeof(T) in the vector
// path, so each half (NeoX) or each run of pairs (GPT-J) is one 16-byte load and store. The
// attention factor scales cos and sin once per thread (an exact multiply at 1).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>

#include "dprope.h"

namespace dprope {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct Operand {
  const T* in;
  T* out;
  int heads;
  int64_t in_b, in_t, in_h, in_d;
  int64_t out_b, out_t, out_h, out_d;
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// The two elements of pair j (0 <= j < CH) of this thread's chunk, reading GPT-J or NeoX pairs.
template <typename T, int CH, bool INTERLEAVED, bool VEC>
__device__ __forceinline__ void load_chunk(const T* row, int64_t stride_d, int half, int p0, float (&x1)[CH],
                                           float (&x2)[CH]) {
  if constexpr (VEC && INTERLEAVED) {
    const Pack<T, CH> a = *reinterpret_cast<const Pack<T, CH>*>(row + 2 * p0);
    const Pack<T, CH> b = *reinterpret_cast<const Pack<T, CH>*>(row + 2 * p0 + CH);
#pragma unroll
    for (int j = 0; j < CH / 2; ++j) {
      x1[j] = static_cast<float>(a.v[2 * j]);
      x2[j] = static_cast<float>(a.v[2 * j + 1]);
      x1[j + CH / 2] = static_cast<float>(b.v[2 * j]);
      x2[j + CH / 2] = static_cast<float>(b.v[2 * j + 1]);
    }
  } else if constexpr (VEC) {
    const Pack<T, CH> a = *reinterpret_cast<const Pack<T, CH>*>(row + p0);
    const Pack<T, CH> b = *reinterpret_cast<const Pack<T, CH>*>(row + half + p0);
#pragma unroll
    for (int j = 0; j < CH; ++j) {
      x1[j] = static_cast<float>(a.v[j]);
      x2[j] = static_cast<float>(b.v[j]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < CH; ++j) {
      const int64_t d1 = INTERLEAVED ? 2 * (p0 + j) : p0 + j;
      const int64_t d2 = INTERLEAVED ? 2 * (p0 + j) + 1 : p0 + j + half;
      x1[j] = static_cast<float>(row[d1 * stride_d]);
      x2[j] = static_cast<float>(row[d2 * stride_d]);
    }
  }
}

template <typename T, int CH, bool INTERLEAVED, bool VEC>
__device__ __forceinline__ void store_chunk(T* row, int64_t stride_d, int half, int p0, const float (&y1)[CH],
                                            const float (&y2)[CH]) {
  if constexpr (VEC && INTERLEAVED) {
    Pack<T, CH> a, b;
#pragma unroll
    for (int j = 0; j < CH / 2; ++j) {
      a.v[2 * j] = static_cast<T>(y1[j]);
      a.v[2 * j + 1] = static_cast<T>(y2[j]);
      b.v[2 * j] = static_cast<T>(y1[j + CH / 2]);
      b.v[2 * j + 1] = static_cast<T>(y2[j + CH / 2]);
    }
    *reinterpret_cast<Pack<T, CH>*>(row + 2 * p0) = a;
    *reinterpret_cast<Pack<T, CH>*>(row + 2 * p0 + CH) = b;
  } else if constexpr (VEC) {
    Pack<T, CH> a, b;
#pragma unroll
    for (int j = 0; j < CH; ++j) {
      a.v[j] = static_cast<T>(y1[j]);
      b.v[j] = static_cast<T>(y2[j]);
    }
    *reinterpret_cast<Pack<T, CH>*>(row + p0) = a;
    *reinterpret_cast<Pack<T, CH>*>(row + half + p0) = b;
  } else {
#pragma unroll
    for (int j = 0; j < CH; ++j) {
      const int64_t d1 = INTERLEAVED ? 2 * (p0 + j) : p0 + j;
      const int64_t d2 = INTERLEAVED ? 2 * (p0 + j) + 1 : p0 + j + half;
      row[d1 * stride_d] = static_cast<T>(y1[j]);
      row[d2 * stride_d] = static_cast<T>(y2[j]);
    }
  }
}

template <typename T, int CH, bool IN_IL, bool OUT_IL, bool VEC>
__device__ __forceinline__ void rotate_heads(const Operand<T>& x, int64_t b, int64_t t, int half, int p0,
                                             const float (&cs)[CH], const float (&sn)[CH]) {
  const T* in = x.in + b * x.in_b + t * x.in_t;
  T* out = x.out + b * x.out_b + t * x.out_t;
  for (int h = 0; h < x.heads; ++h, in += x.in_h, out += x.out_h) {
    float x1[CH], x2[CH], y1[CH], y2[CH];
    load_chunk<T, CH, IN_IL, VEC>(in, x.in_d, half, p0, x1, x2);
#pragma unroll
    for (int j = 0; j < CH; ++j) {
      y1[j] = x1[j] * cs[j] - x2[j] * sn[j];
      y2[j] = x2[j] * cs[j] + x1[j] * sn[j];
    }
    store_chunk<T, CH, OUT_IL, VEC>(out, x.out_d, half, p0, y1, y2);
  }
}

template <typename T, int CH, bool IN_IL, bool OUT_IL, bool VEC>
__global__ void __launch_bounds__(kThreads)
rope_kernel(const __grid_constant__ Operand<T> q, const __grid_constant__ Operand<T> k,
            const int64_t* __restrict__ phases, const int64_t* __restrict__ positions, int64_t pos_b, int64_t pos_t,
            int seq_len, int half, int threads_per_token, float cos_scale, float sin_scale) {
  const int lane = threadIdx.x % threads_per_token;
  const int t = blockIdx.x * (blockDim.x / threads_per_token) + threadIdx.x / threads_per_token;
  const int64_t b = blockIdx.y;
  if (t >= seq_len) return;
  const int p0 = lane * CH;
  const int64_t pos = positions[b * pos_b + t * pos_t];
  float cs[CH], sn[CH];
#pragma unroll
  for (int j = 0; j < CH; ++j) {
    exact_sincos(pos, phases[p0 + j], &sn[j], &cs[j]);
    cs[j] *= cos_scale;
    sn[j] *= sin_scale;
  }
  rotate_heads<T, CH, IN_IL, OUT_IL, VEC>(q, b, t, half, p0, cs, sn);
  rotate_heads<T, CH, IN_IL, OUT_IL, VEC>(k, b, t, half, p0, cs, sn);
}

template <typename T>
Operand<T> operand(const at::Tensor& x, const at::Tensor& out) {
  return {x.data_ptr<T>(), out.data_ptr<T>(), static_cast<int>(x.size(2)),
          x.stride(0), x.stride(1), x.stride(2), x.stride(3),
          out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
}

// 16-byte vectors fit when every row starts 16-byte aligned with unit stride along D and the
// pairs split into whole chunks.
bool vectorizable(const at::Tensor& t, int half, int chunk) {
  if (t.numel() == 0) return true;
  if (t.stride(3) != 1 || half % chunk) return false;
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16) return false;
  for (int d = 0; d < 3; ++d)
    if ((t.stride(d) * t.element_size()) % 16) return false;
  return true;
}

template <typename T, int CH, bool IN_IL, bool OUT_IL, bool VEC>
void launch_one(const Operand<T>& q, const Operand<T>& k, const at::Tensor& phases, const at::Tensor& positions,
                int64_t batch, int seq_len, int half, bool conjugate, float scale) {
  const int threads_per_token = half / CH;
  const int tokens_per_block = std::max(1, kThreads / threads_per_token);
  const dim3 grid(static_cast<unsigned>((seq_len + tokens_per_block - 1) / tokens_per_block),
                  static_cast<unsigned>(batch));
  rope_kernel<T, CH, IN_IL, OUT_IL, VEC><<<grid, tokens_per_block * threads_per_token, 0,
                                           c10::cuda::getCurrentCUDAStream()>>>(
      q, k, phases.data_ptr<int64_t>(), positions.data_ptr<int64_t>(), positions.stride(0), positions.stride(1),
      seq_len, half, threads_per_token, scale, conjugate ? -scale : scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int CH, bool VEC>
void launch_pairing(const Operand<T>& q, const Operand<T>& k, const at::Tensor& phases, const at::Tensor& positions,
                    int64_t batch, int seq_len, int half, bool in_il, bool out_il, bool conjugate, float scale) {
  if (in_il && out_il)
    return launch_one<T, CH, true, true, VEC>(q, k, phases, positions, batch, seq_len, half, conjugate, scale);
  if (in_il)
    return launch_one<T, CH, true, false, VEC>(q, k, phases, positions, batch, seq_len, half, conjugate, scale);
  if (out_il)
    return launch_one<T, CH, false, true, VEC>(q, k, phases, positions, batch, seq_len, half, conjugate, scale);
  launch_one<T, CH, false, false, VEC>(q, k, phases, positions, batch, seq_len, half, conjugate, scale);
}

template <typename T>
void launch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& out_q, const at::Tensor& out_k,
            const at::Tensor& phases, const at::Tensor& positions, bool in_il, bool out_il, bool conjugate,
            float scale) {
  constexpr int kChunk = 16 / sizeof(T);
  const int half = static_cast<int>(phases.numel());
  const int64_t batch = q.size(0);
  const int seq_len = static_cast<int>(q.size(1));
  if (batch * seq_len == 0) return;
  const auto qo = operand<T>(q, out_q);
  const auto ko = operand<T>(k, out_k);
  const bool vec = vectorizable(q, half, kChunk) && vectorizable(k, half, kChunk) &&
                   vectorizable(out_q, half, kChunk) && vectorizable(out_k, half, kChunk);
  TORCH_CHECK(half / (vec ? kChunk : 1) <= kThreads, "dprope rope: at most ", kThreads * (vec ? kChunk : 1),
              " rotated pairs per head for this layout, got ", half);
  if (vec) return launch_pairing<T, kChunk, true>(qo, ko, phases, positions, batch, seq_len, half, in_il, out_il,
                                                  conjugate, scale);
  launch_pairing<T, 1, false>(qo, ko, phases, positions, batch, seq_len, half, in_il, out_il, conjugate, scale);
}

}  // namespace

void rope_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& out_q, const at::Tensor& out_k,
               const at::Tensor& phases, const at::Tensor& positions, bool in_interleaved, bool out_interleaved,
               bool conjugate, double scale) {
  TORCH_CHECK(q.is_cuda(), "dprope rope: q must be a CUDA tensor");
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "dprope rope: scale must be finite and positive, got ", scale);
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && out_q.sizes() == q.sizes() && out_k.sizes() == k.sizes(),
              "dprope rope: q, k must be [B, T, H, D] and outputs must match them");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "dprope rope: k must match q in B, T and D");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && out_q.scalar_type() == q.scalar_type() &&
                  out_k.scalar_type() == q.scalar_type(),
              "dprope rope: q, k and outputs must share a dtype");
  TORCH_CHECK(phases.scalar_type() == at::kLong && phases.dim() == 1 && phases.is_contiguous() && phases.numel() > 0,
              "dprope rope: phases must be a contiguous 1-D int64 tensor");
  TORCH_CHECK(2 * phases.numel() <= q.size(3), "dprope rope: 2 * len(phases) exceeds the head dim");
  TORCH_CHECK(positions.dim() == 2 && positions.size(0) == q.size(0) && positions.size(1) == q.size(1) &&
                  positions.scalar_type() == at::kLong,
              "dprope rope: positions must be int64 [B, T]");
  for (const at::Tensor* t : {&k, &out_q, &out_k, &phases, &positions})
    TORCH_CHECK(t->device() == q.device(), "dprope rope: every tensor must be on q's device");
  TORCH_CHECK(q.size(0) <= 65535 && q.size(1) <= std::numeric_limits<int32_t>::max(),
              "dprope rope: at most 65535 sequences of up to 2**31 - 1 tokens per call");
  TORCH_CHECK(q.size(2) <= std::numeric_limits<int32_t>::max() && k.size(2) <= std::numeric_limits<int32_t>::max(),
              "dprope rope: too many heads");
  const c10::cuda::CUDAGuard guard(q.device());
  const float s = static_cast<float>(scale);
  switch (q.scalar_type()) {
    case at::kFloat: return launch<float>(q, k, out_q, out_k, phases, positions, in_interleaved, out_interleaved,
                                          conjugate, s);
    case at::kHalf: return launch<at::Half>(q, k, out_q, out_k, phases, positions, in_interleaved, out_interleaved,
                                            conjugate, s);
    case at::kBFloat16: return launch<at::BFloat16>(q, k, out_q, out_k, phases, positions, in_interleaved,
                                                    out_interleaved, conjugate, s);
    default: TORCH_CHECK(false, "dprope rope: q must be float32, float16 or bfloat16, got ", q.scalar_type());
  }
}

}  // namespace dprope
