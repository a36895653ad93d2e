// The CPU nearest-neighbour kernels (see nn_cpu.h): input checks counted into the problem slots,
// the tiled exact search, the vote and fixed-point embedding sum, and the per-row screen.
#include "nn_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../common/nn_math.h"
#include "../common/nn_problem.h"
#include "../common/nn_screen.h"
#include "dot_tile.h"

namespace rgf {
namespace {

std::atomic<int64_t> g_tile_rows{512};
std::atomic<int64_t> g_tile_gallery{256};

// Per-row quantities of the distance expansion (see nn_key / nn_distance).
struct RowTerms {
  std::vector<float> minus_two_scale;  // -2 s
  std::vector<float> norm2;            // |q s|^2
  std::vector<double> scale;           // s, in float64 for the embedding sum
  std::vector<double> raw_norm;        // |q| (before scaling), for the screening bound
};

// Sequential float64 sum of squares: the same order whatever the thread count.
inline double sum_squares(const float* v, int64_t dim) {
  double acc = 0.0;
  for (int64_t j = 0; j < dim; ++j) acc += static_cast<double>(v[j]) * v[j];
  return acc;
}

// Whether a row of squared norm `norm2` is refused (kBadRows / kBadGalleryRows): not finite
// (NaN/inf values) or too large for the float32 distance expansion. False for NaN comparisons.
inline bool bad_norm2(double norm2) { return !(norm2 <= kMaxRowNorm2); }

// Squared gallery norms in float32; bad gallery rows are counted in problems[kBadGalleryRows].
std::vector<float> gallery_norms(const NNProblem& p, int64_t* problems) {
  std::vector<double> n2(p.gallery_rows);
#pragma omp parallel for schedule(static) if (p.gallery_rows * p.dim > 65536)
  for (int64_t i = 0; i < p.gallery_rows; ++i) n2[i] = sum_squares(p.gallery + i * p.dim, p.dim);
  for (int64_t i = 0; i < p.gallery_rows; ++i) problems[kBadGalleryRows] += bad_norm2(n2[i]);
  return std::vector<float>(n2.begin(), n2.end());
}

// The row terms; bad rows are counted in problems[kBadRows] and, where the unit ball is required
// and normalize is false, the other rows of norm > 1 in problems[kRowsOutsideUnitBall] (the CUDA
// backend's row_terms_kernel counts the same way). Terms of counted rows are meaningless.
RowTerms row_terms(const NNProblem& p, bool require_unit_ball, int64_t* problems) {
  std::vector<double> n2(p.rows);
#pragma omp parallel for schedule(static) if (p.rows * p.dim > 65536)
  for (int64_t i = 0; i < p.rows; ++i) n2[i] = sum_squares(p.queries + i * p.dim, p.dim);
  for (int64_t i = 0; i < p.rows; ++i) {
    if (bad_norm2(n2[i])) {
      ++problems[kBadRows];
    } else if (require_unit_ball && !p.normalize && n2[i] > kMaxUnnormalizedNorm2) {
      // Without normalisation the rows must already lie in the unit ball: the certificates assume
      // |f| <= 1 and the fixed-point embedding sum is sized for it.
      ++problems[kRowsOutsideUnitBall];
    }
  }
  RowTerms t;
  t.minus_two_scale.resize(p.rows);
  t.norm2.resize(p.rows);
  t.scale.resize(p.rows);
  t.raw_norm.resize(p.rows);
  for (int64_t i = 0; i < p.rows; ++i) {
    const double s = row_scale(n2[i], p.normalize);
    t.scale[i] = s;
    t.raw_norm[i] = std::sqrt(n2[i]);
    t.minus_two_scale[i] = static_cast<float>(-2.0 * s);
    t.norm2[i] = static_cast<float>(n2[i] * s * s);
  }
  return t;
}

// Epilogue of one tile row: `dots` holds q.g for gallery rows [g0, g0 + width); it is
// overwritten with the ranking keys. `skip` is the excluded index relative to g0 (or outside).
inline void tile_row_update(float* dots, const float* gn, int64_t width, int64_t g0,
                            float minus_two_scale, int64_t skip, Top1& top) {
#if defined(__AVX512F__)
  // One pass: each lane keeps its smallest key and the first index attaining it (strict <),
  // then the lanes are combined, ties going to the lower index: the same (key, index) as the
  // portable scan below, without a second pass over the tile. Keys are the same fused
  // multiply-add as nn_key.
  const __m512 m = _mm512_set1_ps(minus_two_scale);
  const __m512 inf = _mm512_set1_ps(INFINITY);
  __m512 best = inf;
  __m512i best_index = _mm512_set1_epi32(0);
  __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t j = 0; j < width; j += 16) {
    const __mmask16 live = width - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (width - j)) - 1u);
    __m512 key = _mm512_fmadd_ps(m, _mm512_maskz_loadu_ps(live, dots + j), _mm512_maskz_loadu_ps(live, gn + j));
    __mmask16 use = live;
    if (skip >= j && skip < j + 16) use &= static_cast<__mmask16>(~(1u << (skip - j)));
    key = _mm512_mask_mov_ps(inf, use, key);
    const __mmask16 smaller = _mm512_cmp_ps_mask(key, best, _CMP_LT_OQ);
    best = _mm512_mask_mov_ps(best, smaller, key);
    best_index = _mm512_mask_mov_epi32(best_index, smaller, index);
    index = _mm512_add_epi32(index, _mm512_set1_epi32(16));
  }
  const float b = _mm512_reduce_min_ps(best);
  if (b == INFINITY || !(b <= top.d1)) return;  // nothing here, or cannot improve
  const __mmask16 at_min = _mm512_cmp_ps_mask(best, _mm512_set1_ps(b), _CMP_EQ_OQ);
  nn_push(top, b, g0 + _mm512_mask_reduce_min_epi32(at_min, best_index));
#else
  float best = INFINITY;
#pragma omp simd reduction(min : best)
  for (int64_t j = 0; j < width; ++j) {
    const float key = nn_key(minus_two_scale, dots[j], gn[j]);
    dots[j] = key;
    best = std::min(best, key);
  }
  if (skip >= 0 && skip < width) {
    dots[skip] = INFINITY;
    best = INFINITY;
#pragma omp simd reduction(min : best)
    for (int64_t j = 0; j < width; ++j) best = std::min(best, dots[j]);
  }
  if (!(best <= top.d1)) return;  // cannot improve (ties are decided by index below)
  for (int64_t j = 0; j < width; ++j) {
    if (dots[j] == best && j != skip) {  // first index attaining the minimum
      nn_push(top, best, g0 + j);
      return;
    }
  }
#endif
}

inline void tile_row_update(float* dots, const float* gn, int64_t width, int64_t g0,
                            float minus_two_scale, int64_t skip, Top2& top) {
#pragma omp simd
  for (int64_t j = 0; j < width; ++j) dots[j] = nn_key(minus_two_scale, dots[j], gn[j]);
  if (skip >= 0 && skip < width) dots[skip] = INFINITY;
  for (int64_t j = 0; j < width; ++j) {
    // Most candidates fail the first test; the excluded one never enters.
    if (dots[j] <= top.d2 && j != skip) nn_push(top, dots[j], g0 + j);
  }
}

// Runs the tiled search and returns one Top per query row. Work is split into tasks of
// (row block, gallery segment); the gallery is split into segments only when there are too
// few row blocks to occupy every thread. Results are merged in segment order.
template <class Top>
std::vector<Top> tiled_search(const NNProblem& p, const RowTerms& rt, const std::vector<float>& gn) {
  const int64_t tile_rows = g_tile_rows.load();
  // Gallery tiles are whole packed panels (dot_tile.h).
  const int64_t tile_gallery = (g_tile_gallery.load() + kPanel - 1) / kPanel * kPanel;
  if (p.rows == 0 || p.gallery_rows == 0) return std::vector<Top>(p.rows, nn_empty<Top>());
  const int64_t row_blocks = (p.rows + tile_rows - 1) / tile_rows;
  const int64_t gallery_tiles = (p.gallery_rows + tile_gallery - 1) / tile_gallery;
  const int64_t threads = cpu_num_threads();
  int64_t segments = 1;
  if (row_blocks < 2 * threads)
    segments = std::min(gallery_tiles, (2 * threads + row_blocks - 1) / row_blocks);
  const int64_t tiles_per_segment = (gallery_tiles + segments - 1) / segments;
  segments = (gallery_tiles + tiles_per_segment - 1) / tiles_per_segment;

  std::vector<Top> partial(static_cast<size_t>(segments * p.rows));
  const std::vector<float> panels = pack_gallery_panels(p.gallery, p.gallery_rows, p.dim);
  const int64_t tasks = row_blocks * segments;
  const bool parallel = tasks > 1 && p.rows * p.gallery_rows * p.dim > (int64_t{1} << 18);

#pragma omp parallel if (parallel)
  {
    std::vector<float> buffer(static_cast<size_t>((tile_rows + kRows) * tile_gallery));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t rb = task / segments, seg = task % segments;
      const int64_t r0 = rb * tile_rows, r1 = std::min(p.rows, r0 + tile_rows);
      const int64_t s0 = seg * tiles_per_segment * tile_gallery;
      const int64_t s1 = std::min(p.gallery_rows, s0 + tiles_per_segment * tile_gallery);
      Top* top = partial.data() + seg * p.rows;
      for (int64_t r = r0; r < r1; ++r) top[r] = nn_empty<Top>();
      for (int64_t g0 = s0; g0 < s1; g0 += tile_gallery) {
        const int64_t width = std::min(tile_gallery, s1 - g0);
        const int64_t npanels = (width + kPanel - 1) / kPanel;
        const int64_t ld = npanels * kPanel;
        // buffer[r, j] = q_r . g_(g0 + j), each accumulated in the fixed order of dot_tile.h
        for (int64_t r = r0; r < r1; r += kRows)
          dot_microtiles(p.queries + r * p.dim, std::min(kRows, r1 - r), p.dim, panels.data(), g0 / kPanel,
                         npanels, buffer.data() + (r - r0) * ld, ld);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t skip = p.exclude != nullptr && p.exclude[r] >= 0 ? p.exclude[r] - g0 : -1;
          tile_row_update(buffer.data() + (r - r0) * ld, gn.data() + g0, width, g0,
                          rt.minus_two_scale[r], skip, top[r]);
        }
      }
    }
  }
  std::vector<Top> result(partial.begin(), partial.begin() + p.rows);
  for (int64_t seg = 1; seg < segments; ++seg)
    for (int64_t r = 0; r < p.rows; ++r) nn_merge(result[r], partial[seg * p.rows + r]);
  return result;
}

}  // namespace

int cpu_num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_cpu_tile_sizes(int64_t rows, int64_t gallery_rows) {
  if (rows < 1 || gallery_rows < 1)
    throw std::invalid_argument("set_cpu_tile_sizes: rows and gallery_rows must be >= 1");
  g_tile_rows = rows;
  g_tile_gallery = gallery_rows;
}

void get_cpu_tile_sizes(int64_t* rows, int64_t* gallery_rows) {
  *rows = g_tile_rows.load();
  *gallery_rows = g_tile_gallery.load();
}

namespace {

// Zeroes the problem slots (the callee overwrites them).
void clear_problems(int64_t* problems) { std::fill(problems, problems + kNumProblemSlots, int64_t{0}); }

bool any_problem(const int64_t* problems) {
  return std::any_of(problems, problems + kNumProblemSlots, [](int64_t n) { return n != 0; });
}

void count_bad_labels(const NNProblem& p, const int64_t* gallery_labels, int64_t num_classes, int64_t* problems) {
  for (int64_t i = 0; i < p.gallery_rows; ++i)
    problems[kBadLabels] += gallery_labels[i] < 0 || gallery_labels[i] >= num_classes;
}

}  // namespace

void nn_search_cpu(const NNProblem& p, int64_t* index1, float* dist1, int64_t* index2, float* dist2,
                   int64_t* problems) {
  clear_problems(problems);
  const std::vector<float> gn = gallery_norms(p, problems);
  const RowTerms rt = row_terms(p, false, problems);
  if (any_problem(problems)) return;
  const std::vector<Top2> top = tiled_search<Top2>(p, rt, gn);
  for (int64_t r = 0; r < p.rows; ++r) {
    index1[r] = nn_index_out(top[r].i1);
    index2[r] = nn_index_out(top[r].i2);
    dist1[r] = top[r].i1 == kNoIndex ? INFINITY : nn_distance(rt.norm2[r], top[r].d1);
    dist2[r] = top[r].i2 == kNoIndex ? INFINITY : nn_distance(rt.norm2[r], top[r].d2);
  }
}

namespace {

// The exact fixed-point sum of the scaled rows (all of them); integer addition makes the order
// irrelevant.
void embedding_sum_fixed(const NNProblem& p, const RowTerms& rt, double* embedding_sum) {
  std::vector<int64_t> fixed_sum(p.dim, 0);
#pragma omp parallel if (p.rows * p.dim > (int64_t{1} << 18))
  {
    std::vector<int64_t> local(p.dim, 0);
    int64_t* __restrict acc = local.data();
#pragma omp for schedule(static)
    for (int64_t r = 0; r < p.rows; ++r) {
      const float* __restrict e = p.queries + r * p.dim;
      const double s = rt.scale[r];
#pragma omp simd
      for (int64_t j = 0; j < p.dim; ++j) acc[j] += to_fixed(static_cast<double>(e[j]) * s);
    }
#pragma omp critical
    for (int64_t j = 0; j < p.dim; ++j) fixed_sum[j] += local[j];
  }
  for (int64_t j = 0; j < p.dim; ++j) embedding_sum[j] = static_cast<double>(fixed_sum[j]) * kFixedUnit;
}

inline float score_at(const ScreenScores& s, int64_t offset) {
  if (!s.bfloat16) return static_cast<const float*>(s.data)[offset];
  return bf16_bits_to_float(static_cast<const uint16_t*>(s.data)[offset]);
}

// Screens one row (see common/nn_screen.h): returns the exact nearest index, or kNoIndex when
// the bound cannot exclude the rows outside the candidates (undecided: the caller searches it
// exactly) or the row has no gallery row at all.
int64_t screen_row(const NNProblem& p, const RowTerms& rt, const std::vector<float>& gn, float gn_max,
                   const ScreenScores& s, int64_t r) {
  const int64_t skip = p.exclude != nullptr ? p.exclude[r] : -1;
  const float m2s = rt.minus_two_scale[r];
  ScreenList list;
  screen_init(list, s.candidates + 1);
  bool finite = true;
  const int64_t base = r * p.gallery_rows;
  for (int64_t j = 0; j < p.gallery_rows; ++j) {
    if (j == skip) continue;
    const float key = nn_key(m2s, score_at(s, base + j), gn[j]);
    finite = finite && std::isfinite(key);
    screen_push(list, key, j);
  }
  if (!finite || list.size == 0) return kNoIndex;
  const int ncand = std::min(list.size, s.candidates);
  Top1 best = nn_empty<Top1>();
  for (int c = 0; c < ncand; ++c) {
    const int64_t j = list.index[c];
    nn_push(best, nn_key(m2s, exact_dot(p.queries + r * p.dim, p.gallery + j * p.dim, p.dim), gn[j]), j);
  }
  const bool all_candidates = list.size <= s.candidates;
  const double bound = screen_key_bound(s.rel_error, p.dim, rt.scale[r], rt.raw_norm[r], gn_max);
  return screen_verified(all_candidates, best.d1, list.key[list.size - 1], bound) ? best.i1 : kNoIndex;
}

}  // namespace

void nn_vote_cpu(const NNProblem& p, const int64_t* gallery_labels, int64_t num_classes, int64_t* counts,
                 double* embedding_sum, int64_t* problems) {
  clear_problems(problems);
  count_bad_labels(p, gallery_labels, num_classes, problems);
  const std::vector<float> gn = gallery_norms(p, problems);
  const RowTerms rt = row_terms(p, true, problems);
  if (any_problem(problems)) return;
  const std::vector<Top1> top = tiled_search<Top1>(p, rt, gn);
  std::fill(counts, counts + num_classes, int64_t{0});
  for (int64_t r = 0; r < p.rows; ++r) {
    // Only possible when a one-row gallery's row is excluded, which the Python wrapper must refuse.
    RGF_ASSERT(top[r].i1 != kNoIndex, "nn_vote: row " + std::to_string(r) + " has no gallery row to vote for");
    ++counts[gallery_labels[top[r].i1]];
  }
  embedding_sum_fixed(p, rt, embedding_sum);
}

void nn_screen_cpu(const NNProblem& p, const int64_t* gallery_labels, int64_t num_classes, const ScreenScores& s,
                   int64_t* counts, double* embedding_sum, int64_t* nearest, int64_t* problems) {
  check_screen_scores(s);
  clear_problems(problems);
  count_bad_labels(p, gallery_labels, num_classes, problems);
  const std::vector<float> gn = gallery_norms(p, problems);
  const RowTerms rt = row_terms(p, true, problems);
  if (any_problem(problems)) return;
  const float gn_max = p.gallery_rows ? *std::max_element(gn.begin(), gn.end()) : 0.0f;

#pragma omp parallel for schedule(dynamic, 16) if (p.rows * p.gallery_rows > (int64_t{1} << 16))
  for (int64_t r = 0; r < p.rows; ++r) nearest[r] = nn_index_out(screen_row(p, rt, gn, gn_max, s, r));

  // Decided rows vote here; undecided ones (nearest -1) vote after the caller's exact search.
  std::fill(counts, counts + num_classes, int64_t{0});
  for (int64_t r = 0; r < p.rows; ++r)
    if (nearest[r] >= 0) ++counts[gallery_labels[nearest[r]]];
  embedding_sum_fixed(p, rt, embedding_sum);
}

}  // namespace rgf
