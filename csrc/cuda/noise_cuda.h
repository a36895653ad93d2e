// Counter-based Gaussian noise on a CUDA device (same semantics as cpu/noise_cpu.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace rgf {

enum class OutDType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// out[i, j] = x[j] + sigma * z_j(seed, stream, start + i) for i < n, j < dim, on `cuda_stream`.
// x is float32 on the device; out has dtype out_dtype (the sum is formed in float32, then
// rounded once to the output type). Asynchronous.
void gaussian_noise_cuda(const float* x, int64_t dim, float sigma, int64_t n, uint64_t seed,
                         uint32_t stream, uint64_t start, void* out, OutDType out_dtype,
                         cudaStream_t cuda_stream);

// Raw Philox4x32-10 blocks on the device: counters (m, 4), keys (m, 2), out (m, 4).
void philox4x32_cuda(const uint32_t* counters, const uint32_t* keys, int64_t m, uint32_t* out,
                     cudaStream_t cuda_stream);

}  // namespace rgf
