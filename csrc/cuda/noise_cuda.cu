#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../common/normal.h"
#include "cuda_check.h"
#include "noise_cuda.h"

namespace rgf {
namespace {

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

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
    const Float4 block = normal_block(seed, stream, start + static_cast<uint64_t>(i), static_cast<uint32_t>(b));
    const float z[4] = {block.x, block.y, block.z, block.w};
    T* row = out + i * dim;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int64_t j = 4 * b + l;
      if (j < dim) row[j] = from_float<T>(fmaf(sigma, z[l], x[j]));
    }
  }
}

__global__ void philox_kernel(const uint32_t* __restrict__ counters, const uint32_t* __restrict__ keys,
                              int64_t m, uint32_t* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= m) return;
  const uint32_t* c = counters + 4 * i;
  const Uint4 r = philox4x32_10(Uint4{c[0], c[1], c[2], c[3]}, keys[2 * i], keys[2 * i + 1]);
  out[4 * i + 0] = r.x;
  out[4 * i + 1] = r.y;
  out[4 * i + 2] = r.z;
  out[4 * i + 3] = r.w;
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
