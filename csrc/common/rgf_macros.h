// Macros shared by the host (C++) and device (CUDA) builds of the same math.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define RGF_HD __host__ __device__ __forceinline__
#else
#define RGF_HD inline
#endif

// Bit-identical float math on host and device.
// Every multiply-add in the shared math is written as an explicit fmaf, and every other
// multiply or add must not be contracted into an FMA by the compiler. On the device the
// __fmul_rn/__fadd_rn intrinsics are never contracted; on the host the CPU module is compiled
// with -ffp-contract=off. IEEE-754 mul, add, fma, sqrt and int->float conversion are correctly
// rounded on both sides, so the results agree bit for bit.
#if defined(__CUDA_ARCH__)
#define RGF_FMUL(a, b) __fmul_rn((a), (b))
#define RGF_FADD(a, b) __fadd_rn((a), (b))
#define RGF_FSUB(a, b) __fsub_rn((a), (b))
#else
#define RGF_FMUL(a, b) ((a) * (b))
#define RGF_FADD(a, b) ((a) + (b))
#define RGF_FSUB(a, b) ((a) - (b))
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

}  // namespace rgf
