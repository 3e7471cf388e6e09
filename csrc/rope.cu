// RoPE apply with exact fixed-point angles: one block per token, sin/cos of each pair computed
// once into shared memory and reused by every head of q and k.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "dprope.h"

namespace dprope {
namespace {

template <typename scalar_t>
struct Operand {
  const scalar_t* in;
  scalar_t* out;
  int64_t heads;
  int64_t in_b, in_t, in_h, in_d;
  int64_t out_b, out_t, out_h, out_d;
};

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

// Rotates one token of one operand. VEC > 1: NeoX pairing with unit stride along D and 16-byte
// aligned rows, VEC consecutive pairs per 16-byte load of each half.
template <typename scalar_t, int VEC, bool INTERLEAVED>
__device__ void rotate_token(const Operand<scalar_t>& x, int64_t b, int64_t t, int half,
                             const float* s_cos, const float* s_sin) {
  const int groups = half / VEC;
  const scalar_t* row_in = x.in + b * x.in_b + t * x.in_t;
  scalar_t* row_out = x.out + b * x.out_b + t * x.out_t;
  for (int64_t idx = threadIdx.x; idx < x.heads * groups; idx += blockDim.x) {
    const int64_t h = idx / groups;
    const int i0 = static_cast<int>(idx % groups) * VEC;
    const scalar_t* p_in = row_in + h * x.in_h;
    scalar_t* p_out = row_out + h * x.out_h;
    if constexpr (VEC > 1) {
      Pack<scalar_t, VEC> a = *reinterpret_cast<const Pack<scalar_t, VEC>*>(p_in + i0);
      Pack<scalar_t, VEC> c = *reinterpret_cast<const Pack<scalar_t, VEC>*>(p_in + half + i0);
      Pack<scalar_t, VEC> ya, yc;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float x1 = static_cast<float>(a.v[j]);
        const float x2 = static_cast<float>(c.v[j]);
        const float cs = s_cos[i0 + j], sn = s_sin[i0 + j];
        ya.v[j] = static_cast<scalar_t>(x1 * cs - x2 * sn);
        yc.v[j] = static_cast<scalar_t>(x2 * cs + x1 * sn);
      }
      *reinterpret_cast<Pack<scalar_t, VEC>*>(p_out + i0) = ya;
      *reinterpret_cast<Pack<scalar_t, VEC>*>(p_out + half + i0) = yc;
    } else {
      const int64_t d1 = INTERLEAVED ? 2 * i0 : i0;
      const int64_t d2 = INTERLEAVED ? 2 * i0 + 1 : i0 + half;
      const float x1 = static_cast<float>(p_in[d1 * x.in_d]);
      const float x2 = static_cast<float>(p_in[d2 * x.in_d]);
      const float cs = s_cos[i0], sn = s_sin[i0];
      p_out[d1 * x.out_d] = static_cast<scalar_t>(x1 * cs - x2 * sn);
      p_out[d2 * x.out_d] = static_cast<scalar_t>(x2 * cs + x1 * sn);
    }
  }
}

template <typename scalar_t, typename pos_t, int VEC, bool INTERLEAVED>
__global__ void rope_kernel(Operand<scalar_t> q, Operand<scalar_t> k, const int64_t* __restrict__ phases,
                            const pos_t* __restrict__ positions, int64_t pos_b, int64_t pos_t_stride,
                            int64_t seq_len, int half, bool conjugate) {
  extern __shared__ float s_trig[];
  float* s_cos = s_trig;
  float* s_sin = s_trig + half;
  const int64_t token = blockIdx.x;
  const int64_t b = token / seq_len;
  const int64_t t = token % seq_len;
  const int64_t pos = static_cast<int64_t>(positions[b * pos_b + t * pos_t_stride]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = exact_angle(pos, phases[i]);
    float sn, cs;
    sincosf(angle, &sn, &cs);
    s_cos[i] = cs;
    s_sin[i] = conjugate ? -sn : sn;
  }
  __syncthreads();
  rotate_token<scalar_t, VEC, INTERLEAVED>(q, b, t, half, s_cos, s_sin);
  rotate_token<scalar_t, VEC, INTERLEAVED>(k, b, t, half, s_cos, s_sin);
}

template <typename scalar_t>
Operand<scalar_t> operand(const at::Tensor& x, const at::Tensor& out) {
  return {x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), x.size(2),
          x.stride(0), x.stride(1), x.stride(2), x.stride(3),
          out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
}

// 16-byte vectors fit when every row of both halves starts 16-byte aligned with unit stride.
bool vectorizable(const at::Tensor& t, int half, int vec) {
  if (t.numel() == 0) return true;
  if (t.stride(3) != 1 || half % vec) return false;
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16) return false;
  for (int d = 0; d < 3; ++d)
    if ((t.stride(d) * t.element_size()) % 16) return false;
  return true;
}

template <typename scalar_t, typename pos_t>
void launch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& out_q, const at::Tensor& out_k,
            const at::Tensor& phases, const at::Tensor& positions, bool interleaved, bool conjugate) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int half = static_cast<int>(phases.numel());
  const int64_t seq_len = q.size(1);
  const int64_t n_tokens = q.size(0) * seq_len;
  if (n_tokens == 0) return;
  auto qo = operand<scalar_t>(q, out_q);
  auto ko = operand<scalar_t>(k, out_k);
  const bool vec = !interleaved && vectorizable(q, half, kVec) && vectorizable(k, half, kVec) &&
                   vectorizable(out_q, half, kVec) && vectorizable(out_k, half, kVec);
  const int64_t work = std::max(q.size(2), k.size(2)) * (vec ? half / kVec : half);
  const int threads = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, (work + 31) / 32 * 32)));
  const size_t smem = 2 * half * sizeof(float);
  const dim3 grid(static_cast<unsigned>(n_tokens));
  auto stream = c10::cuda::getCurrentCUDAStream();
  const pos_t* pos = positions.data_ptr<pos_t>();
  const int64_t* ph = phases.data_ptr<int64_t>();
  if (vec) {
    rope_kernel<scalar_t, pos_t, kVec, false><<<grid, threads, smem, stream>>>(
        qo, ko, ph, pos, positions.stride(0), positions.stride(1), seq_len, half, conjugate);
  } else if (interleaved) {
    rope_kernel<scalar_t, pos_t, 1, true><<<grid, threads, smem, stream>>>(
        qo, ko, ph, pos, positions.stride(0), positions.stride(1), seq_len, half, conjugate);
  } else {
    rope_kernel<scalar_t, pos_t, 1, false><<<grid, threads, smem, stream>>>(
        qo, ko, ph, pos, positions.stride(0), positions.stride(1), seq_len, half, conjugate);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void rope_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& out_q, const at::Tensor& out_k,
               const at::Tensor& phases, const at::Tensor& positions, bool interleaved, bool conjugate) {
  TORCH_CHECK(q.is_cuda(), "dprope rope: q must be a CUDA tensor");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && out_q.sizes() == q.sizes() && out_k.sizes() == k.sizes(),
              "dprope rope: q, k must be [B, T, H, D] and outputs must match them");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "dprope rope: k must match q in B, T and D");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && out_q.scalar_type() == q.scalar_type() &&
                  out_k.scalar_type() == q.scalar_type(),
              "dprope rope: q, k and outputs must share a dtype");
  TORCH_CHECK(phases.scalar_type() == at::kLong && phases.dim() == 1 && phases.is_contiguous(),
              "dprope rope: phases must be a contiguous 1-D int64 tensor");
  TORCH_CHECK(2 * phases.numel() <= q.size(3), "dprope rope: 2 * len(phases) exceeds the head dim");
  TORCH_CHECK(positions.dim() == 2 && positions.size(0) == q.size(0) && positions.size(1) == q.size(1),
              "dprope rope: positions must be [B, T]");
  TORCH_CHECK(positions.scalar_type() == at::kInt || positions.scalar_type() == at::kLong,
              "dprope rope: positions must be int32 or int64");
  for (const at::Tensor* t : {&k, &out_q, &out_k, &phases, &positions})
    TORCH_CHECK(t->device() == q.device(), "dprope rope: every tensor must be on q's device");
  TORCH_CHECK(q.size(0) * q.size(1) <= std::numeric_limits<int32_t>::max(),
              "dprope rope: more than 2**31 - 1 tokens in one call");
  const c10::cuda::CUDAGuard guard(q.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "dprope_rope", [&] {
    if (positions.scalar_type() == at::kInt)
      launch<scalar_t, int32_t>(q, k, out_q, out_k, phases, positions, interleaved, conjugate);
    else
      launch<scalar_t, int64_t>(q, k, out_q, out_k, phases, positions, interleaved, conjugate);
  });
}

}  // namespace dprope
