// What the bindings of both compiled modules share (bind_cpu.cpp: retrievalguard_fast._core,
// bind_cuda.cpp: retrievalguard_fast._cuda, both compiled by the host C++ compiler): the module
// attributes through which Python checks the kernel ABI and reads the problem slots
// (common/nn_problem.h). One definition, so the two modules cannot export them differently.
#pragma once
#include <pybind11/pybind11.h>

#include "nn_problem.h"

namespace rgf {

// name -> slot index, from common/nn_problem.h (Python reads the counts by name).
inline pybind11::dict problem_slots() {
  pybind11::dict d;
  for (int i = 0; i < kNumProblemSlots; ++i) d[kProblemSlotNames[i]] = i;
  return d;
}

// The attributes both modules export:
//   kernel_abi         from retrievalguard_fast/kernels/backend.py, via CMakeLists.txt (kernels/backend.py
//                      refuses a module that reports another number)
//   problem_slots      name -> index of the slots of the `problems` arrays
//   num_problem_slots  the length of those arrays
inline void add_shared_attributes(pybind11::module_& m) {
  m.attr("kernel_abi") = kKernelAbi;
  m.attr("problem_slots") = problem_slots();
  m.attr("num_problem_slots") = static_cast<int>(kNumProblemSlots);
}

}  // namespace rgf
