// Box-Muller transform of Philox bits to standard normals, written so host and device give the
// same bits (see rgf_macros.h). Only explicit fmaf and non-contractible mul/add are used, and the
// transcendental functions are our own polynomials (Cephes single-precision coefficients), since
// libm and CUDA's logf/sinf/cosf differ in their last bits.
#pragma once
#include <cmath>

#include "philox.h"

namespace rgf {

// Natural log for normal floats u in (0, 1]: u = m 2^e with m in [sqrt(1/2), sqrt(2)),
// ln u = e ln 2 + ln(1 + x), x = m - 1 (exact by Sterbenz), the series in x is Cephes' logf
// minimax polynomial; ln 2 is split in a short high part (exact times e) and a low part.
// Max error about 1 ulp on (0, 1].
RGF_HD float log_unit(float u) {
  const uint32_t bits = float_as_uint(u);
  int e = static_cast<int>(bits >> 23) - 126;                   // u = m 2^e, m in [0.5, 1)
  const float m = uint_as_float((bits & 0x007FFFFFu) | 0x3F000000u);
  const bool below = m < 0.70710678118654752f;                   // move m into [sqrt(.5), sqrt(2))
  e = below ? e - 1 : e;
  const float x = below ? RGF_FSUB(RGF_FADD(m, m), 1.0f) : RGF_FSUB(m, 1.0f);
  const float z = RGF_FMUL(x, x);
  float p = 7.0376836292e-2f;
  p = fmaf(p, x, -1.1514610310e-1f);
  p = fmaf(p, x, 1.1676998740e-1f);
  p = fmaf(p, x, -1.2420140846e-1f);
  p = fmaf(p, x, 1.4249322787e-1f);
  p = fmaf(p, x, -1.6668057665e-1f);
  p = fmaf(p, x, 2.0000714765e-1f);
  p = fmaf(p, x, -2.4999993993e-1f);
  p = fmaf(p, x, 3.3333331174e-1f);
  const float fe = static_cast<float>(e);
  float y = RGF_FMUL(RGF_FMUL(p, x), z);       // x^3 P(x)
  y = fmaf(fe, -2.12194440e-4f, y);           // e * (ln 2 - 0.693359375)
  y = fmaf(z, -0.5f, y);                      // - x^2 / 2
  return fmaf(fe, 0.693359375f, RGF_FADD(x, y));
}

// sin and cos of the angle 2 pi b / 2^32. The reduction to the nearest quarter turn is done on
// the integer, so it is exact: b = q 2^30 + r with |r| <= 2^29, angle = q pi/2 + t,
// t = r 2 pi / 2^32 in [-pi/4, pi/4]; then Cephes' sinf/cosf polynomials on that interval.
struct Float2 {
  float first, second;
};
struct Float4 {
  float x, y, z, w;
};

// Returns (sin, cos). Values are returned, not written through pointers, so the CPU loop over
// blocks vectorises.
RGF_HD Float2 sincos_turns(uint32_t b) {
  const uint32_t q = (b + 0x20000000u) >> 30;               // nearest quarter turn, 0..3 (mod 4)
  const int32_t r = static_cast<int32_t>(b - (q << 30));    // in [-2^29, 2^29)
  const float t = RGF_FMUL(static_cast<float>(r), 1.46291807926715968e-9f);  // 2 pi / 2^32
  const float z = RGF_FMUL(t, t);
  const float ps = fmaf(fmaf(-1.9515295891e-4f, z, 8.3321608736e-3f), z, -1.6666654611e-1f);
  const float s = fmaf(RGF_FMUL(ps, z), t, t);
  const float pc =
      fmaf(fmaf(2.443315711809948e-5f, z, -1.388731625493765e-3f), z, 4.166664568298827e-2f);
  const float c = fmaf(RGF_FMUL(pc, z), z, fmaf(-0.5f, z, 1.0f));
  // Rotate by q quarter turns: (sin, cos) of (q pi/2 + t).
  const uint32_t qq = q & 3u;
  const float sin_out = qq == 0u ? s : (qq == 1u ? c : (qq == 2u ? -s : -c));
  const float cos_out = qq == 0u ? c : (qq == 1u ? -s : (qq == 2u ? -c : s));
  return Float2{sin_out, cos_out};
}

// Two standard normals from two uniform words. u = (a + 1/2) 2^-32 is in (0, 1] (never 0, so
// the log is finite); the radius sqrt(-2 ln u) is at most sqrt(66 ln 2) = 6.76, so the tails
// beyond 6.76 sigma (probability 1.4e-11 per normal) are cut off.
RGF_HD Float2 box_muller(uint32_t a, uint32_t b) {
  const float u = fmaf(static_cast<float>(a), 2.3283064365386963e-10f, 1.1641532182693481e-10f);
  const float radius = sqrtf(RGF_FMUL(-2.0f, log_unit(u)));
  const Float2 sc = sincos_turns(b);
  return Float2{RGF_FMUL(radius, sc.second), RGF_FMUL(radius, sc.first)};  // (r cos, r sin)
}

// Four standard normals of one Philox block: (x, y) and (z, w) are Box-Muller pairs.
RGF_HD Float4 normal_block(uint64_t seed, uint32_t stream, uint64_t sample, uint32_t block) {
  const Uint4 bits = noise_block_bits(seed, stream, sample, block);
  const Float2 p = box_muller(bits.x, bits.y);
  const Float2 q = box_muller(bits.z, bits.w);
  return Float4{p.first, p.second, q.first, q.second};
}

// The rounding of noisy_block to a float32 output (the CPU module's only output type).
struct KeepFloat {
  RGF_HD float operator()(float v) const { return v; }
};

// One Philox block of a noisy sample, the one body of both modules' gaussian_noise kernels
// (cpu/noise_cpu.h, cuda/noise_cuda.h). With x and out pointing at the block's first element
// (element 4 block of the sample) and z = normal_block(seed, stream, sample, block), it writes
// out[l] = Convert{}(fmaf(sigma, z_l, x[l])) (the sum formed in float32, then rounded once to T)
// for the lanes = min(4, dim - 4 block) elements l < lanes, and reads x only there.
// Written for the CPU's `omp simd` loop over full blocks: where lanes is the constant 4 the lane
// tests fold away after inlining, leaving a branch-free body; and only scalars and pointers cross
// the call (an aggregate argument, a Float4 or a conversion object, becomes a per-lane array in
// that loop whose stores stop GCC's vectoriser), hence normal_block is called in here.
template <class T = float, class Convert = KeepFloat>
RGF_HD void noisy_block(const float* x, float sigma, uint64_t seed, uint32_t stream, uint64_t sample,
                        uint32_t block, int64_t lanes, T* out) {
  const Float4 z = normal_block(seed, stream, sample, block);
  const Convert convert{};
  out[0] = convert(fmaf(sigma, z.x, x[0]));
  if (lanes > 1) out[1] = convert(fmaf(sigma, z.y, x[1]));
  if (lanes > 2) out[2] = convert(fmaf(sigma, z.z, x[2]));
  if (lanes > 3) out[3] = convert(fmaf(sigma, z.w, x[3]));
}

}  // namespace rgf
