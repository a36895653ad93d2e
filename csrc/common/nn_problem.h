// The interface both nearest-neighbour backends share (cpu/nn_cpu.h, cuda/nn_cuda.h): the
// problem description, the screening scores, the problem slots through which the kernels report
// bad user input, and the constants that decide what is bad. One definition for both, so the two
// backends cannot drift apart on what they accept or how they report it.
#pragma once
#include <cstdint>

#include "rgf_macros.h"

// Version of the compiled modules' functions. Its one home is the line `KERNEL_ABI = <n>` in
// retrievalguard_fast/kernels/backend.py; CMakeLists.txt reads it from there and defines it for both
// modules, which report it as `kernel_abi` so that kernels/backend.py refuses modules of another version.
#ifndef RGF_KERNEL_ABI
#error "RGF_KERNEL_ABI is not defined: CMakeLists.txt passes it (from retrievalguard_fast/kernels/backend.py)"
#endif

namespace rgf {

constexpr int kKernelAbi = RGF_KERNEL_ABI;

// One nearest-neighbour problem: for each query row, its nearest gallery rows by squared l2
// distance. Host memory for the CPU backend, device memory (of one device) for the CUDA backend.
struct NNProblem {
  const float* queries;    // (rows, dim), row-major
  int64_t rows;
  const float* gallery;    // (gallery_rows, dim), row-major
  int64_t gallery_rows;
  int64_t dim;
  const int64_t* exclude;  // (rows,) gallery index to skip per row, -1 for none; may be null
  bool normalize;          // l2-normalise each query row before the search
};

// Approximate dot products for the screened search (common/nn_screen.h):
// scores[r * gallery_rows + j] ~ q_r.g_j, float32 or bfloat16 (the upper 16 bits of a float32),
// with |score - q.g| <= rel_error |q||g|.
struct ScreenScores {
  const void* data;  // (rows, gallery_rows), row-major, same memory space as the problem
  bool bfloat16;
  int candidates;    // rows rescored exactly per query row, 1..kMaxScreenCandidates (nn_screen.h)
  double rel_error;  // the screening matmul's error bound, in [0, 1)
};

// Slots of the `problems` array (int64, kNumProblemSlots; host memory for the CPU backend, device
// memory for the CUDA backend) in which the kernels COUNT bad user input instead of formatting
// messages: the caller reads the counts, locates the offending rows itself and words one message
// for both backends. The callee overwrites the array (zeroed first). When any slot is non-zero the
// other outputs are unspecified: the CPU kernels return as soon as the checks are done; the CUDA
// kernels, which cannot stop work already queued, run on with the offending rows left out.
enum ProblemSlot : int {
  // Query (embedding) rows with a non-finite value, or whose squared norm exceeds kMaxRowNorm2.
  kBadRows = 0,
  // Gallery rows with a non-finite value, or whose squared norm exceeds kMaxRowNorm2.
  kBadGalleryRows = 1,
  // Entries of gallery_labels outside [0, num_classes) (nn_vote and nn_screen only).
  kBadLabels = 2,
  // Rows not counted in kBadRows whose squared norm exceeds kMaxUnnormalizedNorm2 while
  // normalize is false (nn_vote and nn_screen only: the certificates need |row| <= 1; nn_search
  // accepts any finite row).
  kRowsOutsideUnitBall = 3,
  kNumProblemSlots = 4
};

// The slots' names, in slot order: the bindings export them (problem_slots: name -> index), and
// Python reads the counts by name, never by position.
constexpr const char* kProblemSlotNames[kNumProblemSlots] = {"bad_rows", "bad_gallery_rows", "bad_labels",
                                                             "rows_outside_unit_ball"};

// Rows whose squared norm exceeds this are refused (kBadRows, kBadGalleryRows):
// |q|^2 + |g|^2 + 2|q||g| must stay finite in float32 for the distance expansion to rank correctly.
constexpr double kMaxRowNorm2 = 1e37;
// normalize=false accepts rows of norm up to 1 + 1e-5 (float32 rounding of unit vectors) where
// the unit ball is required (kRowsOutsideUnitBall).
constexpr double kMaxUnnormalizedNorm2 = (1.0 + 1e-5) * (1.0 + 1e-5);

// bfloat16 bits (as in ScreenScores) to float32. bfloat16 is the upper half of a float32, so the
// widening is exact and the same on host and device.
RGF_HD float bf16_bits_to_float(uint16_t bits) { return uint_as_float(static_cast<uint32_t>(bits) << 16); }

}  // namespace rgf
