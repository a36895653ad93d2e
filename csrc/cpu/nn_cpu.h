// Exact (float32) brute-force nearest neighbours on the CPU: cache-sized tiles of dot products
// from our fixed-order micro-kernel (dot_tile.h), the top-1/top-2 selection and the vote in each
// tile's epilogue, so the rows x gallery distance matrix is never materialised (memory: the
// packed gallery plus one tile per thread).
// Same semantics as cuda/nn_cuda.h; the problem, the screening scores and the problem slots are
// defined once for both in common/nn_problem.h.
//
// Bad user input is counted, never reported as a message: `problems` is a host array of
// kNumProblemSlots int64 (common/nn_problem.h), overwritten. When any slot is non-zero the
// function returns as soon as its checks are done, and its other outputs are unspecified.
#pragma once
#include <cstdint>

#include "../common/nn_problem.h"

namespace rgf {

// Nearest and second nearest gallery rows (index -1 and distance +inf where there is none),
// after l2-normalising the query rows when p.normalize. Counts kBadRows and kBadGalleryRows
// (any finite row is accepted: the search needs no unit ball). index1 is the winner that
// nn_vote_cpu and nn_screen_cpu find for the same row: the same keys, the same (key, index) order.
void nn_search_cpu(const NNProblem& p, int64_t* index1, float* dist1, int64_t* index2, float* dist2,
                   int64_t* problems);

// Label votes of each row's nearest gallery row (counts: int64, num_classes, overwritten) and the
// sum of the (normalised) rows (embedding_sum: float64, dim, overwritten; exact fixed-point
// accumulation, see common/nn_math.h). Counts every problem slot.
void nn_vote_cpu(const NNProblem& p, const int64_t* gallery_labels, int64_t num_classes, int64_t* counts,
                 double* embedding_sum, int64_t* problems);

// The screened search (common/nn_screen.h) without the exact rerun: every row is screened; a row
// the bound decides gets its exact nearest index in `nearest` (int64, rows) and casts its vote in
// `counts`; an undecided row gets nearest = -1 and no vote (the caller searches it with
// nn_search_cpu, same normalize and exclude, and adds its vote). embedding_sum is over all rows, as in nn_vote_cpu. Counts every
// problem slot.
void nn_screen_cpu(const NNProblem& p, const int64_t* gallery_labels, int64_t num_classes, const ScreenScores& s,
                   int64_t* counts, double* embedding_sum, int64_t* nearest, int64_t* problems);

// Tile sizes (query rows x gallery rows; the latter rounded up to whole 32-row panels). Tests
// shrink them so small inputs run the same tiled code paths that large ones do.
void set_cpu_tile_sizes(int64_t rows, int64_t gallery_rows);
void get_cpu_tile_sizes(int64_t* rows, int64_t* gallery_rows);

// Threads used by the CPU kernels (OpenMP); 1 when built without OpenMP.
int cpu_num_threads();

}  // namespace rgf
