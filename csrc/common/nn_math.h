// Per-element math of the nearest-neighbour kernels, shared by the CPU and CUDA backends.
#pragma once
#include <cmath>

#include "rgf_macros.h"

namespace rgf {

// "No neighbour yet": loses every comparison against a real candidate, reported as -1.
constexpr int64_t kNoIndex = INT64_MAX;

// Candidates are ordered by (distance key, gallery index): exact ties go to the lower index, so
// the result does not depend on tiling, thread count or device.
RGF_HD bool nn_before(float da, int64_t ia, float db, int64_t ib) {
  return da < db || (da == db && ia < ib);
}

struct Top1 {
  float d1;
  int64_t i1;
};

struct Top2 {
  float d1;
  int64_t i1;
  float d2;
  int64_t i2;
};

// The empty result of either kind: nn_empty<Top1>() / nn_empty<Top2>().
template <class Top>
RGF_HD Top nn_empty();
template <>
RGF_HD Top1 nn_empty<Top1>() { return Top1{INFINITY, kNoIndex}; }
template <>
RGF_HD Top2 nn_empty<Top2>() { return Top2{INFINITY, kNoIndex, INFINITY, kNoIndex}; }

RGF_HD void nn_push(Top1& t, float d, int64_t i) {
  if (nn_before(d, i, t.d1, t.i1)) {
    t.d1 = d;
    t.i1 = i;
  }
}

RGF_HD void nn_push(Top2& t, float d, int64_t i) {
  if (nn_before(d, i, t.d1, t.i1)) {
    t.d2 = t.d1;
    t.i2 = t.i1;
    t.d1 = d;
    t.i1 = i;
  } else if (nn_before(d, i, t.d2, t.i2)) {
    t.d2 = d;
    t.i2 = i;
  }
}

RGF_HD void nn_merge(Top1& a, const Top1& b) { nn_push(a, b.d1, b.i1); }
RGF_HD void nn_merge(Top2& a, const Top2& b) {
  nn_push(a, b.d1, b.i1);
  nn_push(a, b.d2, b.i2);
}

// Squared l2 distance from the expansion |q s - g|^2 = |q s|^2 + (|g|^2 - 2 s q.g), where s is
// the query row's scale (1, or 1/|q| when normalising). The search ranks candidates by the
// bracket alone, key = fmaf(-2 s, q.g, |g|^2), since |q s|^2 is constant over a row; the reported
// distance adds it back and clamps the rounding error below 0 (the way faiss does).
RGF_HD float nn_key(float minus_two_scale, float dot, float gallery_norm2) {
  return fmaf(minus_two_scale, dot, gallery_norm2);
}
RGF_HD float nn_distance(float query_norm2, float key) { return fmaxf(query_norm2 + key, 0.0f); }
RGF_HD int64_t nn_index_out(int64_t i) { return i == kNoIndex ? -1 : i; }

// Embedding sums are accumulated in fixed point, value * 2^32 rounded to the nearest int64, so
// that the sum is exact and associative: identical for any batch split, thread count or device
// (float atomics are not). A normalised coordinate is in [-1, 1], so 2^31 rows fit in an int64;
// the rounding error is at most 2^-33 per coordinate and row (below float32's own resolution).
constexpr double kFixedScale = 4294967296.0;  // 2^32
constexpr double kFixedUnit = 1.0 / kFixedScale;

// Round v 2^32 to the nearest integer (ties to even), for |v| < 2^19. On the host this uses the
// 1.5 2^52 trick (adding and subtracting it leaves the value rounded to an integer in the default
// rounding mode; exact for |v 2^32| < 2^51), which vectorises where llrint does not; the device
// intrinsic rounds the same way, so both give the same integers.
RGF_HD int64_t to_fixed(double v) {
#if defined(__CUDA_ARCH__)
  return __double2ll_rn(v * kFixedScale);
#else
  constexpr double kRoundMagic = 6755399441055744.0;  // 1.5 * 2^52
  return static_cast<int64_t>((v * kFixedScale + kRoundMagic) - kRoundMagic);
#endif
}

// Rows of norm below this are treated as zero when normalising (1/|e| would overflow float32).
constexpr double kMinNormalizableNorm2 = 1e-60;

// Scale of an embedding row with squared norm `norm2` (accumulated in float64): 1/|e| when
// normalising. A zero (or denormal-tiny) row stays zero (scale 0), which keeps |e s| <= 1 as the
// certificates need.
RGF_HD double row_scale(double norm2, bool normalize) {
  if (!normalize) return 1.0;
  return norm2 >= kMinNormalizableNorm2 ? 1.0 / sqrt(norm2) : 0.0;
}

}  // namespace rgf
