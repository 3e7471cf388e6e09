// q/k(/v) projection GEMM with RoPE in its epilogue, exact fixed-point angles.
//
// A block owns kBlockM tokens x one head of q, k or v (blockIdx.y picks the head slot). The
// main loop stages x and the head's rows of W in shared memory and accumulates the [kBlockM, D]
// tile in fp32: with tensor cores (WMMA 16x16x16) for fp16/bf16 when D % 16 == 0, else with
// FMAs. The accumulators then go to shared memory, where the epilogue pairs dims (NeoX or GPT-J)
// across the whole head, adds the bias, rotates q/k heads and writes each element once.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "dprope.h"

namespace dprope {
namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kBlockK = 32;
constexpr int kPadK = kBlockK + 8;  // row pitch of the staged tiles: 80 bytes, keeps WMMA alignment
constexpr int kMaxHeadDim = 256;

template <typename T>
struct Projection {
  const T* w;     // [heads * D, hidden]
  const T* bias;  // [heads * D] or nullptr
  T* out;         // [N, heads, D], contiguous
  int64_t heads, stride_w0, stride_w1;
};

template <typename T>
struct Wmma {
  static constexpr bool kSupported = false;
};
template <>
struct Wmma<at::Half> {
  static constexpr bool kSupported = true;
  using type = __half;
};
template <>
struct Wmma<at::BFloat16> {
  static constexpr bool kSupported = true;
  using type = __nv_bfloat16;
};

// Stages rows [row0, row0 + n_rows) x cols [k0, k0 + kBlockK) of a row-major matrix into
// s[n_rows][kPadK], zero outside the matrix. VEC: 16-byte loads (unit column stride, aligned rows).
template <typename T, bool VEC>
__device__ void stage_tile(T* s, const T* __restrict__ m, int64_t row0, int n_rows, int64_t row_limit,
                           int64_t k0, int64_t hidden, int64_t stride0, int64_t stride1) {
  constexpr int kVec = 16 / sizeof(T);
  const int per_row = VEC ? kBlockK / kVec : kBlockK;
  for (int idx = threadIdx.x; idx < n_rows * per_row; idx += blockDim.x) {
    const int r = idx / per_row;
    const int c = (idx % per_row) * (VEC ? kVec : 1);
    const int64_t row = row0 + r, k = k0 + c;
    T* dst = s + r * kPadK + c;
    if (VEC && row < row_limit && k + kVec <= hidden) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(m + row * stride0 + k);
      continue;
    }
#pragma unroll
    for (int j = 0; j < (VEC ? kVec : 1); ++j)
      dst[j] = (row < row_limit && k + j < hidden) ? m[row * stride0 + (k + j) * stride1] : T(0.0f);
  }
}

// fp32 tile [kBlockM, D] of x[m0:] @ W[w_row0 : w_row0 + D]^T into s_c (pitch D + 4).
template <typename T, int kBlockM, bool TENSOR_CORES, bool VEC>
__device__ void project_tile(float* s_c, T* s_x, T* s_w, const T* __restrict__ x, int64_t m0, int64_t n_tokens,
                             int64_t hidden, int64_t stride_xn, int64_t stride_xk, const Projection<T>& p,
                             int64_t w_row0, int head_dim) {
  const int ldc = head_dim + 4;
  if constexpr (TENSOR_CORES) {
    using namespace nvcuda;
    using mma_t = typename Wmma<T>::type;
    constexpr int kMaxFrags = kMaxHeadDim / 16;
    const int warp = threadIdx.x / 32;  // rows 16 * warp .. 16 * warp + 15
    const int n_frags = head_dim / 16;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kMaxFrags];
#pragma unroll
    for (int j = 0; j < kMaxFrags; ++j) wmma::fill_fragment(acc[j], 0.0f);
    for (int64_t k0 = 0; k0 < hidden; k0 += kBlockK) {
      stage_tile<T, VEC>(s_x, x, m0, kBlockM, n_tokens, k0, hidden, stride_xn, stride_xk);
      stage_tile<T, VEC>(s_w, p.w, w_row0, head_dim, w_row0 + head_dim, k0, hidden, p.stride_w0, p.stride_w1);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kBlockK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> a;
        wmma::load_matrix_sync(a, reinterpret_cast<const mma_t*>(s_x + warp * 16 * kPadK + kk), kPadK);
#pragma unroll
        for (int j = 0; j < kMaxFrags; ++j) {
          if (j < n_frags) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::col_major> b;
            wmma::load_matrix_sync(b, reinterpret_cast<const mma_t*>(s_w + j * 16 * kPadK + kk), kPadK);
            wmma::mma_sync(acc[j], a, b, acc[j]);
          }
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < kMaxFrags; ++j)
      if (j < n_frags) wmma::store_matrix_sync(s_c + warp * 16 * ldc + j * 16, acc[j], ldc, wmma::mem_row_major);
  } else {
    // each thread owns elements tid, tid + kThreads, ... of the [kBlockM, D] tile
    constexpr int kMaxOwned = kBlockM * kMaxHeadDim / kThreads;
    const int owned = kBlockM * head_dim / kThreads + 1;
    float acc[kMaxOwned + 1];
#pragma unroll
    for (int i = 0; i <= kMaxOwned; ++i) acc[i] = 0.0f;
    for (int64_t k0 = 0; k0 < hidden; k0 += kBlockK) {
      stage_tile<T, VEC>(s_x, x, m0, kBlockM, n_tokens, k0, hidden, stride_xn, stride_xk);
      stage_tile<T, VEC>(s_w, p.w, w_row0, head_dim, w_row0 + head_dim, k0, hidden, p.stride_w0, p.stride_w1);
      __syncthreads();
#pragma unroll
      for (int i = 0; i <= kMaxOwned; ++i) {
        const int e = threadIdx.x + i * kThreads;
        if (i < owned && e < kBlockM * head_dim) {
          const T* a = s_x + (e / head_dim) * kPadK;
          const T* b = s_w + (e % head_dim) * kPadK;
          float sum = acc[i];
#pragma unroll 8
          for (int kk = 0; kk < kBlockK; ++kk) sum = fmaf(static_cast<float>(a[kk]), static_cast<float>(b[kk]), sum);
          acc[i] = sum;
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i <= kMaxOwned; ++i) {
      const int e = threadIdx.x + i * kThreads;
      if (i < owned && e < kBlockM * head_dim) s_c[(e / head_dim) * ldc + e % head_dim] = acc[i];
    }
  }
  __syncthreads();
}

template <typename T, typename pos_t, int kBlockM, bool TENSOR_CORES, bool VEC>
__global__ void __launch_bounds__(kThreads)
qkv_rope_projection_kernel(const T* __restrict__ x, int64_t n_tokens, int64_t hidden, int64_t stride_xn,
                           int64_t stride_xk, Projection<T> q, Projection<T> k, Projection<T> v,
                           const int64_t* __restrict__ phases, const pos_t* __restrict__ positions, int head_dim,
                           bool interleaved) {
  extern __shared__ __align__(128) unsigned char smem[];
  T* s_x = reinterpret_cast<T*>(smem);
  T* s_w = s_x + kBlockM * kPadK;
  float* s_c = reinterpret_cast<float*>(smem);  // reuses the staging space after the main loop

  int64_t slot = blockIdx.y;
  const bool rotate = slot < q.heads + k.heads;
  const Projection<T>& p = slot < q.heads ? q : (rotate ? k : v);
  const int64_t head = slot < q.heads ? slot : (rotate ? slot - q.heads : slot - q.heads - k.heads);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlockM;
  const int64_t w_row0 = head * head_dim;

  project_tile<T, kBlockM, TENSOR_CORES, VEC>(s_c, s_x, s_w, x, m0, n_tokens, hidden, stride_xn, stride_xk, p,
                                             w_row0, head_dim);

  const int half = head_dim / 2, ldc = head_dim + 4;
  for (int e = threadIdx.x; e < kBlockM * half; e += blockDim.x) {
    const int r = e / half, i = e % half;
    const int64_t token = m0 + r;
    if (token >= n_tokens) continue;
    const int d1 = interleaved ? 2 * i : i;
    const int d2 = interleaved ? 2 * i + 1 : i + half;
    float y1 = s_c[r * ldc + d1], y2 = s_c[r * ldc + d2];
    if (p.bias != nullptr) {
      y1 += static_cast<float>(p.bias[w_row0 + d1]);
      y2 += static_cast<float>(p.bias[w_row0 + d2]);
    }
    if (rotate) {
      float sn, cs;
      sincosf(exact_angle(static_cast<int64_t>(positions[token]), phases[i]), &sn, &cs);
      const float x1 = y1, x2 = y2;
      y1 = x1 * cs - x2 * sn;
      y2 = x2 * cs + x1 * sn;
    }
    T* row = p.out + token * p.heads * head_dim + w_row0;
    row[d1] = static_cast<T>(y1);
    row[d2] = static_cast<T>(y2);
  }
}

bool aligned16(const at::Tensor& t) {
  return t.numel() == 0 ||
         (t.stride(1) == 1 && (t.stride(0) * t.element_size()) % 16 == 0 &&
          reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0);
}

template <typename T>
Projection<T> projection(const at::Tensor& w, const c10::optional<at::Tensor>& b, const at::Tensor& out) {
  return {w.data_ptr<T>(), b.has_value() ? b->data_ptr<T>() : nullptr, out.data_ptr<T>(), out.size(1),
          w.stride(0), w.stride(1)};
}

template <typename T, typename pos_t, int kBlockM, bool TENSOR_CORES, bool VEC>
void launch_config(const at::Tensor& x, const Projection<T>& q, const Projection<T>& k, const Projection<T>& v,
                   const at::Tensor& phases, const at::Tensor& positions, int head_dim, bool interleaved) {
  auto kernel = qkv_rope_projection_kernel<T, pos_t, kBlockM, TENSOR_CORES, VEC>;
  const size_t staging = static_cast<size_t>(kBlockM + head_dim) * kPadK * sizeof(T);
  const size_t tile = static_cast<size_t>(kBlockM) * (head_dim + 4) * sizeof(float);
  const size_t smem = std::max(staging, tile);
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const int64_t n_tokens = x.size(0);
  const dim3 grid(static_cast<unsigned>((n_tokens + kBlockM - 1) / kBlockM),
                  static_cast<unsigned>(q.heads + k.heads + v.heads));
  kernel<<<grid, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<T>(), n_tokens, x.size(1), x.stride(0), x.stride(1), q, k, v, phases.data_ptr<int64_t>(),
      positions.data_ptr<pos_t>(), head_dim, interleaved);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename pos_t>
void launch(const at::Tensor& x, const std::array<const at::Tensor*, 3>& weights, const Projection<T>& q,
            const Projection<T>& k, const Projection<T>& v, const at::Tensor& phases, const at::Tensor& positions,
            int head_dim, bool interleaved) {
  bool vec = aligned16(x);
  for (const at::Tensor* w : weights) vec = vec && (w == nullptr || aligned16(*w));
  if constexpr (Wmma<T>::kSupported) {
    if (head_dim % 16 == 0) {
      if (vec) return launch_config<T, pos_t, 64, true, true>(x, q, k, v, phases, positions, head_dim, interleaved);
      return launch_config<T, pos_t, 64, true, false>(x, q, k, v, phases, positions, head_dim, interleaved);
    }
  }
  if (vec) return launch_config<T, pos_t, 32, false, true>(x, q, k, v, phases, positions, head_dim, interleaved);
  launch_config<T, pos_t, 32, false, false>(x, q, k, v, phases, positions, head_dim, interleaved);
}

}  // namespace

void qkv_rope_projection_cuda(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_k,
                              const c10::optional<at::Tensor>& w_v, const c10::optional<at::Tensor>& b_q,
                              const c10::optional<at::Tensor>& b_k, const c10::optional<at::Tensor>& b_v,
                              const at::Tensor& out_q, const at::Tensor& out_k, const at::Tensor& out_v,
                              const at::Tensor& phases, const at::Tensor& positions, bool interleaved) {
  const char* op = "dprope qkv_rope_projection";
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, op, ": x must be a CUDA [N, hidden] tensor");
  const int64_t head_dim = out_q.dim() == 3 ? out_q.size(2) : -1;
  TORCH_CHECK(head_dim > 0 && head_dim % 2 == 0 && head_dim <= kMaxHeadDim, op,
              ": head_dim must be even and at most ", kMaxHeadDim);
  TORCH_CHECK(phases.scalar_type() == at::kLong && phases.is_contiguous() && 2 * phases.numel() == head_dim, op,
              ": phases must be contiguous int64 [head_dim / 2]");
  TORCH_CHECK(positions.dim() == 1 && positions.size(0) == x.size(0) && positions.is_contiguous() &&
                  (positions.scalar_type() == at::kInt || positions.scalar_type() == at::kLong),
              op, ": positions must be contiguous int32/int64 [N]");
  const std::array<const at::Tensor*, 3> weights = {&w_q, &w_k, w_v.has_value() ? &*w_v : nullptr};
  const std::array<const c10::optional<at::Tensor>*, 3> biases = {&b_q, &b_k, &b_v};
  const std::array<const at::Tensor*, 3> outs = {&out_q, &out_k, &out_v};
  for (int i = 0; i < 3; ++i) {
    const at::Tensor& out = *outs[i];
    TORCH_CHECK(out.dim() == 3 && out.size(0) == x.size(0) && out.size(2) == head_dim && out.is_contiguous() &&
                    out.scalar_type() == x.scalar_type() && out.device() == x.device(),
                op, ": outputs must be contiguous [N, H, head_dim] in x's dtype and device");
    if (weights[i] == nullptr) {
      TORCH_CHECK(out.size(1) == 0, op, ": out_v must have no heads without w_v");
      continue;
    }
    const at::Tensor& w = *weights[i];
    TORCH_CHECK(w.dim() == 2 && w.size(1) == x.size(1) && w.size(0) == out.size(1) * head_dim &&
                    w.scalar_type() == x.scalar_type() && w.device() == x.device(),
                op, ": weights must be [H * head_dim, hidden] in x's dtype and device, matching the outputs");
    if (biases[i]->has_value()) {
      const at::Tensor& b = biases[i]->value();
      TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0) && b.is_contiguous() && b.scalar_type() == x.scalar_type() &&
                      b.device() == x.device(),
                  op, ": biases must be contiguous [H * head_dim] in x's dtype and device");
    }
  }
  TORCH_CHECK(out_q.size(1) + out_k.size(1) + out_v.size(1) <= 65535, op, ": too many heads for one launch");
  if (x.size(0) == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const auto pq = projection<T>(w_q, b_q, out_q);
    const auto pk = projection<T>(w_k, b_k, out_k);
    auto pv = projection<T>(w_v.has_value() ? *w_v : w_q, w_v.has_value() ? b_v : c10::nullopt, out_v);
    if (!w_v.has_value()) pv.heads = 0;
    if (positions.scalar_type() == at::kInt)
      launch<T, int32_t>(x, weights, pq, pk, pv, phases, positions, static_cast<int>(head_dim), interleaved);
    else
      launch<T, int64_t>(x, weights, pq, pk, pv, phases, positions, static_cast<int>(head_dim), interleaved);
  };
  switch (x.scalar_type()) {
    case at::kFloat: return run(float{});
    case at::kHalf: return run(at::Half{});
    case at::kBFloat16: return run(at::BFloat16{});
    default: TORCH_CHECK(false, op, ": x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
}

}  // namespace dprope
