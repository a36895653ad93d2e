// Philox4x32-10 counter-based generator (Salmon, Moraes, Dror, Shaw, SC 2011), the same code on
// host and device. Known-answer vectors are in docs/design.md, section "Noise streams", and in
// python_tests/test_philox.py.
#pragma once
#include "rgf_macros.h"

namespace rgf {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // multipliers of the two S-boxes
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // Weyl key increments (golden ratio, sqrt(3)-1)
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Uint4 {
  uint32_t x, y, z, w;
};

RGF_HD void philox_round(Uint4& c, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c.x;
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c.z;
  const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
  const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
  c = Uint4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
}

// Ten rounds; the key is bumped by the Weyl constants between rounds.
RGF_HD Uint4 philox4x32_10(Uint4 counter, uint32_t key0, uint32_t key1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    philox_round(counter, key0, key1);
    key0 += kPhiloxW0;
    key1 += kPhiloxW1;
  }
  return counter;
}

// The counter layout of the package's noise streams. Element j of noise sample `sample` in
// stream `stream` under `seed` is lane (j % 4) of the block
//     philox4x32_10(counter = (j / 4, sample_lo, sample_hi, stream), key = (seed_lo, seed_hi)).
// It depends on nothing else: not on batch size, thread count, device or work split.
RGF_HD Uint4 noise_block_bits(uint64_t seed, uint32_t stream, uint64_t sample, uint32_t block) {
  const Uint4 counter{block, static_cast<uint32_t>(sample), static_cast<uint32_t>(sample >> 32),
                      stream};
  return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Row i of a batch of raw blocks, the one body of the philox4x32 functions of both modules
// (cpu/noise_cpu.h, cuda/noise_cuda.h): counters (m, 4), keys (m, 2) and out (m, 4) are row-major,
// and out row i = philox4x32_10(counter row i, key row i).
RGF_HD void philox4x32_row(const uint32_t* counters, const uint32_t* keys, int64_t i, uint32_t* out) {
  const uint32_t* c = counters + 4 * i;
  const Uint4 r = philox4x32_10(Uint4{c[0], c[1], c[2], c[3]}, keys[2 * i], keys[2 * i + 1]);
  out[4 * i + 0] = r.x;
  out[4 * i + 1] = r.y;
  out[4 * i + 2] = r.z;
  out[4 * i + 3] = r.w;
}

}  // namespace rgf
