#include "noise_cpu.h"

#include <algorithm>
#include <cmath>

#include "../common/normal.h"

namespace rgf {
namespace {

// Blocks [b0, b1) of one noise sample (4 elements a block). The loop body is branch-free so the
// compiler vectorises it across blocks (Philox's 32x32->64 multiplies map to vpmuludq).
inline void fill_full_blocks(const float* x, float sigma, uint64_t seed, uint32_t stream,
                             uint64_t sample, int64_t b0, int64_t b1, float* out) {
#pragma omp simd
  for (int64_t b = b0; b < b1; ++b) {
    // lanes = 4: no lane tests are left in the loop
    noisy_block(x + 4 * b, sigma, seed, stream, sample, static_cast<uint32_t>(b), 4, out + 4 * b);
  }
}

inline void fill_tail(const float* x, int64_t dim, float sigma, uint64_t seed, uint32_t stream,
                      uint64_t sample, float* out) {
  const int64_t b = dim / 4;
  if (4 * b == dim) return;
  noisy_block(x + 4 * b, sigma, seed, stream, sample, static_cast<uint32_t>(b), dim - 4 * b, out + 4 * b);
}

}  // namespace

void gaussian_noise_cpu(const float* x, int64_t dim, float sigma, int64_t n, uint64_t seed,
                        uint32_t stream, uint64_t start, float* out) {
  if (n <= 0 || dim <= 0) return;  // nothing to write (and no loop over n empty copies)
  const int64_t full_blocks = dim / 4;
  constexpr int64_t kChunkBlocks = 2048;  // work unit: 8192 elements
  const int64_t chunks_per_sample = std::max<int64_t>(1, (full_blocks + kChunkBlocks - 1) / kChunkBlocks);
  const int64_t units = n * chunks_per_sample;
  const bool parallel = n * dim >= (int64_t{1} << 15);
  // One flat loop over (sample, chunk of blocks) so that both many small samples and a few
  // large ones keep every thread busy.
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t unit = 0; unit < units; ++unit) {
    const int64_t i = unit / chunks_per_sample;
    const int64_t chunk = unit % chunks_per_sample;
    const uint64_t sample = start + static_cast<uint64_t>(i);
    float* row = out + i * dim;
    const int64_t b0 = chunk * kChunkBlocks;
    const int64_t b1 = std::min(full_blocks, b0 + kChunkBlocks);
    fill_full_blocks(x, sigma, seed, stream, sample, b0, b1, row);
    if (chunk == chunks_per_sample - 1) fill_tail(x, dim, sigma, seed, stream, sample, row);
  }
}

void philox4x32_cpu(const uint32_t* counters, const uint32_t* keys, int64_t m, uint32_t* out) {
  for (int64_t i = 0; i < m; ++i) philox4x32_row(counters, keys, i, out);
}

}  // namespace rgf
