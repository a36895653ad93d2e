// Exact (float32) brute-force nearest neighbours on a CUDA device (same semantics as
// cpu/nn_cpu.h): a tiled kernel computes 64x64 blocks of dot products from shared memory and
// keeps a running top-1 / top-2 per row in registers, so the rows x gallery distance matrix is
// never materialised. All work is queued on the caller's stream; nothing synchronises.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace rgf {

struct NNCudaProblem {
  int device;              // CUDA device of every pointer below
  cudaStream_t stream;     // the caller's stream (torch.cuda.current_stream())
  const float* queries;    // (rows, dim), row-major, device memory
  int64_t rows;
  const float* gallery;    // (gallery_rows, dim), row-major, device memory
  int64_t gallery_rows;
  int64_t dim;
  const int64_t* exclude;  // (rows,) or null
  bool normalize;
};

// Slots of the `problems` counter array (int64, kNumProblemSlots, device memory, overwritten):
// rows with non-finite values, gallery rows with non-finite values, gallery labels out of range,
// rows of norm > 1 with normalize=False. Offending rows take no part in the result; the caller
// reads the counters (one synchronisation) when it wants the call checked.
enum ProblemSlot : int {
  kBadRows = 0,
  kBadGalleryRows = 1,
  kBadLabels = 2,
  kRowsOutsideUnitBall = 3,
  kNumProblemSlots = 4
};

void nn_search_cuda(const NNCudaProblem& p, int64_t* index1, float* dist1, int64_t* index2,
                    float* dist2, int64_t* problems);

void nn_vote_cuda(const NNCudaProblem& p, const int64_t* gallery_labels, int64_t num_classes,
                  int64_t* counts, double* embedding_sum, int64_t* problems);

// Screening scores for nn_vote_screened_cuda (device memory; see cpu/nn_cpu.h ScreenScores).
struct ScreenScoresCuda {
  const void* data;  // (rows, gallery_rows) float32, or bfloat16
  bool bfloat16;
  int candidates;
  double rel_error;
};

// nn_vote_cuda with a screened search (common/nn_screen.h): the same counts and embedding_sum,
// plus each row's nearest index (nearest: int64, rows). Synchronises the stream once to learn
// how many rows the screen left undecided (returned; they are searched exactly).
int64_t nn_vote_screened_cuda(const NNCudaProblem& p, const int64_t* gallery_labels, int64_t num_classes,
                              const ScreenScoresCuda& s, int64_t* counts, double* embedding_sum,
                              int64_t* nearest, int64_t* problems);

}  // namespace rgf
