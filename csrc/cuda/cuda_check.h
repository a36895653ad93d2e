// Error handling of the CUDA backend: every runtime call and kernel launch is checked, and a
// failure becomes std::runtime_error naming the CUDA error (pybind11 raises RuntimeError).
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace rgf {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": CUDA error " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
}

// After a launch: configuration errors show up at once; asynchronous faults surface on a later
// synchronising call, which is checked the same way.
inline void cuda_check_launch(const char* kernel) { cuda_check(cudaGetLastError(), kernel); }

}  // namespace rgf
