#include "dot_tile.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace rgf {

std::vector<float> pack_gallery_panels(const float* gallery, int64_t rows, int64_t dim) {
  const int64_t panels = (rows + kPanel - 1) / kPanel;
  std::vector<float> packed(static_cast<size_t>(panels * kPanel * dim), 0.0f);
#pragma omp parallel for schedule(static) if (rows * dim > (int64_t{1} << 16))
  for (int64_t p = 0; p < panels; ++p) {
    float* dst = packed.data() + p * kPanel * dim;
    const int64_t n = std::min(kPanel, rows - p * kPanel);
    for (int64_t j = 0; j < n; ++j) {
      const float* src = gallery + (p * kPanel + j) * dim;
      for (int64_t k = 0; k < dim; ++k) dst[k * kPanel + j] = src[k];
    }
  }
  return packed;
}

namespace {

// One micro-tile: kRows query rows (zero rows beyond nrows) x one panel.
inline void microtile(const float* const q[kRows], int64_t dim, const float* panel, float acc_out[kRows][kPanel]) {
#if defined(__AVX512F__)
  __m512 acc[kRows][2];
  for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < dim; ++k) {
    const __m512 b0 = _mm512_loadu_ps(panel + k * kPanel);
    const __m512 b1 = _mm512_loadu_ps(panel + k * kPanel + 16);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512 a = _mm512_set1_ps(q[r][k]);
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    _mm512_storeu_ps(acc_out[r], acc[r][0]);
    _mm512_storeu_ps(acc_out[r] + 16, acc[r][1]);
  }
#else
  // Portable path: the same sequence of fused multiply-adds per element.
  for (int r = 0; r < kRows; ++r)
    for (int64_t j = 0; j < kPanel; ++j) acc_out[r][j] = 0.0f;
  for (int64_t k = 0; k < dim; ++k) {
    const float* b = panel + k * kPanel;
    for (int r = 0; r < kRows; ++r) {
      const float a = q[r][k];
#pragma omp simd
      for (int64_t j = 0; j < kPanel; ++j) acc_out[r][j] = fmaf(a, b[j], acc_out[r][j]);
    }
  }
#endif
}

}  // namespace

void dot_microtiles(const float* q, int64_t nrows, int64_t dim, const float* panels, int64_t panel0,
                    int64_t npanels, float* out, int64_t ld) {
  // Rows past nrows point at a zero row, so every micro-tile runs the same code.
  thread_local std::vector<float> zeros;
  if (static_cast<int64_t>(zeros.size()) < dim) zeros.assign(static_cast<size_t>(dim), 0.0f);
  const float* rows[kRows];
  for (int r = 0; r < kRows; ++r) rows[r] = r < nrows ? q + r * dim : zeros.data();
  alignas(64) float acc[kRows][kPanel];
  for (int64_t p = 0; p < npanels; ++p) {
    microtile(rows, dim, panels + (panel0 + p) * kPanel * dim, acc);
    for (int64_t r = 0; r < nrows; ++r) std::memcpy(out + r * ld + p * kPanel, acc[r], sizeof(float) * kPanel);
  }
}

}  // namespace rgf
