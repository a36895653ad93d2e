// pybind11 bindings of the CPU kernels (module retrievalguard_fast._core). Arguments arrive
// already checked and converted by the Python ops (retrievalguard_fast/kernels: noise.py, nn.py, screen.py); the checks here only guard
// memory safety (shapes and contiguity) as internal assertions (RGF_ASSERT: a failure is a bug of
// the wrappers, not bad user input), never convert, and release the GIL while computing. Bad
// values in the inputs are counted by the kernels into `problems` (common/nn_problem.h), which
// Python reads by slot name and turns into one message for both backends.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "common/bind_common.h"
#include "common/nn_problem.h"
#include "common/nn_screen.h"
#include "common/rgf_macros.h"
#include "cpu/nn_cpu.h"
#include "cpu/noise_cpu.h"

namespace py = pybind11;

namespace {

template <class T>
using CArray = py::array_t<T, py::array::c_style>;

template <class T>
void require(const CArray<T>& a, int64_t size, const char* name) {
  RGF_ASSERT(a.size() == size, std::string(name) + ": expected " + std::to_string(size) + " elements, got " +
                                   std::to_string(a.size()));
}

void gaussian_noise(const CArray<float>& x, float sigma, int64_t n, uint64_t seed, uint32_t stream,
                    uint64_t start, CArray<float>& out) {
  const int64_t dim = x.size();
  require(out, n * dim, "out");
  const float* xp = x.data();
  float* op = out.mutable_data();
  py::gil_scoped_release release;
  rgf::gaussian_noise_cpu(xp, dim, sigma, n, seed, stream, start, op);
}

void philox4x32(const CArray<uint32_t>& counters, const CArray<uint32_t>& keys,
                CArray<uint32_t>& out) {
  const int64_t m = counters.size() / 4;
  require(counters, 4 * m, "counter");
  require(keys, 2 * m, "key");
  require(out, 4 * m, "out");
  rgf::philox4x32_cpu(counters.data(), keys.data(), m, out.mutable_data());
}

rgf::NNProblem problem(const CArray<float>& queries, const CArray<float>& gallery, int64_t dim,
                       const CArray<int64_t>& exclude, bool normalize) {
  rgf::NNProblem p{};
  p.dim = dim;
  p.rows = dim > 0 ? queries.size() / dim : 0;
  p.gallery_rows = dim > 0 ? gallery.size() / dim : 0;
  require(queries, p.rows * dim, "queries");
  require(gallery, p.gallery_rows * dim, "gallery");
  p.queries = queries.data();
  p.gallery = gallery.data();
  p.normalize = normalize;
  p.exclude = nullptr;
  if (exclude.size() > 0) {  // an empty array means "exclude nothing"
    require(exclude, p.rows, "exclude");
    p.exclude = exclude.data();
  }
  return p;
}

void nn_search(const CArray<float>& queries, const CArray<float>& gallery, int64_t dim,
               const CArray<int64_t>& exclude, bool normalize, CArray<int64_t>& index1, CArray<float>& dist1,
               CArray<int64_t>& index2, CArray<float>& dist2, CArray<int64_t>& problems) {
  const rgf::NNProblem p = problem(queries, gallery, dim, exclude, normalize);
  require(index1, p.rows, "index1");
  require(dist1, p.rows, "dist1");
  require(index2, p.rows, "index2");
  require(dist2, p.rows, "dist2");
  require(problems, rgf::kNumProblemSlots, "problems");
  int64_t* i1 = index1.mutable_data();
  int64_t* i2 = index2.mutable_data();
  float* d1 = dist1.mutable_data();
  float* d2 = dist2.mutable_data();
  int64_t* pr = problems.mutable_data();
  py::gil_scoped_release release;
  rgf::nn_search_cpu(p, i1, d1, i2, d2, pr);
}

void nn_vote(const CArray<float>& embeddings, const CArray<float>& gallery, int64_t dim,
             const CArray<int64_t>& gallery_labels, int64_t num_classes, const CArray<int64_t>& exclude,
             bool normalize, CArray<int64_t>& counts, CArray<double>& embedding_sum, CArray<int64_t>& problems) {
  const rgf::NNProblem p = problem(embeddings, gallery, dim, exclude, normalize);
  require(gallery_labels, p.gallery_rows, "gallery_labels");
  require(counts, num_classes, "counts");
  require(embedding_sum, dim, "embedding_sum");
  require(problems, rgf::kNumProblemSlots, "problems");
  const int64_t* labels = gallery_labels.data();
  int64_t* c = counts.mutable_data();
  double* s = embedding_sum.mutable_data();
  int64_t* pr = problems.mutable_data();
  py::gil_scoped_release release;
  rgf::nn_vote_cpu(p, labels, num_classes, c, s, pr);
}

// scores: (rows, gallery_rows) float32, or bfloat16 passed as its uint16 bit pattern.
void nn_screen(const CArray<float>& embeddings, const CArray<float>& gallery, int64_t dim,
               const CArray<int64_t>& gallery_labels, int64_t num_classes, const CArray<int64_t>& exclude,
               bool normalize, const py::array& scores, int candidates, double rel_error, CArray<int64_t>& counts,
               CArray<double>& embedding_sum, CArray<int64_t>& nearest, CArray<int64_t>& problems) {
  const rgf::NNProblem p = problem(embeddings, gallery, dim, exclude, normalize);
  require(gallery_labels, p.gallery_rows, "gallery_labels");
  require(counts, num_classes, "counts");
  require(embedding_sum, dim, "embedding_sum");
  require(nearest, p.rows, "nearest");
  require(problems, rgf::kNumProblemSlots, "problems");
  const bool f32 = scores.dtype().is(py::dtype::of<float>());
  RGF_ASSERT(f32 || scores.dtype().is(py::dtype::of<uint16_t>()),
             "scores: expected float32 or uint16 (bfloat16 bits)");
  RGF_ASSERT((scores.flags() & py::array::c_style) && scores.size() == p.rows * p.gallery_rows,
             "scores: expected a C-contiguous (rows, gallery_rows) array");
  const rgf::ScreenScores s{scores.data(), !f32, candidates, rel_error};
  const int64_t* labels = gallery_labels.data();
  int64_t* c = counts.mutable_data();
  double* e = embedding_sum.mutable_data();
  int64_t* n = nearest.mutable_data();
  int64_t* pr = problems.mutable_data();
  py::gil_scoped_release release;
  rgf::nn_screen_cpu(p, labels, num_classes, s, c, e, n, pr);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "retrievalguard_fast CPU kernels (use the wrappers in retrievalguard_fast)";
  const auto noconvert = [](const char* name) { return py::arg(name).noconvert(); };
  m.def("gaussian_noise", &gaussian_noise, noconvert("x"), py::arg("sigma"), py::arg("n"),
        py::arg("seed"), py::arg("stream"), py::arg("start"), noconvert("out"));
  m.def("philox4x32", &philox4x32, noconvert("counters"), noconvert("keys"), noconvert("out"));
  m.def("nn_search", &nn_search, noconvert("queries"), noconvert("gallery"), py::arg("dim"),
        noconvert("exclude"), py::arg("normalize"), noconvert("index1"), noconvert("dist1"),
        noconvert("index2"), noconvert("dist2"), noconvert("problems"));
  m.def("nn_vote", &nn_vote, noconvert("embeddings"), noconvert("gallery"), py::arg("dim"),
        noconvert("gallery_labels"), py::arg("num_classes"), noconvert("exclude"),
        py::arg("normalize"), noconvert("counts"), noconvert("embedding_sum"), noconvert("problems"));
  m.def("nn_screen", &nn_screen, noconvert("embeddings"), noconvert("gallery"), py::arg("dim"),
        noconvert("gallery_labels"), py::arg("num_classes"), noconvert("exclude"), py::arg("normalize"),
        noconvert("scores"), py::arg("candidates"), py::arg("rel_error"), noconvert("counts"),
        noconvert("embedding_sum"), noconvert("nearest"), noconvert("problems"));
  m.def("screen_key_bound", &rgf::screen_key_bound, py::arg("rel_error"), py::arg("dim"), py::arg("scale"),
        py::arg("row_norm"), py::arg("gallery_norm2_max"));
  m.def("set_tile_sizes", &rgf::set_cpu_tile_sizes, py::arg("rows"), py::arg("gallery_rows"));
  m.def("get_tile_sizes", []() {
    int64_t r = 0, g = 0;
    rgf::get_cpu_tile_sizes(&r, &g);
    return py::make_tuple(r, g);
  });
  m.def("num_threads", &rgf::cpu_num_threads);
  m.attr("cpu_arch") = RGF_CPU_ARCH_NAME;
  rgf::add_shared_attributes(m);  // kernel_abi, problem_slots, num_problem_slots
  m.attr("max_screen_candidates") = rgf::kMaxScreenCandidates;  // the largest `candidates` nn_screen accepts
  // The limits behind the bad_rows / rows_outside_unit_ball slots (Python names the offending row).
  m.attr("max_row_norm2") = rgf::kMaxRowNorm2;
  m.attr("max_unnormalized_norm2") = rgf::kMaxUnnormalizedNorm2;
#if defined(__AVX512F__)
  m.attr("dot_kernel") = "avx512 fixed-order micro-kernel (8 x 32)";
#else
  m.attr("dot_kernel") = "portable fixed-order micro-kernel (8 x 32)";
#endif
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
