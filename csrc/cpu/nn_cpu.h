// Exact (float32) brute-force nearest neighbours on the CPU: cache-sized tiles of dot products
// from our fixed-order micro-kernel (dot_tile.h), the top-1/top-2 selection and the vote in each
// tile's epilogue, so the rows x gallery distance matrix is never materialised (memory: the
// packed gallery plus one tile per thread).
// Same semantics as cuda/nn_cuda.h.
#pragma once
#include <cstdint>

namespace rgf {

struct NNProblem {
  const float* queries;    // (rows, dim), row-major
  int64_t rows;
  const float* gallery;    // (gallery_rows, dim), row-major
  int64_t gallery_rows;
  int64_t dim;
  const int64_t* exclude;  // (rows,) gallery index to skip per row, -1 for none; may be null
  bool normalize;          // l2-normalise each query row before the search
};

// Nearest and second nearest gallery rows (index -1 and distance +inf where there is none).
// Throws std::invalid_argument naming the first non-finite query or gallery row.
void nn_search_cpu(const NNProblem& p, int64_t* index1, float* dist1, int64_t* index2,
                   float* dist2);

// Label votes of each row's nearest gallery row (counts: int64, num_classes, overwritten) and the
// sum of the (normalised) rows (embedding_sum: float64, dim, overwritten; exact fixed-point
// accumulation, see common/nn_math.h). Throws std::invalid_argument for non-finite rows or a
// gallery label outside [0, num_classes).
void nn_vote_cpu(const NNProblem& p, const int64_t* gallery_labels, int64_t num_classes,
                 int64_t* counts, double* embedding_sum);

// Approximate dot products for nn_vote_screened_cpu: scores[r * gallery_rows + j] ~ q_r.g_j,
// float32 or bfloat16 (the upper 16 bits of a float32), with |score - q.g| <= rel_error |q||g|.
struct ScreenScores {
  const void* data;
  bool bfloat16;
  int candidates;    // rows rescored exactly per query row, 1..kMaxScreenCandidates (nn_screen.h)
  double rel_error;  // the screening matmul's error bound (see common/nn_screen.h)
};

// nn_vote_cpu with a screened search (common/nn_screen.h): the same counts and embedding_sum,
// bit for bit, plus each row's nearest index (nearest: int64, rows; -1 where none). Returns how
// many rows the screen could not decide (they were searched exactly).
int64_t nn_vote_screened_cpu(const NNProblem& p, const int64_t* gallery_labels, int64_t num_classes,
                             const ScreenScores& s, int64_t* counts, double* embedding_sum, int64_t* nearest);

// Tile sizes (query rows x gallery rows; the latter rounded up to whole 32-row panels). Tests
// shrink them so small inputs run the same tiled code paths that large ones do.
void set_cpu_tile_sizes(int64_t rows, int64_t gallery_rows);
void get_cpu_tile_sizes(int64_t* rows, int64_t* gallery_rows);

// Threads used by the CPU kernels (OpenMP); 1 when built without OpenMP.
int cpu_num_threads();

}  // namespace rgf
