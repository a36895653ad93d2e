// Screened nearest-neighbour search, shared by the CPU and CUDA backends: low-precision dot
// products (tensor-core TF32 or bf16 matmul, computed by the caller) pick a few candidates per
// row, the candidates are rescored exactly (the fixed-order float32 dot of the exact kernels),
// and a rigorous error bound decides whether the exact winner is certainly among them. Rows it
// cannot decide are reported undecided (nearest = -1); the caller (retrievalguard_fast/screen.py,
// once for both backends) searches those again with the exact nn_search (same normalize flag,
// same exclude), whose index1 is the exact kernels' winner, so the result is the exact mode's, bit
// for bit, whatever the screening precision. docs/certification.md section 6 derives the bound.
#pragma once
#include <cmath>
#include <string>

#include "nn_math.h"
#include "nn_problem.h"
#include "rgf_macros.h"

namespace rgf {

// At most this many candidates per row are rescored exactly (a ScreenList lives in registers).
constexpr int kMaxScreenCandidates = 16;

// The caller's promises about the screening parameters (host code): the candidate count fits a
// ScreenList, and the error bound is one that screen_key_bound can use.
inline void check_screen_scores(const ScreenScores& s) {
  RGF_ASSERT(s.candidates >= 1 && s.candidates <= kMaxScreenCandidates,
             "screen candidates = " + std::to_string(s.candidates) + " is outside [1, " +
                 std::to_string(kMaxScreenCandidates) + "]");
  RGF_ASSERT(s.rel_error >= 0.0 && s.rel_error < 1.0,
             "screen rel_error = " + std::to_string(s.rel_error) + " is outside [0, 1)");
}

// The `capacity` smallest approximate keys seen so far, ascending in (key, index) order
// (nn_before), so entry capacity - 1 is the smallest key of everything left out once the list
// is full. capacity = candidates + 1: the candidates and the best key outside them.
struct ScreenList {
  float key[kMaxScreenCandidates + 1];
  int64_t index[kMaxScreenCandidates + 1];
  int size;
  int capacity;
};

RGF_HD void screen_init(ScreenList& l, int capacity) {
  l.size = 0;
  l.capacity = capacity;
  for (int i = 0; i <= kMaxScreenCandidates; ++i) {  // defined values even where unused (the
    l.key[i] = INFINITY;                              // CUDA warp merge shuffles every slot)
    l.index[i] = kNoIndex;
  }
}

// Inserts (key, index) if it ranks among the `capacity` smallest; insertion sort (capacity <= 17).
RGF_HD void screen_push(ScreenList& l, float key, int64_t index) {
  if (l.size == l.capacity && !nn_before(key, index, l.key[l.size - 1], l.index[l.size - 1])) return;
  int pos = l.size < l.capacity ? l.size++ : l.capacity - 1;
  while (pos > 0 && nn_before(key, index, l.key[pos - 1], l.index[pos - 1])) {
    l.key[pos] = l.key[pos - 1];
    l.index[pos] = l.index[pos - 1];
    --pos;
  }
  l.key[pos] = key;
  l.index[pos] = index;
}

// The exact mode's dot product q.g: fused multiply-adds in k order from 0, as dot_tile.h and the
// CUDA tile kernel accumulate it, so the rescored key equals the exact kernels' key bit for bit.
RGF_HD float exact_dot(const float* q, const float* g, int64_t dim) {
  float acc = 0.0f;
  for (int64_t k = 0; k < dim; ++k) acc = fmaf(q[k], g[k], acc);
  return acc;
}

// Largest possible |approximate key - exact key| over one row's gallery rows (section 6):
//   key  = fl(fma(m, D, n)),  approximate key = fl(fma(m, A, n)),  m = fl(-2 s), n = fl(|g|^2),
//   D: the exact fixed-order float32 dot, |D - q.g| <= gamma_dim |q||g| (+ underflow),
//   A: the screening dot, |A - q.g| <= screen_rel_error |q||g| (+ underflow; the caller's
//      constant covers input rounding, accumulation in any order and output rounding),
// so |key - approximate key| <= |m| |D - A| + u (|key| + |approximate key|), with |q.g| <= |q||g|
// (Cauchy-Schwarz) and |g| <= G = the row's largest gallery norm. Every term is rounded up and
// the total doubled: a bound that is too small would make the result wrong, one that is too
// large only sends a few more rows to the exact search.
//   scale: s;  row_norm: |q| (the raw row);  gallery_norm2_max: the largest fl(|g|^2) in float32.
RGF_HD double screen_key_bound(double screen_rel_error, int64_t dim, double scale, double row_norm,
                               double gallery_norm2_max) {
  // Every product and sum below is an RGF_D* macro (rgf_macros.h): rounded on its own on both
  // backends, never contracted into an FMA (nvcc would contract the plain a*b+c forms, and the
  // bound would then differ from the CPU module's in the last bit).
  const double u = 5.9604644775390625e-08;     // 2^-24, float32 unit roundoff
  const double tiny = 1.1754943508222875e-38;  // 2^-126: flushing a subnormal moves a value by less
  const double d = static_cast<double>(dim);
  const double a = RGF_DMUL(row_norm, 1.0 + 1e-12);                                 // |q| was summed in float64
  const double G = RGF_DMUL(sqrt(RGF_DMUL(gallery_norm2_max, 1.0 + 4.0 * u)), 1.0 + 1e-12);  // n = fl(|g|^2)
  const double d1u = RGF_DMUL(RGF_DADD(d, 1.0), u);
  const double gamma = d1u / RGF_DSUB(1.0, d1u);
  const double aG = RGF_DMUL(a, G);
  // Subnormal inputs, products or partial sums may be flushed to zero on either path.
  const double underflow = RGF_DMUL(RGF_DMUL(RGF_DADD(d, 2.0), tiny), RGF_DADD(RGF_DADD(a, G), 2.0));
  const double rel_gamma = RGF_DADD(screen_rel_error, gamma);
  const double dot_diff = RGF_DADD(RGF_DMUL(rel_gamma, aG), RGF_DMUL(2.0, underflow));  // >= |D - A|
  const double m = RGF_DMUL(RGF_DMUL(2.0, scale), 1.0 + u);                            // >= |fl(-2 s)|
  const double key_mag = RGF_DADD(
      gallery_norm2_max,
      RGF_DMUL(m, RGF_DADD(RGF_DMUL(aG, RGF_DADD(RGF_DADD(1.0, screen_rel_error), gamma)), underflow)));
  const double m_dot = RGF_DMUL(m, dot_diff);
  const double rounding = RGF_DMUL(RGF_DMUL(2.0, u), RGF_DADD(key_mag, m_dot));
  return RGF_DMUL(2.0, RGF_DADD(RGF_DADD(m_dot, rounding), 2.0 * 1.401298464324817e-45));
}

// Whether the exact winner is certainly among the candidates: every row left out has an
// approximate key >= outside_key, hence an exact key >= outside_key - bound, which must be
// strictly above the best exact candidate key (so it cannot win, not even a tie by index).
// `all_candidates`: nothing was left out (the row has at most `candidates` gallery rows).
RGF_HD bool screen_verified(bool all_candidates, float best_exact_key, float outside_key, double bound) {
  if (all_candidates) return true;
  return static_cast<double>(best_exact_key) < static_cast<double>(outside_key) - bound;
}

}  // namespace rgf
