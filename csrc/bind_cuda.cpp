// pybind11 bindings of the CUDA kernels (module retrievalguard_fast._cuda). Tensors arrive as raw
// device pointers after the Python ops (retrievalguard_fast/kernels: noise.py, nn.py, screen.py) have checked dtype, shape, contiguity and
// device; kernels run on the caller's stream (torch.cuda.current_stream()). The module links the
// CUDA runtime statically and imports on machines with no GPU or driver. Bad values in the inputs
// are counted by the kernels into the device array `problems` (common/nn_problem.h), which Python
// reads by slot name and turns into one message for both backends.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/bind_common.h"
#include "common/nn_problem.h"
#include "cuda/cuda_check.h"
#include "cuda/nn_cuda.h"
#include "cuda/noise_cuda.h"

namespace py = pybind11;

namespace {

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Number of usable devices; 0 (not an error) when there is no driver or no GPU.
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver"/"no device" error
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

void gaussian_noise(int device, uintptr_t stream, uintptr_t x, int64_t dim, float sigma, int64_t n,
                    uint64_t seed, uint32_t noise_stream, uint64_t start, uintptr_t out,
                    int out_dtype) {
  py::gil_scoped_release release;
  rgf::cuda_check(cudaSetDevice(device), "cudaSetDevice");
  rgf::gaussian_noise_cuda(ptr<const float>(x), dim, sigma, n, seed, noise_stream, start,
                           ptr<void>(out), static_cast<rgf::OutDType>(out_dtype), stream_of(stream));
}

void philox4x32(int device, uintptr_t stream, uintptr_t counters, uintptr_t keys, int64_t m,
                uintptr_t out) {
  py::gil_scoped_release release;
  rgf::cuda_check(cudaSetDevice(device), "cudaSetDevice");
  rgf::philox4x32_cuda(ptr<const uint32_t>(counters), ptr<const uint32_t>(keys), m,
                       ptr<uint32_t>(out), stream_of(stream));
}

rgf::CudaPlace place(int device, uintptr_t stream) { return rgf::CudaPlace{device, stream_of(stream)}; }

rgf::NNProblem problem(uintptr_t queries, int64_t rows, uintptr_t gallery, int64_t gallery_rows, int64_t dim,
                       uintptr_t exclude, bool normalize) {
  return rgf::NNProblem{ptr<const float>(queries), rows, ptr<const float>(gallery), gallery_rows, dim,
                        exclude ? ptr<const int64_t>(exclude) : nullptr, normalize};
}

void nn_search(int device, uintptr_t stream, uintptr_t queries, int64_t rows, uintptr_t gallery,
               int64_t gallery_rows, int64_t dim, uintptr_t exclude, bool normalize, uintptr_t index1,
               uintptr_t dist1, uintptr_t index2, uintptr_t dist2, uintptr_t problems) {
  py::gil_scoped_release release;
  const auto p = problem(queries, rows, gallery, gallery_rows, dim, exclude, normalize);
  rgf::nn_search_cuda(place(device, stream), p, ptr<int64_t>(index1), ptr<float>(dist1), ptr<int64_t>(index2),
                      ptr<float>(dist2), ptr<int64_t>(problems));
}

void nn_vote(int device, uintptr_t stream, uintptr_t embeddings, int64_t rows, uintptr_t gallery,
             int64_t gallery_rows, int64_t dim, uintptr_t gallery_labels, int64_t num_classes,
             uintptr_t exclude, bool normalize, uintptr_t counts, uintptr_t embedding_sum,
             uintptr_t problems) {
  py::gil_scoped_release release;
  const auto p = problem(embeddings, rows, gallery, gallery_rows, dim, exclude, normalize);
  rgf::nn_vote_cuda(place(device, stream), p, ptr<const int64_t>(gallery_labels), num_classes,
                    ptr<int64_t>(counts), ptr<double>(embedding_sum), ptr<int64_t>(problems));
}

// scores: (rows, gallery_rows) float32, or bfloat16 when scores_bf16.
void nn_screen(int device, uintptr_t stream, uintptr_t embeddings, int64_t rows, uintptr_t gallery,
               int64_t gallery_rows, int64_t dim, uintptr_t gallery_labels, int64_t num_classes, uintptr_t exclude,
               bool normalize, uintptr_t scores, bool scores_bf16, int candidates, double rel_error,
               uintptr_t counts, uintptr_t embedding_sum, uintptr_t nearest, uintptr_t problems) {
  py::gil_scoped_release release;
  const auto p = problem(embeddings, rows, gallery, gallery_rows, dim, exclude, normalize);
  const rgf::ScreenScores s{ptr<const void>(scores), scores_bf16, candidates, rel_error};
  rgf::nn_screen_cuda(place(device, stream), p, ptr<const int64_t>(gallery_labels), num_classes, s,
                      ptr<int64_t>(counts), ptr<double>(embedding_sum), ptr<int64_t>(nearest),
                      ptr<int64_t>(problems));
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "retrievalguard_fast CUDA kernels (use the wrappers in retrievalguard_fast)";
  m.def("device_count", &device_count);
  m.def("runtime_version", &runtime_version);
  m.def("driver_version", &driver_version);
  m.def("gaussian_noise", &gaussian_noise);
  m.def("philox4x32", &philox4x32);
  m.def("nn_search", &nn_search, py::arg("device"), py::arg("stream"), py::arg("queries"), py::arg("rows"),
        py::arg("gallery"), py::arg("gallery_rows"), py::arg("dim"), py::arg("exclude"), py::arg("normalize"),
        py::arg("index1"), py::arg("dist1"), py::arg("index2"), py::arg("dist2"), py::arg("problems"));
  m.def("nn_vote", &nn_vote, py::arg("device"), py::arg("stream"), py::arg("embeddings"), py::arg("rows"),
        py::arg("gallery"), py::arg("gallery_rows"), py::arg("dim"), py::arg("gallery_labels"),
        py::arg("num_classes"), py::arg("exclude"), py::arg("normalize"), py::arg("counts"),
        py::arg("embedding_sum"), py::arg("problems"));
  m.def("nn_screen", &nn_screen, py::arg("device"), py::arg("stream"), py::arg("embeddings"), py::arg("rows"),
        py::arg("gallery"), py::arg("gallery_rows"), py::arg("dim"), py::arg("gallery_labels"),
        py::arg("num_classes"), py::arg("exclude"), py::arg("normalize"), py::arg("scores"),
        py::arg("scores_bf16"), py::arg("candidates"), py::arg("rel_error"), py::arg("counts"),
        py::arg("embedding_sum"), py::arg("nearest"), py::arg("problems"));
  rgf::add_shared_attributes(m);  // kernel_abi, problem_slots, num_problem_slots
  m.attr("architectures") = RGF_CUDA_ARCHS;
  m.attr("compiler_version") = RGF_CUDA_COMPILER_VERSION;
}
