#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../common/normal.h"
#include "cuda_check.h"
#include "noise_cuda.h"

namespace rgf {
namespace {

// The rounding of noisy_block (common/normal.h) to the output type T.
template <class T>
struct FromFloat;
template <>
struct FromFloat<float> {
  __device__ __forceinline__ float operator()(float v) const { return v; }
};
template <>
struct FromFloat<__half> {
  __device__ __forceinline__ __half operator()(float v) const { return __float2half_rn(v); }
};
template <>
struct FromFloat<__nv_bfloat16> {
  __device__ __forceinline__ __nv_bfloat16 operator()(float v) const { return __float2bfloat16_rn(v); }
};

// One thread per Philox block (4 consecutive elements of one sample): a grid-stride loop over
// n * blocks_per_sample blocks. Consecutive threads write consecutive 16-byte groups.
template <class T>
__global__ void gaussian_noise_kernel(const float* __restrict__ x, int64_t dim, float sigma,
                                      int64_t n, uint64_t seed, uint32_t stream, uint64_t start,
                                      T* __restrict__ out) {
  const int64_t blocks_per_sample = (dim + 3) / 4;
  const int64_t total = n * blocks_per_sample;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / blocks_per_sample;
    const int64_t b = t - i * blocks_per_sample;
    noisy_block<T, FromFloat<T>>(x + 4 * b, sigma, seed, stream, start + static_cast<uint64_t>(i),
                                 static_cast<uint32_t>(b), dim - 4 * b, out + i * dim + 4 * b);
  }
}

__global__ void philox_kernel(const uint32_t* __restrict__ counters, const uint32_t* __restrict__ keys,
                              int64_t m, uint32_t* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < m) philox4x32_row(counters, keys, i, out);
}

int grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 65536 * 16 ? (blocks > 0 ? blocks : 1) : 65536 * 16);
}

}  // namespace

void gaussian_noise_cuda(const float* x, int64_t dim, float sigma, int64_t n, uint64_t seed,
                         uint32_t stream, uint64_t start, void* out, OutDType out_dtype,
                         cudaStream_t cuda_stream) {
  if (n == 0 || dim == 0) return;
  constexpr int kThreads = 256;
  const int grid = grid_for(n * ((dim + 3) / 4), kThreads);
  switch (out_dtype) {
    case OutDType::Float32:
      gaussian_noise_kernel<float><<<grid, kThreads, 0, cuda_stream>>>(
          x, dim, sigma, n, seed, stream, start, static_cast<float*>(out));
      break;
    case OutDType::Float16:
      gaussian_noise_kernel<__half><<<grid, kThreads, 0, cuda_stream>>>(
          x, dim, sigma, n, seed, stream, start, static_cast<__half*>(out));
      break;
    case OutDType::BFloat16:
      gaussian_noise_kernel<__nv_bfloat16><<<grid, kThreads, 0, cuda_stream>>>(
          x, dim, sigma, n, seed, stream, start, static_cast<__nv_bfloat16*>(out));
      break;
  }
  cuda_check_launch("gaussian_noise_kernel");
}

void philox4x32_cuda(const uint32_t* counters, const uint32_t* keys, int64_t m, uint32_t* out,
                     cudaStream_t cuda_stream) {
  if (m == 0) return;
  constexpr int kThreads = 256;
  philox_kernel<<<static_cast<int>((m + kThreads - 1) / kThreads), kThreads, 0, cuda_stream>>>(
      counters, keys, m, out);
  cuda_check_launch("philox_kernel");
}

}  // namespace rgf
