// A CPU emulation of the CUDA execution model, for running this package's CUDA sources
// (csrc/cuda/*.cu, csrc/bind_cuda.cpp) unchanged as C++ on a machine without a GPU. Test-only:
// built by python_tests/cuda_emulation/emulation_build.py, never installed (docs/design.md, "Verifying
// without a GPU", says what it proves and what it cannot).
//
// The model, and the CUDA rules it enforces:
//  - A launch runs its blocks one at a time (in index order, or in a seeded random order), each
//    by blockDim emulated threads: fibers on one OS thread (deterministic; resumed in index
//    order or a seeded random order) or one OS thread each (for ThreadSanitizer).
//  - __syncthreads() waits for every thread of the block that has not exited (exited threads
//    drop out, as on sm_70+); threads waiting at different __syncthreads() call sites are
//    reported (undefined behaviour in CUDA).
//  - Warp intrinsics (__shfl*_sync, __syncwarp, __ballot_sync) wait for every non-exited lane of
//    their mask; the caller must be in the mask; lanes of one mask at different call sites or
//    with different masks, and reads from a lane that does not take part, are reported.
//  - A deadlock (every live thread waits and none can go on) is reported with where each waits.
//  - __shared__ variables are per block and filled with garbage before each block (reading one
//    before writing it gives NaN-like junk, as uninitialised shared memory does on a GPU).
//    Device memory from cudaMalloc* is filled with garbage too.
//  - Launches are refused with CUDA's error codes when they break an H100/H200 limit (block and
//    grid dimensions, shared memory per block, the dynamic shared memory opt-in).
//  - A fault inside a kernel (a reported rule) is sticky, as a device fault is in CUDA: every
//    later runtime call returns cudaErrorLaunchFailure until the emulator is reset
//    (rgf_emu_reset, python_tests/cuda_emulation/emulated.py).
// Floating point: the correctly rounded operations (+ - * / sqrt fma, conversions) are IEEE on
// both; the _rn intrinsics are never contracted into FMAs, even in a build with
// -ffp-contract=fast (the "contraction" variant, which contracts plain a*b+c as nvcc does).
#pragma once

#include <math.h>  // ::isfinite, ::fmaf, ... in the global namespace, as device code sees them

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

// ----------------------------------------------------------------- keywords
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Function-local statics: one copy per kernel, and blocks run one at a time, so one copy per
// block. The launch rewrite (emulation_build.py) adds RGF_EMU_SHARED_REGION(name) after each declaration,
// which fills the variable with garbage the first time a thread of a new block reaches it.
#define __shared__ static
#define __constant__ static

// ----------------------------------------------------------------- runtime types
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorAssert = 710,
  cudaErrorLaunchFailure = 719,
};
typedef cudaError_t cudaError;

struct CUstream_st;
struct CUevent_st;
struct CUmemPoolHandle_st;
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;
typedef CUmemPoolHandle_st* cudaMemPool_t;
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)
#define cudaStreamNonBlocking 0x1
#define cudaStreamDefault 0x0

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaMemPoolAttr { cudaMemPoolAttrReleaseThreshold = 0x4 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  size_t sharedMemPerMultiprocessor;
  int regsPerBlock;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int multiProcessorCount;
  int major;
  int minor;
};

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
  float x, y;
};
struct __attribute__((aligned(16))) double2 {
  double x, y;
};

// ----------------------------------------------------------------- runtime API (cuda_emulation.cpp)
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorName(cudaError_t err);
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaRuntimeGetVersion(int* version);
cudaError_t cudaDriverGetVersion(int* version);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = 0);
cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaDeviceGetMemPool(cudaMemPool_t* pool, int device);
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
template <class T>
cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

// ----------------------------------------------------------------- execution model
namespace rgf_emu {

// The current emulated thread's indices (set by the scheduler before it resumes a fiber, or by
// each OS thread for itself).
struct ThreadIndex {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};
extern thread_local ThreadIndex current;

// A kernel launch: checks the configuration, then runs `body` once per emulated thread.
struct LaunchSite {
  const void* kernel;
  const char* name;
  const char* file;
  int line;
};
void launch(const LaunchSite& site, dim3 grid, dim3 block, size_t dynamic_shared, cudaStream_t stream,
            void (*body)(void*), void* ctx);

template <class... P>
struct Launch {
  void (*kernel)(P...);
  LaunchSite site;
  dim3 grid, block;
  size_t shared;
  cudaStream_t stream;

  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    // Arguments are converted to the parameter types and copied once, as a CUDA launch does.
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    } ctx{kernel, std::tuple<std::decay_t<P>...>(static_cast<P>(std::forward<A>(args))...)};
    launch(site, grid, block, shared, stream,
           [](void* c) {
             auto* x = static_cast<Ctx*>(c);
             std::apply(x->kernel, x->args);
           },
           &ctx);
  }
};

template <class... P>
Launch<P...> make_launch(void (*kernel)(P...), const char* name, const char* file, int line, dim3 grid, dim3 block,
                         size_t shared = 0, cudaStream_t stream = 0) {
  return Launch<P...>{kernel, LaunchSite{reinterpret_cast<const void*>(kernel), name, file, line}, grid, block,
                      shared, stream};
}

// Block-wide and warp-wide synchronisation (they report broken rules, see the file comment).
void syncthreads(const char* file, int line);
enum WarpOp : int { kShflIdx, kShflXor, kShflUp, kShflDown, kSyncWarp, kBallot };
// Exchanges `value` (up to 8 bytes) among the lanes of `mask`; returns the source lane's value
// (or the ballot / nothing for kSyncWarp).
uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line);

// A __shared__ variable reached by the current thread (the launch rewrite inserts the call after
// each declaration): filled with garbage the first time in each block.
void shared_region(void* address, size_t bytes, const char* name);

template <class T>
T warp_shuffle(WarpOp op, unsigned mask, T value, int arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of an unsupported type");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  const uint64_t out = warp_exchange(op, mask, bits, arg, width, file, line);
  T result;
  std::memcpy(&result, &out, sizeof(T));
  return result;
}

// Float64 <-> integer conversions with PTX cvt semantics: round as named, clamp to the target
// range, NaN -> 0.
template <class I>
I cvt_clamp(double v) {
  if (v != v) return 0;
  const double lo = static_cast<double>(std::numeric_limits<I>::min());      // exact: 0 or -2^k
  const double hi = std::ldexp(1.0, std::numeric_limits<I>::digits);         // 2^k, just above max
  if (v < lo) return std::numeric_limits<I>::min();
  if (v >= hi) return std::numeric_limits<I>::max();
  return static_cast<I>(v);
}

}  // namespace rgf_emu

#define RGF_EMU_LAUNCH(kernel, ...) ::rgf_emu::make_launch(kernel, #kernel, __FILE__, __LINE__, __VA_ARGS__)
#define RGF_EMU_SHARED_REGION(name) ::rgf_emu::shared_region(&(name), sizeof(name), #name)

#define threadIdx (::rgf_emu::current.thread)
#define blockIdx (::rgf_emu::current.block)
#define blockDim (::rgf_emu::current.block_dim)
#define gridDim (::rgf_emu::current.grid_dim)
#define warpSize 32

#define __syncthreads() ::rgf_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::rgf_emu::syncwarp_impl(__FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_sync(mask, v, src, ...) ::rgf_emu::shfl_impl(::rgf_emu::kShflIdx, mask, v, src, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) ::rgf_emu::shfl_impl(::rgf_emu::kShflXor, mask, v, m, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) ::rgf_emu::shfl_impl(::rgf_emu::kShflUp, mask, v, d, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) ::rgf_emu::shfl_impl(::rgf_emu::kShflDown, mask, v, d, __FILE__, __LINE__, ##__VA_ARGS__)
#define __ballot_sync(mask, pred) \
  static_cast<unsigned>(::rgf_emu::warp_exchange(::rgf_emu::kBallot, mask, (pred) ? 1u : 0u, 0, 32, __FILE__, __LINE__))

namespace rgf_emu {
template <class T>
T shfl_impl(WarpOp op, unsigned mask, T v, int arg, const char* file, int line, int width = 32) {
  return warp_shuffle(op, mask, v, arg, width, file, line);
}
inline void syncwarp_impl(const char* file, int line, unsigned mask = 0xffffffffu) {
  warp_exchange(kSyncWarp, mask, 0, 0, 32, file, line);
}
}  // namespace rgf_emu

// ----------------------------------------------------------------- device functions
// Integer min/max as CUDA's device overloads (the CUDA headers put them in the global namespace).
#define RGF_EMU_MINMAX(T)                                 \
  inline T min(T a, T b) { return b < a ? b : a; }        \
  inline T max(T a, T b) { return a < b ? b : a; }
RGF_EMU_MINMAX(int)
RGF_EMU_MINMAX(unsigned int)
RGF_EMU_MINMAX(long)
RGF_EMU_MINMAX(unsigned long)
RGF_EMU_MINMAX(long long)
RGF_EMU_MINMAX(unsigned long long)
#undef RGF_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// Atomics: CUDA's overloads, relaxed (as CUDA's atomics are). Fibers never preempt each other,
// so these are also what makes the ThreadSanitizer build see them as atomic.
#define RGF_EMU_ATOMIC_INT(T)                                                                          \
  inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }                 \
  inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }                 \
  inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }               \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }                 \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }                   \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }                 \
  inline T atomicCAS(T* p, T expected, T desired) {                                                    \
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);     \
    return expected;                                                                                   \
  }                                                                                                    \
  inline T atomicMax(T* p, T v) {                                                                      \
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                      \
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
    }                                                                                                  \
    return old;                                                                                        \
  }                                                                                                    \
  inline T atomicMin(T* p, T v) {                                                                      \
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                      \
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
    }                                                                                                  \
    return old;                                                                                        \
  }
RGF_EMU_ATOMIC_INT(int)
RGF_EMU_ATOMIC_INT(unsigned int)
RGF_EMU_ATOMIC_INT(unsigned long long)
#undef RGF_EMU_ATOMIC_INT
inline long long atomicMax(long long* p, long long v) {
  long long old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline long long atomicMin(long long* p, long long v) {
  long long old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <class F, class U>
inline F rgf_emu_atomic_add_float(F* p, F v) {
  U old = __atomic_load_n(reinterpret_cast<U*>(p), __ATOMIC_RELAXED);
  for (;;) {
    F f;
    std::memcpy(&f, &old, sizeof f);
    const F sum = f + v;
    U want;
    std::memcpy(&want, &sum, sizeof want);
    if (__atomic_compare_exchange_n(reinterpret_cast<U*>(p), &old, want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
      return f;
  }
}
inline float atomicAdd(float* p, float v) { return rgf_emu_atomic_add_float<float, uint32_t>(p, v); }
inline double atomicAdd(double* p, double v) { return rgf_emu_atomic_add_float<double, uint64_t>(p, v); }

// Rounding intrinsics. __f*_rn / __d*_rn: one IEEE operation rounded to nearest even, never
// contracted with a neighbouring multiply or add (the empty asm statements keep the compiler
// from fusing across them, as nvcc never fuses these intrinsics). __fmaf_rn / __fma_rn: one
// rounding of a*b+c.
#if defined(__x86_64__)
#define RGF_EMU_OPAQUE(v) __asm__("" : "+x"(v))
#else
#define RGF_EMU_OPAQUE(v) __asm__("" : "+w"(v))
#endif
#define RGF_EMU_RN(T, name, op)              \
  __forceinline__ T name(T a, T b) {         \
    RGF_EMU_OPAQUE(a);                       \
    RGF_EMU_OPAQUE(b);                       \
    T r = a op b;                            \
    RGF_EMU_OPAQUE(r);                       \
    return r;                                \
  }
RGF_EMU_RN(float, __fadd_rn, +)
RGF_EMU_RN(float, __fsub_rn, -)
RGF_EMU_RN(float, __fmul_rn, *)
RGF_EMU_RN(float, __fdiv_rn, /)
RGF_EMU_RN(double, __dadd_rn, +)
RGF_EMU_RN(double, __dsub_rn, -)
RGF_EMU_RN(double, __dmul_rn, *)
RGF_EMU_RN(double, __ddiv_rn, /)
#undef RGF_EMU_RN
__forceinline__ float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
__forceinline__ double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
__forceinline__ float __fsqrt_rn(float a) { return sqrtf(a); }
__forceinline__ double __dsqrt_rn(double a) { return sqrt(a); }

// Float -> integer, rounding to nearest even (_rn), toward zero (_rz), down (_rd), up (_ru),
// with PTX cvt's clamping and NaN -> 0.
__forceinline__ int __float2int_rn(float v) { return rgf_emu::cvt_clamp<int>(nearbyint(static_cast<double>(v))); }
__forceinline__ int __float2int_rz(float v) { return rgf_emu::cvt_clamp<int>(trunc(static_cast<double>(v))); }
__forceinline__ int __float2int_rd(float v) { return rgf_emu::cvt_clamp<int>(floor(static_cast<double>(v))); }
__forceinline__ int __float2int_ru(float v) { return rgf_emu::cvt_clamp<int>(ceil(static_cast<double>(v))); }
__forceinline__ int __double2int_rn(double v) { return rgf_emu::cvt_clamp<int>(nearbyint(v)); }
__forceinline__ long long __double2ll_rn(double v) { return rgf_emu::cvt_clamp<long long>(nearbyint(v)); }
__forceinline__ long long __double2ll_rz(double v) { return rgf_emu::cvt_clamp<long long>(trunc(v)); }
__forceinline__ long long __float2ll_rn(float v) { return rgf_emu::cvt_clamp<long long>(nearbyint(static_cast<double>(v))); }
__forceinline__ unsigned long long __double2ull_rn(double v) {
  return rgf_emu::cvt_clamp<unsigned long long>(nearbyint(v));
}

// Bit casts.
template <class To, class From>
__forceinline__ To rgf_emu_bits(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit cast of different sizes");
  To t;
  std::memcpy(&t, &v, sizeof t);
  return t;
}
__forceinline__ unsigned int __float_as_uint(float v) { return rgf_emu_bits<unsigned int>(v); }
__forceinline__ int __float_as_int(float v) { return rgf_emu_bits<int>(v); }
__forceinline__ float __uint_as_float(unsigned int v) { return rgf_emu_bits<float>(v); }
__forceinline__ float __int_as_float(int v) { return rgf_emu_bits<float>(v); }
__forceinline__ long long __double_as_longlong(double v) { return rgf_emu_bits<long long>(v); }
__forceinline__ double __longlong_as_double(long long v) { return rgf_emu_bits<double>(v); }

__forceinline__ int __popc(unsigned int v) { return __builtin_popcount(v); }
__forceinline__ int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
__forceinline__ int __clz(unsigned int v) { return v ? __builtin_clz(v) : 32; }
__forceinline__ int __ffs(unsigned int v) { return __builtin_ffs(static_cast<int>(v)); }

// ----------------------------------------------------------------- half and bfloat16
// Storage types with CUDA's conversions: float -> half / bfloat16 rounds to nearest even,
// overflows to infinity, and gives the canonical NaN 0x7fff for NaN (as cuda_fp16.hpp does).
struct __half {
  unsigned short __x;
};
struct __nv_bfloat16 {
  unsigned short __x;
};
typedef __half half;

__forceinline__ __half __float2half_rn(float f) {
  const uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return __half{0x7fff};
  const _Float16 h = static_cast<_Float16>(f);  // IEEE conversion, round to nearest even
  return __half{rgf_emu_bits<unsigned short>(h)};
}
__forceinline__ float __half2float(__half h) { return static_cast<float>(rgf_emu_bits<_Float16>(h.__x)); }

__forceinline__ __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fff};
  const uint32_t rounded = x + 0x7fffu + ((x >> 16) & 1u);  // ties to even on the upper half
  return __nv_bfloat16{static_cast<unsigned short>(rounded >> 16)};
}
__forceinline__ float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float(static_cast<uint32_t>(b.__x) << 16); }

// ----------------------------------------------------------------- control (C API, for ctypes)
extern "C" {
// mode 0: fibers, 1: OS threads. block_seed / thread_seed: 0 = index order, else a seeded random
// order. sm_count: what cudaDevAttrMultiProcessorCount reports (the host code plans with it).
__attribute__((visibility("default"))) void rgf_emu_configure(int mode, uint64_t block_seed, uint64_t thread_seed,
                                                             int sm_count);
// The faults reported since the last reset, one per line (empty: none); copies at most `size`
// bytes and returns the full length.
__attribute__((visibility("default"))) size_t rgf_emu_report(char* out, size_t size);
// Clears the faults and the sticky error (a fresh context).
__attribute__((visibility("default"))) void rgf_emu_reset();
// Kernel launches executed (blocks run) since the library was loaded.
__attribute__((visibility("default"))) uint64_t rgf_emu_launches();
__attribute__((visibility("default"))) uint64_t rgf_emu_blocks();
}
