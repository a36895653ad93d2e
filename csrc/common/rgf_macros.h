// Macros shared by the host (C++) and device (CUDA) builds of the same math, and the assertion
// macro of host code.
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define RGF_HD __host__ __device__ __forceinline__
#else
#define RGF_HD inline
#endif

// Bit-identical float math on host and device.
// Every multiply-add in the shared math is written as an explicit fmaf / fma, and every other
// multiply or add whose operand is a product (or whose result feeds an add), in float32 or
// float64, goes through these macros, so no compiler can contract it into an FMA. On the device
// the __fmul_rn/__fadd_rn/__dmul_rn/__dadd_rn intrinsics are never contracted (nvcc contracts
// plain a*b+c by default, -fmad=true, and the CUDA module keeps that default); on the host the
// CPU module is compiled with -ffp-contract=off. IEEE-754 mul, add, fma, sqrt and int->float
// conversion are correctly rounded on both sides, so the results agree bit for bit. The CUDA
// emulation's "contraction" build (python_tests/cuda_emulation) contracts every plain a*b+c,
// as nvcc may, and checks that the device results still match the CPU module's.
#if defined(__CUDA_ARCH__)
#define RGF_FMUL(a, b) __fmul_rn((a), (b))
#define RGF_FADD(a, b) __fadd_rn((a), (b))
#define RGF_FSUB(a, b) __fsub_rn((a), (b))
#define RGF_DMUL(a, b) __dmul_rn((a), (b))
#define RGF_DADD(a, b) __dadd_rn((a), (b))
#define RGF_DSUB(a, b) __dsub_rn((a), (b))
#else
#define RGF_FMUL(a, b) ((a) * (b))
#define RGF_FADD(a, b) ((a) + (b))
#define RGF_FSUB(a, b) ((a) - (b))
#define RGF_DMUL(a, b) ((a) * (b))
#define RGF_DADD(a, b) ((a) + (b))
#define RGF_DSUB(a, b) ((a) - (b))
#endif

namespace rgf {

RGF_HD uint32_t float_as_uint(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  union { float f; uint32_t u; } v{f};
  return v.u;
#endif
}

RGF_HD float uint_as_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  union { uint32_t u; float f; } v{u};
  return v.f;
#endif
}

// Internal invariants of host code: what the Python wrappers guarantee before calling (array
// sizes, parameter ranges). A failure is a bug of this package, never bad user input (that is
// counted in the problem slots of common/nn_problem.h), so it is reported as such:
// std::logic_error("retrievalguard_fast internal error: <msg> (file:line)"), which pybind11 raises
// as RuntimeError. `msg` is a C string or std::string, built only when the check fails.
#define RGF_ASSERT(cond, msg)                                     \
  do {                                                            \
    if (!(cond)) ::rgf::assert_failed((msg), __FILE__, __LINE__); \
  } while (0)

[[noreturn]] inline void assert_failed(const std::string& msg, const char* file, int line) {
  const char* rel = std::strstr(file, "csrc/");  // the path inside the repository, not the build's
  throw std::logic_error("retrievalguard_fast internal error: " + msg + " (" + (rel ? rel : file) + ":" +
                         std::to_string(line) + ")");
}

}  // namespace rgf
