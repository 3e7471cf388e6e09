// Angle histogram: grid (chunk of positions, frequency). Counts go to a 32-bit shared-memory
// sub-histogram (native shared atomics) that is added to the int64 totals once per bin; weights
// and bin counts that do not fit shared memory go straight to global memory (native 64-bit and
// float64 global atomics). Integer sums are exact in any order; float64 sums follow the atomics'
// order, so they can differ between runs in the last bits.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "dprope.h"

namespace dprope {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxChunk = 1ll << 30;  // positions per block: a 32-bit bin counter cannot overflow

__device__ __forceinline__ int bin_of(uint64_t pos, uint64_t phase, int bins) {
  return static_cast<int>(__umul64hi(pos * phase, static_cast<uint64_t>(bins)));  // floor(turn * bins / 2**64)
}

__device__ __forceinline__ uint64_t position(const int64_t* positions, int64_t start, int64_t n) {
  return positions ? static_cast<uint64_t>(positions[n]) : static_cast<uint64_t>(start + n);
}

__global__ void __launch_bounds__(kThreads)
count_shared_kernel(const int64_t* __restrict__ phases, const int64_t* __restrict__ positions,
                    unsigned long long* __restrict__ out, int64_t n_pos, int64_t start, int bins, int64_t chunk) {
  extern __shared__ unsigned int s_hist[];
  const uint64_t phase = static_cast<uint64_t>(phases[blockIdx.y]);
  for (int i = threadIdx.x; i < bins; i += blockDim.x) s_hist[i] = 0;
  __syncthreads();
  const int64_t first = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t last = min(first + chunk, n_pos);
  for (int64_t n = first + threadIdx.x; n < last; n += blockDim.x)
    atomicAdd(s_hist + bin_of(position(positions, start, n), phase, bins), 1u);
  __syncthreads();
  unsigned long long* row = out + static_cast<int64_t>(blockIdx.y) * bins;
  for (int i = threadIdx.x; i < bins; i += blockDim.x)
    if (s_hist[i] != 0) atomicAdd(row + i, static_cast<unsigned long long>(s_hist[i]));
}

__device__ __forceinline__ void add(unsigned long long* p, int64_t v) { atomicAdd(p, static_cast<unsigned long long>(v)); }
__device__ __forceinline__ void add(double* p, double v) { atomicAdd(p, v); }

// out_t: int64_t (counts, or integer weights) or double (float weights), added in global memory.
template <typename out_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
add_global_kernel(const int64_t* __restrict__ phases, const int64_t* __restrict__ positions,
                  const out_t* __restrict__ weights, acc_t* __restrict__ out, int64_t n_pos, int64_t start, int bins,
                  int64_t chunk) {
  const uint64_t phase = static_cast<uint64_t>(phases[blockIdx.y]);
  acc_t* row = out + static_cast<int64_t>(blockIdx.y) * bins;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t last = min(first + chunk, n_pos);
  for (int64_t n = first + threadIdx.x; n < last; n += blockDim.x)
    add(row + bin_of(position(positions, start, n), phase, bins), weights ? weights[n] : static_cast<out_t>(1));
}

template <typename out_t, typename acc_t>
void launch(const at::Tensor& phases, const int64_t* positions, const at::Tensor* weights, const at::Tensor& out,
            int64_t n_pos, int64_t start, int bins) {
  const int64_t n_freq = phases.numel();
  const int64_t blocks_per_freq =
      std::max<int64_t>(1, std::min<int64_t>((n_pos + 65535) / 65536, std::max<int64_t>(1, 4096 / n_freq)));
  const int64_t chunk = std::min(kMaxChunk, (n_pos + blocks_per_freq - 1) / blocks_per_freq);
  const dim3 grid(static_cast<unsigned>((n_pos + chunk - 1) / chunk), static_cast<unsigned>(n_freq));
  acc_t* o = reinterpret_cast<acc_t*>(out.data_ptr<out_t>());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const size_t smem = static_cast<size_t>(bins) * sizeof(unsigned int);
  if (weights == nullptr && smem <= 48 * 1024) {
    count_shared_kernel<<<grid, kThreads, smem, stream>>>(phases.data_ptr<int64_t>(), positions,
                                                          reinterpret_cast<unsigned long long*>(o), n_pos, start,
                                                          bins, chunk);
  } else {
    const out_t* w = weights ? weights->data_ptr<out_t>() : nullptr;
    add_global_kernel<out_t, acc_t><<<grid, kThreads, 0, stream>>>(phases.data_ptr<int64_t>(), positions, w, o,
                                                                   n_pos, start, bins, chunk);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void histogram_cuda(const at::Tensor& phases, const c10::optional<at::Tensor>& positions,
                    const c10::optional<at::Tensor>& weights, const at::Tensor& out, int64_t n_pos,
                    int64_t start, int64_t bins) {
  TORCH_CHECK(out.is_cuda(), "dprope histogram: out must be a CUDA tensor");
  TORCH_CHECK(phases.scalar_type() == at::kLong && phases.dim() == 1 && phases.is_contiguous(),
              "dprope histogram: phases must be a contiguous 1-D int64 tensor");
  TORCH_CHECK(bins >= 2 && bins <= (1 << 24), "dprope histogram: bins must be in [2, 2**24]");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == phases.numel() && out.size(1) == bins && out.is_contiguous(),
              "dprope histogram: out must be a contiguous [n_freq, bins] tensor");
  TORCH_CHECK(out.scalar_type() == at::kLong || out.scalar_type() == at::kDouble,
              "dprope histogram: out must be int64 or float64");
  TORCH_CHECK(n_pos >= 0 && start >= 0, "dprope histogram: n_pos and start must be non-negative");
  TORCH_CHECK(phases.numel() <= 65535, "dprope histogram: at most 65535 frequencies per call");
  const int64_t* pos = nullptr;
  if (positions.has_value()) {
    TORCH_CHECK(positions->scalar_type() == at::kLong && positions->is_contiguous() && positions->numel() == n_pos,
                "dprope histogram: positions must be a contiguous int64 tensor of n_pos values");
    TORCH_CHECK(positions->device() == out.device(), "dprope histogram: positions must be on out's device");
    pos = positions->data_ptr<int64_t>();
  }
  const at::Tensor* w = nullptr;
  if (weights.has_value()) {
    TORCH_CHECK(weights->scalar_type() == out.scalar_type() && weights->is_contiguous() && weights->numel() == n_pos,
                "dprope histogram: weights must be contiguous, of out's dtype, with n_pos values");
    TORCH_CHECK(weights->device() == out.device(), "dprope histogram: weights must be on out's device");
    w = &*weights;
  }
  TORCH_CHECK(phases.device() == out.device(), "dprope histogram: phases must be on out's device");
  if (phases.numel() == 0 || n_pos == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  if (out.scalar_type() == at::kLong)
    launch<int64_t, unsigned long long>(phases, pos, w, out, n_pos, start, static_cast<int>(bins));
  else
    launch<double, double>(phases, pos, w, out, n_pos, start, static_cast<int>(bins));
}

}  // namespace dprope
