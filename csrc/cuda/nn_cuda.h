// Exact (float32) brute-force nearest neighbours on a CUDA device (same semantics as
// cpu/nn_cpu.h; the problem, the screening scores and the problem slots are defined once for both
// in common/nn_problem.h): a tiled kernel computes 64x64 blocks of dot products from shared
// memory and keeps a running top-1 / top-2 per row in registers, so the rows x gallery distance
// matrix is never materialised. All work is queued on the caller's stream; nothing synchronises.
//
// Bad user input is counted, never reported as a message: `problems` is a device array of
// kNumProblemSlots int64 (common/nn_problem.h), overwritten (zeroed first) on the stream. The
// kernels cannot stop work already queued, so they run on with the offending rows left out (they
// take no part in the search, the votes or the sum); the outputs are unspecified when any slot is
// non-zero. The caller reads the counts (one synchronisation) when it wants the call checked.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/nn_problem.h"

namespace rgf {

// Where a problem's pointers live and its work is queued. Every pointer of the NNProblem, the
// ScreenScores and the outputs is device memory of `device`.
struct CudaPlace {
  int device;
  cudaStream_t stream;  // the caller's stream (torch.cuda.current_stream())
};

// As nn_search_cpu: counts kBadRows and kBadGalleryRows; normalises the rows when p.normalize.
void nn_search_cuda(const CudaPlace& at, const NNProblem& p, int64_t* index1, float* dist1, int64_t* index2,
                    float* dist2, int64_t* problems);

// As nn_vote_cpu: counts every problem slot.
void nn_vote_cuda(const CudaPlace& at, const NNProblem& p, const int64_t* gallery_labels, int64_t num_classes,
                  int64_t* counts, double* embedding_sum, int64_t* problems);

// As nn_screen_cpu: decided rows get their exact nearest index and vote; undecided (and bad) rows
// get nearest = -1 and no vote; embedding_sum is over every (good) row. Counts every problem slot.
// Does not synchronise: the caller finds the undecided rows as nearest < 0.
void nn_screen_cuda(const CudaPlace& at, const NNProblem& p, const int64_t* gallery_labels, int64_t num_classes,
                    const ScreenScores& s, int64_t* counts, double* embedding_sum, int64_t* nearest,
                    int64_t* problems);

}  // namespace rgf
