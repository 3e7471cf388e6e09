// q/k(/v) projection GEMM with per-head RMSNorm and RoPE in its epilogue, exact fixed-point angles.
//
// A block owns kBlockM tokens x one head of q, k or v (blockIdx.y picks the head slot of the
// packed [N, Hq + Hk + Hv, D] output). The main loop stages x and the head's rows of W in shared
// memory, double-buffered with cp.async (16-byte copies when aligned), and accumulates the
// [kBlockM, D] tile in fp32: WMMA tensor cores (fragments loaded with ldmatrix) for fp16/bf16 when
// D % 16 == 0, FMAs otherwise. Accumulators are sized by the head-dim bucket (64, 128, 256), not
// for the largest head. The epilogue adds the bias, normalizes q/k heads (RMSNorm over the head),
// rotates them with cos/sin times the attention factor (v heads skip all three) and writes each
// element once.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>

#include "dprope.h"

namespace dprope {
namespace {

constexpr int kBlockK = 32;
constexpr int kPadK = kBlockK + 8;  // staged row pitch: keeps 16-byte alignment for cp.async and WMMA
constexpr int kMaxHeadDim = 256;

template <typename T>
struct Projection {
  const T* w;     // [heads * D, hidden]
  const T* bias;  // [heads * D] or nullptr
  const T* norm;  // [D] RMSNorm weight, or nullptr
  int64_t heads, stride_w0, stride_w1;
};

// The parameters of one head slot, chosen field by field (no copy of a kernel parameter struct).
template <typename T>
struct Head {
  const T* w;
  const T* bias;
  const T* norm;
  int64_t stride_w0, stride_w1, row0;
  bool rotate;
};

template <typename T>
__device__ __forceinline__ Head<T> select_head(const Projection<T>& q, const Projection<T>& k, const Projection<T>& v,
                                               int64_t slot, int head_dim) {
  const bool is_q = slot < q.heads;
  const bool is_k = !is_q && slot < q.heads + k.heads;
  const int64_t head = is_q ? slot : (is_k ? slot - q.heads : slot - q.heads - k.heads);
  Head<T> h;
  h.w = is_q ? q.w : (is_k ? k.w : v.w);
  h.bias = is_q ? q.bias : (is_k ? k.bias : v.bias);
  h.norm = is_q ? q.norm : (is_k ? k.norm : nullptr);
  h.stride_w0 = is_q ? q.stride_w0 : (is_k ? k.stride_w0 : v.stride_w0);
  h.stride_w1 = is_q ? q.stride_w1 : (is_k ? k.stride_w1 : v.stride_w1);
  h.row0 = head * head_dim;
  h.rotate = is_q || is_k;
  return h;
}

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

__device__ __forceinline__ void copy16_async(void* dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src));
#else
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#endif
}

__device__ __forceinline__ void async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Stages rows [row0, row0 + n_rows) x cols [k0, k0 + kBlockK) of a row-major matrix into
// s[n_rows][kPadK], zero outside the matrix. VEC: 16-byte cp.async (unit column stride, aligned rows).
template <typename T, bool VEC>
__device__ __forceinline__ void stage_tile(T* s, const T* __restrict__ m, int64_t row0, int n_rows, int64_t row_limit,
                                           int64_t k0, int64_t hidden, int64_t stride0, int64_t stride1) {
  constexpr int kVec = VEC ? 16 / sizeof(T) : 1;
  constexpr int kPerRow = kBlockK / kVec;
  for (int idx = threadIdx.x; idx < n_rows * kPerRow; idx += blockDim.x) {
    const int r = idx / kPerRow;
    const int c = (idx % kPerRow) * kVec;
    const int64_t row = row0 + r, col = k0 + c;
    T* dst = s + r * kPadK + c;
    if (VEC && row < row_limit && col + kVec <= hidden) {
      copy16_async(dst, m + row * stride0 + col);
      continue;
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      dst[j] = (row < row_limit && col + j < hidden) ? m[row * stride0 + (col + j) * stride1] : T(0.0f);
  }
}

template <int D_MAX, bool TENSOR_CORES>
struct Shape {
  static constexpr int kWarpsN = (TENSOR_CORES && D_MAX > 128) ? 2 : 1;  // column halves of the head
  static constexpr int kThreads = 128 * kWarpsN;
  static constexpr int kBlockM = TENSOR_CORES ? 64 : 32;
  static constexpr int kLdc = D_MAX + 4;  // fp32 tile pitch
};

// fp32 tile [kBlockM, head_dim] of x[m0:] @ W[row0 : row0 + head_dim]^T into s_c (pitch kLdc).
template <typename T, int D_MAX, bool TENSOR_CORES, bool VEC>
__device__ __forceinline__ void project_tile(float* s_c, T* s_stage, const T* __restrict__ x, int64_t m0,
                                             int64_t n_tokens, int64_t hidden, int64_t stride_xn, int64_t stride_xk,
                                             const Head<T>& h, int head_dim) {
  using S = Shape<D_MAX, TENSOR_CORES>;
  constexpr int kStage = (S::kBlockM + D_MAX) * kPadK;  // elements per pipeline stage
  const int n_k = static_cast<int>((hidden + kBlockK - 1) / kBlockK);
  auto stage = [&](int kt) {
    T* s_x = s_stage + (kt & 1) * kStage;
    stage_tile<T, VEC>(s_x, x, m0, S::kBlockM, n_tokens, int64_t(kt) * kBlockK, hidden, stride_xn, stride_xk);
    stage_tile<T, VEC>(s_x + S::kBlockM * kPadK, h.w, h.row0, head_dim, h.row0 + head_dim, int64_t(kt) * kBlockK,
                       hidden, h.stride_w0, h.stride_w1);
    async_commit();
  };
  // Issues the copy of tile kt + 1, waits for tile kt and returns its staged x (W's rows follow it).
  auto tile = [&](int kt) -> const T* {
    if (kt + 1 < n_k) {
      stage(kt + 1);
      async_wait<1>();
    } else {
      async_wait<0>();
    }
    __syncthreads();
    return s_stage + (kt & 1) * kStage;
  };
  stage(0);
  if constexpr (TENSOR_CORES) {
    using namespace nvcuda;
    using mma_t = typename Wmma<T>::type;
    constexpr int kFrags = D_MAX / S::kWarpsN / 16;
    const int warp = threadIdx.x / 32;
    const int row = 16 * (warp % 4);
    const int col0 = (warp / 4) * (D_MAX / S::kWarpsN);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFrags];
#pragma unroll
    for (int j = 0; j < kFrags; ++j) wmma::fill_fragment(acc[j], 0.0f);
    for (int kt = 0; kt < n_k; ++kt) {
      const T* s_x = tile(kt);
      const T* s_w = s_x + S::kBlockM * kPadK;
#pragma unroll
      for (int kk = 0; kk < kBlockK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> a;
        wmma::load_matrix_sync(a, reinterpret_cast<const mma_t*>(s_x + row * kPadK + kk), kPadK);
#pragma unroll
        for (int j = 0; j < kFrags; ++j) {
          if (col0 + 16 * j < head_dim) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::col_major> b;
            wmma::load_matrix_sync(b, reinterpret_cast<const mma_t*>(s_w + (col0 + 16 * j) * kPadK + kk), kPadK);
            wmma::mma_sync(acc[j], a, b, acc[j]);
          }
        }
      }
      __syncthreads();  // the next stage() overwrites this buffer
    }
#pragma unroll
    for (int j = 0; j < kFrags; ++j)
      if (col0 + 16 * j < head_dim)
        wmma::store_matrix_sync(s_c + row * S::kLdc + col0 + 16 * j, acc[j], S::kLdc, wmma::mem_row_major);
  } else {
    constexpr int kOwned = S::kBlockM * D_MAX / S::kThreads;  // thread t owns elements t, t + kThreads, ...
    float acc[kOwned];
#pragma unroll
    for (int i = 0; i < kOwned; ++i) acc[i] = 0.0f;
    for (int kt = 0; kt < n_k; ++kt) {
      const T* s_x = tile(kt);
      const T* s_w = s_x + S::kBlockM * kPadK;
#pragma unroll
      for (int i = 0; i < kOwned; ++i) {
        const int e = threadIdx.x + i * S::kThreads;
        const int c = e % D_MAX;
        if (c < head_dim) {
          const T* a = s_x + (e / D_MAX) * kPadK;
          const T* b = s_w + c * kPadK;
          float sum = acc[i];
#pragma unroll 8
          for (int kk = 0; kk < kBlockK; ++kk) sum = fmaf(static_cast<float>(a[kk]), static_cast<float>(b[kk]), sum);
          acc[i] = sum;
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < kOwned; ++i) {
      const int e = threadIdx.x + i * S::kThreads;
      if (e % D_MAX < head_dim) s_c[(e / D_MAX) * S::kLdc + e % D_MAX] = acc[i];
    }
  }
  __syncthreads();
}

template <typename T, int D_MAX, bool TENSOR_CORES, bool VEC>
__global__ void __launch_bounds__(Shape<D_MAX, TENSOR_CORES>::kThreads, 1)
qkv_rope_projection_kernel(const T* __restrict__ x, int64_t n_tokens, int64_t hidden, int64_t stride_xn,
                           int64_t stride_xk, const __grid_constant__ Projection<T> q,
                           const __grid_constant__ Projection<T> k, const __grid_constant__ Projection<T> v,
                           T* __restrict__ out, int64_t stride_on, const int64_t* __restrict__ phases,
                           const int64_t* __restrict__ positions, int head_dim, float norm_eps, float scale,
                           bool interleaved) {
  using S = Shape<D_MAX, TENSOR_CORES>;
  extern __shared__ __align__(128) unsigned char smem[];
  float* s_c = reinterpret_cast<float*>(smem);  // the fp32 tile reuses the staging buffers after the main loop
  constexpr size_t kStaging = 2 * (S::kBlockM + D_MAX) * kPadK * sizeof(T);
  constexpr size_t kTile = S::kBlockM * S::kLdc * sizeof(float);
  float* s_rms = reinterpret_cast<float*>(smem + (kStaging > kTile ? kStaging : kTile));

  const int64_t slot = blockIdx.y;
  const Head<T> h = select_head(q, k, v, slot, head_dim);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * S::kBlockM;
  project_tile<T, D_MAX, TENSOR_CORES, VEC>(s_c, reinterpret_cast<T*>(smem), x, m0, n_tokens, hidden, stride_xn,
                                            stride_xk, h, head_dim);

  if (h.bias != nullptr) {
    for (int e = threadIdx.x; e < S::kBlockM * D_MAX; e += blockDim.x)
      if (e % D_MAX < head_dim) s_c[(e / D_MAX) * S::kLdc + e % D_MAX] += static_cast<float>(h.bias[h.row0 + e % D_MAX]);
    __syncthreads();
  }
  const bool normalize = h.rotate && h.norm != nullptr;
  if (normalize) {  // one warp per row: rsqrt(mean of squares over the head + eps)
    const int lane = threadIdx.x % 32;
    for (int r = threadIdx.x / 32; r < S::kBlockM; r += blockDim.x / 32) {
      float sum = 0.0f;
      for (int c = lane; c < head_dim; c += 32) sum = fmaf(s_c[r * S::kLdc + c], s_c[r * S::kLdc + c], sum);
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
      if (lane == 0) s_rms[r] = rsqrtf(sum / head_dim + norm_eps);
    }
    __syncthreads();
  }
  const int half = head_dim / 2;
  for (int e = threadIdx.x; e < S::kBlockM * half; e += blockDim.x) {
    const int r = e / half, i = e % half;
    const int64_t token = m0 + r;
    if (token >= n_tokens) continue;
    const int d1 = interleaved ? 2 * i : i;
    const int d2 = interleaved ? 2 * i + 1 : i + half;
    float y1 = s_c[r * S::kLdc + d1], y2 = s_c[r * S::kLdc + d2];
    if (normalize) {
      y1 *= s_rms[r] * static_cast<float>(h.norm[d1]);
      y2 *= s_rms[r] * static_cast<float>(h.norm[d2]);
    }
    if (h.rotate) {
      float sn, cs;
      exact_sincos(positions[token], phases[i], &sn, &cs);
      cs *= scale;
      sn *= scale;
      const float x1 = y1, x2 = y2;
      y1 = x1 * cs - x2 * sn;
      y2 = x2 * cs + x1 * sn;
    }
    T* row = out + token * stride_on + slot * head_dim;
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
Projection<T> projection(const at::Tensor& w, const c10::optional<at::Tensor>& b, const c10::optional<at::Tensor>& n,
                         int64_t heads) {
  return {w.data_ptr<T>(), b.has_value() ? b->data_ptr<T>() : nullptr, n.has_value() ? n->data_ptr<T>() : nullptr,
          heads, w.stride(0), w.stride(1)};
}

template <typename T, int D_MAX, bool TENSOR_CORES, bool VEC>
void launch_config(const at::Tensor& x, const Projection<T>& q, const Projection<T>& k, const Projection<T>& v,
                   const at::Tensor& out, const at::Tensor& phases, const at::Tensor& positions, int head_dim,
                   float norm_eps, float scale, bool interleaved) {
  using S = Shape<D_MAX, TENSOR_CORES>;
  auto kernel = qkv_rope_projection_kernel<T, D_MAX, TENSOR_CORES, VEC>;
  const size_t staging = 2 * static_cast<size_t>(S::kBlockM + D_MAX) * kPadK * sizeof(T);
  const size_t tile = static_cast<size_t>(S::kBlockM) * S::kLdc * sizeof(float);
  const size_t smem = std::max(staging, tile) + S::kBlockM * sizeof(float);
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const int64_t n_tokens = x.size(0);
  const dim3 grid(static_cast<unsigned>((n_tokens + S::kBlockM - 1) / S::kBlockM),
                  static_cast<unsigned>(q.heads + k.heads + v.heads));
  kernel<<<grid, S::kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<T>(), n_tokens, x.size(1), x.stride(0), x.stride(1), q, k, v, out.data_ptr<T>(), out.stride(0),
      phases.data_ptr<int64_t>(), positions.data_ptr<int64_t>(), head_dim, norm_eps, scale, interleaved);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int D_MAX>
void launch_bucket(const at::Tensor& x, bool vec, const Projection<T>& q, const Projection<T>& k,
                   const Projection<T>& v, const at::Tensor& out, const at::Tensor& phases, const at::Tensor& positions,
                   int head_dim, float norm_eps, float scale, bool interleaved) {
  if constexpr (Wmma<T>::kSupported) {
    if (head_dim % 16 == 0) {
      if (vec) return launch_config<T, D_MAX, true, true>(x, q, k, v, out, phases, positions, head_dim, norm_eps,
                                                          scale, interleaved);
      return launch_config<T, D_MAX, true, false>(x, q, k, v, out, phases, positions, head_dim, norm_eps, scale,
                                                  interleaved);
    }
  }
  if (vec) return launch_config<T, D_MAX, false, true>(x, q, k, v, out, phases, positions, head_dim, norm_eps,
                                                       scale, interleaved);
  launch_config<T, D_MAX, false, false>(x, q, k, v, out, phases, positions, head_dim, norm_eps, scale, interleaved);
}

}  // namespace

void qkv_rope_projection_cuda(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_k,
                              const c10::optional<at::Tensor>& w_v, const c10::optional<at::Tensor>& b_q,
                              const c10::optional<at::Tensor>& b_k, const c10::optional<at::Tensor>& b_v,
                              const c10::optional<at::Tensor>& n_q, const c10::optional<at::Tensor>& n_k,
                              double norm_eps, const at::Tensor& out, int64_t n_q_heads, int64_t n_k_heads,
                              const at::Tensor& phases, const at::Tensor& positions, bool interleaved,
                              double scale) {
  const char* op = "dprope qkv_rope_projection";
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, op, ": x must be a CUDA [N, hidden] tensor");
  TORCH_CHECK(std::isfinite(scale) && scale > 0, op, ": scale must be finite and positive, got ", scale);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == x.size(0) && out.is_contiguous() &&
                  out.scalar_type() == x.scalar_type() && out.device() == x.device(),
              op, ": out must be contiguous [N, Hq + Hk + Hv, head_dim] in x's dtype and device");
  const int64_t head_dim = out.size(2);
  TORCH_CHECK(head_dim > 0 && head_dim % 2 == 0 && head_dim <= kMaxHeadDim, op, ": head_dim must be even and at most ",
              kMaxHeadDim);
  const int64_t n_v_heads = out.size(1) - n_q_heads - n_k_heads;
  TORCH_CHECK(n_q_heads >= 0 && n_k_heads >= 0 && n_v_heads >= 0 && (n_v_heads == 0 || w_v.has_value()), op,
              ": the head counts do not add up to out's heads");
  TORCH_CHECK(out.size(1) <= 65535, op, ": too many heads for one launch");
  TORCH_CHECK(phases.scalar_type() == at::kLong && phases.is_contiguous() && 2 * phases.numel() == head_dim &&
                  phases.device() == x.device(),
              op, ": phases must be contiguous int64 [head_dim / 2] on x's device");
  TORCH_CHECK(positions.dim() == 1 && positions.size(0) == x.size(0) && positions.is_contiguous() &&
                  positions.scalar_type() == at::kLong && positions.device() == x.device(),
              op, ": positions must be contiguous int64 [N] on x's device");
  const std::array<const at::Tensor*, 3> weights = {&w_q, &w_k, w_v.has_value() ? &*w_v : nullptr};
  const std::array<int64_t, 3> heads = {n_q_heads, n_k_heads, n_v_heads};
  const std::array<const c10::optional<at::Tensor>*, 5> vectors = {&b_q, &b_k, &b_v, &n_q, &n_k};
  for (int i = 0; i < 3; ++i) {
    if (weights[i] == nullptr) continue;
    const at::Tensor& w = *weights[i];
    TORCH_CHECK(w.dim() == 2 && w.size(1) == x.size(1) && w.size(0) == heads[i] * head_dim &&
                    w.scalar_type() == x.scalar_type() && w.device() == x.device(),
                op, ": weights must be [H * head_dim, hidden] in x's dtype and device, matching the head counts");
  }
  for (int i = 0; i < 5; ++i) {
    if (!vectors[i]->has_value()) continue;
    const at::Tensor& b = vectors[i]->value();
    const int64_t length = i < 3 ? heads[i] * head_dim : head_dim;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == length && b.is_contiguous() && b.scalar_type() == x.scalar_type() &&
                    b.device() == x.device(),
                op, ": biases ([H * head_dim]) and norm weights ([head_dim]) must be contiguous in x's dtype and device");
  }
  if (x.size(0) == 0 || out.size(1) == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  bool vec = aligned16(x);
  for (const at::Tensor* w : weights) vec = vec && (w == nullptr || aligned16(*w));
  const int d = static_cast<int>(head_dim);
  const float eps = static_cast<float>(norm_eps), s = static_cast<float>(scale);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const auto pq = projection<T>(w_q, b_q, n_q, n_q_heads);
    const auto pk = projection<T>(w_k, b_k, n_k, n_k_heads);
    const auto pv = projection<T>(w_v.has_value() ? *w_v : w_q, w_v.has_value() ? b_v : c10::nullopt, c10::nullopt,
                                  n_v_heads);
    if (d <= 64) return launch_bucket<T, 64>(x, vec, pq, pk, pv, out, phases, positions, d, eps, s, interleaved);
    if (d <= 128) return launch_bucket<T, 128>(x, vec, pq, pk, pv, out, phases, positions, d, eps, s, interleaved);
    launch_bucket<T, 256>(x, vec, pq, pk, pv, out, phases, positions, d, eps, s, interleaved);
  };
  switch (x.scalar_type()) {
    case at::kFloat: return run(float{});
    case at::kHalf: return run(at::Half{});
    case at::kBFloat16: return run(at::BFloat16{});
    default: TORCH_CHECK(false, op, ": x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
}

}  // namespace dprope
