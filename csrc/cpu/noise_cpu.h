// Counter-based Gaussian noise on the CPU (same semantics as cuda/noise_cuda.h).
#pragma once
#include <cstdint>

namespace rgf {

// out[i, j] = x[j] + sigma * z_j(seed, stream, start + i) for i < n, j < dim, where z is the
// package's normal stream (common/normal.h). Deterministic: independent of threads and splits.
void gaussian_noise_cpu(const float* x, int64_t dim, float sigma, int64_t n, uint64_t seed,
                        uint32_t stream, uint64_t start, float* out);

// The raw Philox4x32-10 block for m (counter, key) pairs: counters (m, 4), keys (m, 2), out (m, 4).
void philox4x32_cpu(const uint32_t* counters, const uint32_t* keys, int64_t m, uint32_t* out);

}  // namespace rgf
