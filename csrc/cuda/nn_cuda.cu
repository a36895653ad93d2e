// The CUDA nearest-neighbour kernels (see nn_cuda.h) and the host code that queues them: row and
// gallery terms (counting bad input into the problem slots), the tiled exact search, the vote and
// fixed-point embedding sum, and the one-warp-per-row screen.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>

#include "../common/nn_math.h"
#include "../common/nn_problem.h"
#include "../common/nn_screen.h"
#include "cuda_check.h"
#include "nn_cuda.h"

namespace rgf {
namespace {

// Tile shape: a 256-thread block owns 64 query rows x 64 gallery rows, stepping through the
// embedding dimension 16 at a time; each thread holds a 4x4 register tile (rows 4 ty + i,
// gallery rows 4 tx + j, read from shared memory as one float4 each per step: 2 shared loads
// per 16 FMAs, so the FMA units, not the shared-memory port, set the pace), and the 16 threads
// sharing a row are one half-warp.
constexpr int kTileRows = 64;
constexpr int kTileGallery = 64;
constexpr int kTileDim = 16;
constexpr int kThreads = 256;
constexpr int kTileStride = kTileRows + 4;  // padded row of a shared tile; a multiple of 4 (float4 loads)
static_assert(kTileRows == kTileGallery, "the tile loader fills both tiles with one index");

// Float64 sum of squares of one row by a whole warp, added in index order 0, 1, 2, ... exactly
// as the CPU kernels add it (so norms, scales and keys have the same bits on both): each lane
// squares one element of a 32-element chunk (exact in float64), then every lane adds the
// chunk's squares one after another, fetched by shuffles. All lanes return the sum.
__device__ double warp_sum_squares(const float* __restrict__ v, int64_t dim, int lane) {
  double acc = 0.0;
  for (int64_t j0 = 0; j0 < dim; j0 += 32) {
    const int64_t j = j0 + lane;
    const double square = j < dim ? static_cast<double>(v[j]) * static_cast<double>(v[j]) : 0.0;
    const int count = dim - j0 < 32 ? static_cast<int>(dim - j0) : 32;
    for (int l = 0; l < count; ++l) acc += __shfl_sync(0xffffffffu, square, l);
  }
  return acc;
}

// One warp per row: the terms of the distance expansion (nn_math.h). A bad row gets NaN terms,
// which lose every comparison, and is counted in `problems` (kBadRows, else kRowsOutsideUnitBall:
// the same counting as the CPU's row_terms).
__global__ void row_terms_kernel(const float* __restrict__ rows_data, int64_t rows, int64_t dim,
                                 bool normalize, bool require_unit_ball, float* __restrict__ m2s,
                                 float* __restrict__ norm2_out, double* __restrict__ scale_out,
                                 int64_t* __restrict__ problems) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const double n2 = warp_sum_squares(rows_data + r * dim, dim, lane);
  if (lane != 0) return;
  const bool finite = n2 <= kMaxRowNorm2;  // also false for NaN
  const bool outside = require_unit_ball && !normalize && n2 > kMaxUnnormalizedNorm2;
  if (!finite || outside) {
    atomicAdd(reinterpret_cast<unsigned long long*>(problems + (finite ? kRowsOutsideUnitBall : kBadRows)), 1ull);
    m2s[r] = NAN;
    norm2_out[r] = NAN;
    scale_out[r] = NAN;
    return;
  }
  const double s = row_scale(n2, normalize);
  m2s[r] = static_cast<float>(-2.0 * s);
  norm2_out[r] = static_cast<float>(n2 * s * s);
  scale_out[r] = s;
}

__global__ void gallery_norms_kernel(const float* __restrict__ gallery, int64_t gallery_rows,
                                     int64_t dim, float* __restrict__ gn,
                                     int64_t* __restrict__ problems) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= gallery_rows) return;
  const double n2 = warp_sum_squares(gallery + r * dim, dim, lane);
  if (lane != 0) return;
  const float f = static_cast<float>(n2);
  if (!(n2 <= kMaxRowNorm2)) {
    atomicAdd(reinterpret_cast<unsigned long long*>(problems + kBadGalleryRows), 1ull);
    gn[r] = NAN;
  } else {
    gn[r] = f;
  }
}

__device__ __forceinline__ void shfl_merge(Top1& t, unsigned mask, int offset) {
  Top1 o;
  o.d1 = __shfl_xor_sync(mask, t.d1, offset);
  o.i1 = __shfl_xor_sync(mask, t.i1, offset);
  nn_merge(t, o);
}

__device__ __forceinline__ void shfl_merge(Top2& t, unsigned mask, int offset) {
  Top2 o;
  o.d1 = __shfl_xor_sync(mask, t.d1, offset);
  o.i1 = __shfl_xor_sync(mask, t.i1, offset);
  o.d2 = __shfl_xor_sync(mask, t.d2, offset);
  o.i2 = __shfl_xor_sync(mask, t.i2, offset);
  nn_merge(t, o);
}

// grid = (row blocks, gallery segments). Each block sweeps the gallery tiles of its segment
// and writes one partial Top per row to partial[segment * rows + row].
template <class Top>
__global__ void __launch_bounds__(kThreads)
nn_tiles_kernel(const float* __restrict__ queries, int64_t rows, const float* __restrict__ gallery,
                int64_t gallery_rows, int64_t dim, const int64_t* __restrict__ exclude,
                const float* __restrict__ m2s, const float* __restrict__ gn,
                int64_t tiles_per_segment, Top* __restrict__ partial) {
  __shared__ __align__(16) float a_tile[kTileDim][kTileStride];
  __shared__ __align__(16) float b_tile[kTileDim][kTileStride];
  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t seg_begin = static_cast<int64_t>(blockIdx.y) * tiles_per_segment * kTileGallery;
  const int64_t seg_end = min(gallery_rows, seg_begin + tiles_per_segment * kTileGallery);

  Top top[4];
  float row_m2s[4];
  int64_t row_skip[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row0 + 4 * ty + i;
    top[i] = nn_empty<Top>();
    row_m2s[i] = r < rows ? m2s[r] : NAN;
    row_skip[i] = (r < rows && exclude != nullptr) ? exclude[r] : -1;
  }

  for (int64_t g0 = seg_begin; g0 < seg_end; g0 += kTileGallery) {
    float acc[4][4] = {};
    for (int64_t k0 = 0; k0 < dim; k0 += kTileDim) {
#pragma unroll
      for (int l = 0; l < (kTileRows * kTileDim) / kThreads; ++l) {
        const int idx = tid + kThreads * l;
        const int r = idx / kTileDim, kk = idx % kTileDim;
        const int64_t qr = row0 + r, gr = g0 + r, k = k0 + kk;
        a_tile[kk][r] = (qr < rows && k < dim) ? queries[qr * dim + k] : 0.0f;
        b_tile[kk][r] = (gr < seg_end && k < dim) ? gallery[gr * dim + k] : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kTileDim; ++kk) {
        const float4 a4 = *reinterpret_cast<const float4*>(&a_tile[kk][4 * ty]);
        const float4 b4 = *reinterpret_cast<const float4*>(&b_tile[kk][4 * tx]);
        const float a[4] = {a4.x, a4.y, a4.z, a4.w};
        const float b[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }
    // Epilogue: rank this tile's candidates into the running top of each row.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = g0 + 4 * tx + j;
      if (col >= seg_end) continue;
      const float g_norm2 = gn[col];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (col == row_skip[i]) continue;
        nn_push(top[i], nn_key(row_m2s[i], acc[i][j], g_norm2), col);
      }
    }
  }
  // Merge the 16 threads of each row (one half-warp) and write the segment's partial result.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) shfl_merge(top[i], 0xffffffffu, offset);
    const int64_t r = row0 + 4 * ty + i;
    if (tx == 0 && r < rows) partial[static_cast<int64_t>(blockIdx.y) * rows + r] = top[i];
  }
}

__global__ void merge_search_kernel(const Top2* __restrict__ partial, int64_t segments,
                                    int64_t rows, const float* __restrict__ norm2,
                                    int64_t* __restrict__ index1, float* __restrict__ dist1,
                                    int64_t* __restrict__ index2, float* __restrict__ dist2) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  Top2 t = partial[r];
  for (int64_t s = 1; s < segments; ++s) nn_merge(t, partial[s * rows + r]);
  index1[r] = nn_index_out(t.i1);
  index2[r] = nn_index_out(t.i2);
  dist1[r] = t.i1 == kNoIndex ? INFINITY : nn_distance(norm2[r], t.d1);
  dist2[r] = t.i2 == kNoIndex ? INFINITY : nn_distance(norm2[r], t.d2);
}

__global__ void check_labels_kernel(const int64_t* __restrict__ labels, int64_t gallery_rows,
                                    int64_t num_classes, int64_t* __restrict__ problems) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < gallery_rows && (labels[i] < 0 || labels[i] >= num_classes))
    atomicAdd(reinterpret_cast<unsigned long long*>(problems + kBadLabels), 1ull);
}

__global__ void merge_vote_kernel(const Top1* __restrict__ partial, int64_t segments, int64_t rows,
                                  const int64_t* __restrict__ labels, int64_t num_classes,
                                  int64_t* __restrict__ counts) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  Top1 t = partial[r];
  for (int64_t s = 1; s < segments; ++s) nn_merge(t, partial[s * rows + r]);
  if (t.i1 == kNoIndex) return;
  const int64_t label = labels[t.i1];
  if (label >= 0 && label < num_classes)
    atomicAdd(reinterpret_cast<unsigned long long*>(counts + label), 1ull);
}

// Fixed-point column sums of the scaled rows: each block sums a chunk of rows per column in
// int64 and adds it atomically; integer addition makes the result independent of the order.
constexpr int64_t kSumRowsPerBlock = 64;
__global__ void embedding_sum_kernel(const float* __restrict__ rows_data, int64_t rows, int64_t dim,
                                     const double* __restrict__ scale,
                                     unsigned long long* __restrict__ fixed_sum) {
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kSumRowsPerBlock;
  const int64_t r1 = min(rows, r0 + kSumRowsPerBlock);
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    long long acc = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const double s = scale[r];
      if (s == s) acc += to_fixed(static_cast<double>(rows_data[r * dim + j]) * s);  // skip NaN (bad) rows
    }
    atomicAdd(fixed_sum + j, static_cast<unsigned long long>(acc));
  }
}

__global__ void fixed_to_double_kernel(const unsigned long long* __restrict__ fixed_sum, int64_t dim,
                                       double* __restrict__ out) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j < dim) out[j] = static_cast<double>(static_cast<long long>(fixed_sum[j])) * kFixedUnit;
}

int blocks_for(int64_t work, int threads) {
  return static_cast<int>(std::max<int64_t>(1, (work + threads - 1) / threads));
}

// cudaMallocAsync's pool hands its memory back to the driver at every synchronisation when its
// release threshold is 0 (the default), and the callers synchronise often (to read the problem
// counters, to find the screen's undecided rows): keep at least 256 MiB cached in the device's
// current pool so that repeated calls reuse it (a higher threshold set by someone else is left as
// it is).
void keep_pool_warm(int device) {
  static std::once_flag once[64];
  if (device < 0 || device >= 64) return;
  std::call_once(once[device], [device] {
    cudaMemPool_t pool;
    cuda_check(cudaDeviceGetMemPool(&pool, device), "cudaDeviceGetMemPool");
    uint64_t threshold = 0;
    cuda_check(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold), "cudaMemPoolGetAttribute");
    const uint64_t wanted = uint64_t{256} << 20;
    if (threshold < wanted)
      cuda_check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, const_cast<uint64_t*>(&wanted)),
                 "cudaMemPoolSetAttribute");
  });
}

// Device scratch memory, allocated and freed in stream order (no synchronisation).
class StreamScratch {
 public:
  StreamScratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    cuda_check(cudaMallocAsync(&base_, bytes, stream), "cudaMallocAsync");
  }
  ~StreamScratch() { cudaFreeAsync(base_, stream_); }
  template <class T>
  T* take(size_t count) {
    offset_ = (offset_ + 255) & ~size_t{255};
    T* ptr = reinterpret_cast<T*>(static_cast<char*>(base_) + offset_);
    offset_ += count * sizeof(T);
    return ptr;
  }
  static size_t padded(size_t bytes) { return bytes + 256; }

 private:
  void* base_ = nullptr;
  size_t offset_ = 0;
  cudaStream_t stream_;
};

struct Plan {
  int64_t row_blocks, segments, tiles_per_segment;
};

// Split the gallery into segments only when the row blocks alone cannot fill the device.
// No rows: nothing to launch (row_blocks = 0). No gallery rows: one empty segment, whose blocks
// write empty tops.
Plan make_plan(const CudaPlace& at, const NNProblem& p) {
  Plan plan;
  plan.row_blocks = (p.rows + kTileRows - 1) / kTileRows;
  if (p.rows == 0 || p.gallery_rows == 0) {
    plan.segments = 1;
    plan.tiles_per_segment = 1;
    return plan;
  }
  int sms = 0;
  cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, at.device),
             "cudaDeviceGetAttribute");
  const int64_t tiles = (p.gallery_rows + kTileGallery - 1) / kTileGallery;
  const int64_t want_blocks = 4 * static_cast<int64_t>(sms);
  int64_t segments = std::min<int64_t>(tiles, std::max<int64_t>(1, (want_blocks + plan.row_blocks - 1) / plan.row_blocks));
  segments = std::min<int64_t>(segments, 65535);
  plan.tiles_per_segment = (tiles + segments - 1) / segments;
  plan.segments = (tiles + plan.tiles_per_segment - 1) / plan.tiles_per_segment;
  return plan;
}

template <class Top>
void launch_tiles(const CudaPlace& at, const NNProblem& p, const Plan& plan, const float* m2s, const float* gn,
                  Top* partial) {
  if (plan.row_blocks == 0) return;  // an empty grid is a launch error
  const dim3 grid(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(plan.segments));
  nn_tiles_kernel<Top><<<grid, kThreads, 0, at.stream>>>(p.queries, p.rows, p.gallery, p.gallery_rows,
                                                        p.dim, p.exclude, m2s, gn,
                                                        plan.tiles_per_segment, partial);
  cuda_check_launch("nn_tiles_kernel");
}

// Shared first steps: scratch for the row and gallery terms, and the kernels that fill them.
struct Terms {
  float* m2s;
  float* norm2;
  double* scale;
  float* gn;
};

// Zeroes `problems` first: every call overwrites its counters.
Terms prepare_terms(const CudaPlace& at, const NNProblem& p, bool require_unit_ball, int64_t* problems,
                    StreamScratch& scratch) {
  Terms t;
  t.m2s = scratch.take<float>(p.rows);
  t.norm2 = scratch.take<float>(p.rows);
  t.scale = scratch.take<double>(p.rows);
  t.gn = scratch.take<float>(p.gallery_rows);
  cuda_check(cudaMemsetAsync(problems, 0, kNumProblemSlots * sizeof(int64_t), at.stream), "cudaMemsetAsync");
  row_terms_kernel<<<blocks_for(p.rows * 32, kThreads), kThreads, 0, at.stream>>>(
      p.queries, p.rows, p.dim, p.normalize, require_unit_ball, t.m2s, t.norm2, t.scale, problems);
  cuda_check_launch("row_terms_kernel");
  gallery_norms_kernel<<<blocks_for(p.gallery_rows * 32, kThreads), kThreads, 0, at.stream>>>(
      p.gallery, p.gallery_rows, p.dim, t.gn, problems);
  cuda_check_launch("gallery_norms_kernel");
  return t;
}

size_t terms_bytes(const NNProblem& p) {
  return StreamScratch::padded(p.rows * sizeof(float)) * 2 + StreamScratch::padded(p.rows * sizeof(double)) +
         StreamScratch::padded(p.gallery_rows * sizeof(float));
}

template <class Top>
Terms prepare(const CudaPlace& at, const NNProblem& p, const Plan& plan, bool require_unit_ball, int64_t* problems,
              StreamScratch& scratch, Top** partial) {
  const Terms t = prepare_terms(at, p, require_unit_ball, problems, scratch);
  *partial = scratch.take<Top>(plan.segments * p.rows);
  return t;
}

template <class Top>
size_t scratch_bytes(const NNProblem& p, const Plan& plan, size_t extra) {
  return terms_bytes(p) + StreamScratch::padded(plan.segments * p.rows * sizeof(Top)) + StreamScratch::padded(extra);
}

// Writes the sum of all (scaled) rows into `embedding_sum`, accumulated in fixed point.
void launch_embedding_sum(const CudaPlace& at, const NNProblem& p, const double* scale,
                          unsigned long long* fixed_sum, double* embedding_sum) {
  cuda_check(cudaMemsetAsync(fixed_sum, 0, p.dim * sizeof(unsigned long long), at.stream), "cudaMemsetAsync");
  const int sum_threads = static_cast<int>(std::clamp<int64_t>(((p.dim + 31) / 32) * 32, 32, 256));
  embedding_sum_kernel<<<blocks_for(p.rows, kSumRowsPerBlock), sum_threads, 0, at.stream>>>(
      p.queries, p.rows, p.dim, scale, fixed_sum);
  cuda_check_launch("embedding_sum_kernel");
  fixed_to_double_kernel<<<blocks_for(p.dim, kThreads), kThreads, 0, at.stream>>>(fixed_sum, p.dim,
                                                                              embedding_sum);
  cuda_check_launch("fixed_to_double_kernel");
}

// ---------------------------------------------------------------------------- screened search

template <bool kBf16>
__device__ __forceinline__ float load_score(const void* scores, int64_t offset) {
  if (kBf16) return bf16_bits_to_float(static_cast<const uint16_t*>(scores)[offset]);
  return static_cast<const float*>(scores)[offset];
}

// One warp per row (common/nn_screen.h): each lane keeps the best candidates + 1 of its strided
// share of the row's screening scores, the lists are merged across the warp, lanes rescore the
// candidates with the exact float32 dot, and lane 0 either votes and writes the winner (the bound
// proves it) or marks the row undecided (nearest = -1, for the caller's exact search). Bad rows
// (NaN terms) are marked -1 too and cast no vote.
template <bool kBf16>
__global__ void __launch_bounds__(kThreads)
screen_kernel(const float* __restrict__ queries, int64_t rows, const float* __restrict__ gallery,
              int64_t gallery_rows, int64_t dim, const int64_t* __restrict__ exclude,
              const float* __restrict__ m2s, const double* __restrict__ scale, const float* __restrict__ gn,
              const void* __restrict__ scores, int candidates, double rel_error,
              const int64_t* __restrict__ labels, int64_t num_classes, int64_t* __restrict__ counts,
              int64_t* __restrict__ nearest) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;  // whole warps exit together
  const float row_m2s = m2s[r];
  if (row_m2s != row_m2s) {  // a bad row: counted in `problems`, casts no vote
    if (lane == 0) nearest[r] = -1;
    return;
  }
  const int64_t skip = exclude != nullptr ? exclude[r] : -1;
  const float* q = queries + r * dim;
  const double row_norm = sqrt(warp_sum_squares(q, dim, lane));

  ScreenList list;
  screen_init(list, candidates + 1);
  bool finite = true;
  float gn_max = 0.0f;
  const int64_t base = r * gallery_rows;
  float worst_key = INFINITY;  // the list's last entry once full, kept in registers
  int64_t worst_index = kNoIndex;
  const auto visit = [&](int64_t j, float score, float g2) {
    gn_max = fmaxf(gn_max, g2);  // over every row, as the CPU takes it
    if (j == skip) return;
    const float key = nn_key(row_m2s, score, g2);
    finite = finite && isfinite(key);
    if (nn_before(key, j, worst_key, worst_index)) {
      screen_push(list, key, j);
      if (list.size == list.capacity) {
        worst_key = list.key[list.size - 1];
        worst_index = list.index[list.size - 1];
      }
    }
  };
  // Each lane visits j = lane, lane + 32, ...; four at a time with the loads issued first, so
  // several loads are in flight per lane (the list's contents do not depend on the visit order).
  constexpr int kUnroll = 4;
  int64_t j = lane;
  for (; j + 32 * (kUnroll - 1) < gallery_rows; j += 32 * kUnroll) {
    float score[kUnroll], g2[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      score[u] = load_score<kBf16>(scores, base + j + 32 * u);
      g2[u] = gn[j + 32 * u];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) visit(j + 32 * u, score[u], g2[u]);
  }
  for (; j < gallery_rows; j += 32) visit(j, load_score<kBf16>(scores, base + j), gn[j]);
  // Butterfly merge: each step joins two disjoint groups of lanes, so no entry is seen twice.
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const ScreenList mine = list;
    const int other_size = __shfl_xor_sync(0xffffffffu, mine.size, offset);
#pragma unroll
    for (int i = 0; i < kMaxScreenCandidates + 1; ++i) {
      const float key = __shfl_xor_sync(0xffffffffu, mine.key[i], offset);
      const int64_t index = __shfl_xor_sync(0xffffffffu, mine.index[i], offset);
      if (i < other_size) screen_push(list, key, index);
    }
    finite = __shfl_xor_sync(0xffffffffu, finite, offset) && finite;
    gn_max = fmaxf(gn_max, __shfl_xor_sync(0xffffffffu, gn_max, offset));
  }
  // Exact rescoring: lane c takes candidate c.
  const int ncand = min(list.size, candidates);
  Top1 best = nn_empty<Top1>();
  if (lane < ncand) {
    const int64_t j = list.index[lane];
    nn_push(best, nn_key(row_m2s, exact_dot(q, gallery + j * dim, dim), gn[j]), j);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) shfl_merge(best, 0xffffffffu, offset);
  if (lane != 0) return;
  const bool decided = finite && list.size > 0 &&
                       screen_verified(list.size <= candidates, best.d1, list.key[list.size - 1],
                                       screen_key_bound(rel_error, dim, scale[r], row_norm, gn_max));
  if (decided) {
    nearest[r] = best.i1;
    const int64_t label = labels[best.i1];
    if (label >= 0 && label < num_classes)
      atomicAdd(reinterpret_cast<unsigned long long*>(counts + label), 1ull);
  } else {
    nearest[r] = -1;
  }
}

}  // namespace

void nn_search_cuda(const CudaPlace& at, const NNProblem& p, int64_t* index1, float* dist1, int64_t* index2,
                    float* dist2, int64_t* problems) {
  cuda_check(cudaSetDevice(at.device), "cudaSetDevice");
  keep_pool_warm(at.device);
  const Plan plan = make_plan(at, p);
  StreamScratch scratch(scratch_bytes<Top2>(p, plan, 0), at.stream);
  Top2* partial = nullptr;
  const Terms t = prepare<Top2>(at, p, plan, false, problems, scratch, &partial);
  launch_tiles<Top2>(at, p, plan, t.m2s, t.gn, partial);
  merge_search_kernel<<<blocks_for(p.rows, kThreads), kThreads, 0, at.stream>>>(
      partial, plan.segments, p.rows, t.norm2, index1, dist1, index2, dist2);
  cuda_check_launch("merge_search_kernel");
}

void nn_vote_cuda(const CudaPlace& at, const NNProblem& p, const int64_t* gallery_labels, int64_t num_classes,
                  int64_t* counts, double* embedding_sum, int64_t* problems) {
  cuda_check(cudaSetDevice(at.device), "cudaSetDevice");
  keep_pool_warm(at.device);
  cuda_check(cudaMemsetAsync(counts, 0, num_classes * sizeof(int64_t), at.stream), "cudaMemsetAsync");
  const Plan plan = make_plan(at, p);
  StreamScratch scratch(scratch_bytes<Top1>(p, plan, p.dim * sizeof(unsigned long long)), at.stream);
  Top1* partial = nullptr;
  const Terms t = prepare<Top1>(at, p, plan, true, problems, scratch, &partial);
  unsigned long long* fixed_sum = scratch.take<unsigned long long>(p.dim);
  check_labels_kernel<<<blocks_for(p.gallery_rows, kThreads), kThreads, 0, at.stream>>>(
      gallery_labels, p.gallery_rows, num_classes, problems);
  cuda_check_launch("check_labels_kernel");
  launch_tiles<Top1>(at, p, plan, t.m2s, t.gn, partial);
  merge_vote_kernel<<<blocks_for(p.rows, kThreads), kThreads, 0, at.stream>>>(
      partial, plan.segments, p.rows, gallery_labels, num_classes, counts);
  cuda_check_launch("merge_vote_kernel");
  launch_embedding_sum(at, p, t.scale, fixed_sum, embedding_sum);
}

void nn_screen_cuda(const CudaPlace& at, const NNProblem& p, const int64_t* gallery_labels, int64_t num_classes,
                    const ScreenScores& s, int64_t* counts, double* embedding_sum, int64_t* nearest,
                    int64_t* problems) {
  check_screen_scores(s);
  cuda_check(cudaSetDevice(at.device), "cudaSetDevice");
  keep_pool_warm(at.device);
  cuda_check(cudaMemsetAsync(counts, 0, num_classes * sizeof(int64_t), at.stream), "cudaMemsetAsync");
  StreamScratch scratch(terms_bytes(p) + StreamScratch::padded(p.dim * sizeof(unsigned long long)), at.stream);
  const Terms t = prepare_terms(at, p, true, problems, scratch);
  unsigned long long* fixed_sum = scratch.take<unsigned long long>(p.dim);
  check_labels_kernel<<<blocks_for(p.gallery_rows, kThreads), kThreads, 0, at.stream>>>(
      gallery_labels, p.gallery_rows, num_classes, problems);
  cuda_check_launch("check_labels_kernel");
  const int blocks = blocks_for(p.rows * 32, kThreads);
  if (s.bfloat16) {
    screen_kernel<true><<<blocks, kThreads, 0, at.stream>>>(
        p.queries, p.rows, p.gallery, p.gallery_rows, p.dim, p.exclude, t.m2s, t.scale, t.gn, s.data,
        s.candidates, s.rel_error, gallery_labels, num_classes, counts, nearest);
  } else {
    screen_kernel<false><<<blocks, kThreads, 0, at.stream>>>(
        p.queries, p.rows, p.gallery, p.gallery_rows, p.dim, p.exclude, t.m2s, t.scale, t.gn, s.data,
        s.candidates, s.rel_error, gallery_labels, num_classes, counts, nearest);
  }
  cuda_check_launch("screen_kernel");
  launch_embedding_sum(at, p, t.scale, fixed_sum, embedding_sum);
}

}  // namespace rgf
