// Dot products of query rows with gallery rows, accumulated in a fixed order.
//
// Every dot product q.g is computed as acc = fma(q[k], g[k], acc) for k = 0, 1, ..., dim-1,
// whatever the position of q and g in their tiles, the tile sizes, the thread count or the
// instruction set. So the ranking key of a (query, gallery) pair depends on the two rows alone:
// exact ties (duplicate gallery rows) really go to the lower index, a query's result does not
// change with its batch, and the CUDA kernel (which accumulates in the same order) computes the
// same values. A BLAS sgemm does not promise this: its edge kernels round differently.
//
// Layout: the gallery is packed once per call into panels of kPanel rows, k-major
// (panel[k * kPanel + j] = g[panel_start + j][k], zero-padded), so a micro-tile of kRows query
// rows x kPanel gallery rows streams one contiguous panel.
#pragma once
#include <cstdint>
#include <vector>

namespace rgf {

constexpr int64_t kPanel = 32;  // gallery rows per packed panel (two AVX-512 vectors)
constexpr int64_t kRows = 8;    // query rows per micro-tile

// Packs gallery rows [0, rows) into ceil(rows / kPanel) panels.
std::vector<float> pack_gallery_panels(const float* gallery, int64_t rows, int64_t dim);

// out[r * ld + j] = q_r . g_(panel0 * kPanel + j) for r < nrows (<= kRows), j < npanels * kPanel.
// q: nrows rows of length dim (row stride dim); panels: the packed gallery.
void dot_microtiles(const float* q, int64_t nrows, int64_t dim, const float* panels, int64_t panel0,
                    int64_t npanels, float* out, int64_t ld);

}  // namespace rgf
