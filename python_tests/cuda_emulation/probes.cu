// The emulation harness's own kernels (test_emulation_harness.py calls them through ctypes): each
// exercises one rule of the execution model (barriers, warp operations, shared memory, launch
// limits, atomics, rounding intrinsics, block and thread order) or evaluates a shared device
// function (screen_key_bound) so that Python can compare it with the CPU module. Every entry
// point returns the cudaError_t of its launch (cudaGetLastError after it).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/nn_screen.h"

#define PROBE extern "C" __attribute__((visibility("default")))

namespace {

// ------------------------------------------------------------------ barriers
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Threads that exit drop out of later barriers (sm_70+): legal.
__global__ void exited_threads_kernel(int* out) {
  __shared__ int s[64];
  if (threadIdx.x >= 40) return;
  s[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % 40];
}

// Half a warp waits at __syncthreads, the other half at a full-warp shuffle: a deadlock (each
// half waits for the other).
__global__ void barrier_vs_shuffle_kernel(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
  }
}

// ------------------------------------------------------------------ warp operations
// out[5 * 64]: idx(src 3), xor 5, up 2, down 7, width-8 idx (src 1), per thread; then ballot.
__global__ void shuffle_values_kernel(int* out) {
  const int v = 100 + threadIdx.x;
  const int t = threadIdx.x;
  out[0 * 64 + t] = __shfl_sync(0xffffffffu, v, 3);
  out[1 * 64 + t] = __shfl_xor_sync(0xffffffffu, v, 5);
  out[2 * 64 + t] = __shfl_up_sync(0xffffffffu, v, 2);
  out[3 * 64 + t] = __shfl_down_sync(0xffffffffu, v, 7);
  out[4 * 64 + t] = __shfl_sync(0xffffffffu, v, 1, 8);
  out[5 * 64 + t] = static_cast<int>(__ballot_sync(0xffffffffu, t % 3 == 0));
  const double d = 0.5 + t;
  out[6 * 64 + t] = static_cast<int>(__shfl_xor_sync(0xffffffffu, d, 16) * 2.0);
}

__global__ void mask_excludes_caller_kernel(int* out) {
  out[threadIdx.x] = __shfl_sync(0x1u, static_cast<int>(threadIdx.x), 0);
}

// The lanes of one full mask reach two different __shfl_sync call sites.
__global__ void divergent_shuffle_kernel(int* out) {
  if (threadIdx.x < 16) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
  } else {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
  }
}

// Lanes 16-31 exit; the rest shuffle with the full mask: exited lanes drop out (legal), but
// reading one of them (src 20) is reported.
__global__ void exited_lanes_kernel(int* out, int src) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
  if (src >= 0) out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), src);
}

// ------------------------------------------------------------------ shared memory
// out[block * 64 + t]: the bits of s[t] before this block writes it; the kernel then writes it.
__global__ void shared_garbage_kernel(uint32_t* out) {
  __shared__ float s[64];
  out[blockIdx.x * 64 + threadIdx.x] = __float_as_uint(s[threadIdx.x]);
  __syncthreads();
  s[threadIdx.x] = static_cast<float>(blockIdx.x);
}

__global__ void too_much_static_shared_kernel(float* out) {
  __shared__ float big[13 * 1024];  // 52 KiB > 48 KiB (ptxas refuses it; the emulation reports it)
  big[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = big[(threadIdx.x + 1) % blockDim.x];
}

__global__ void empty_kernel(int* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && out) out[0] = 1;
}

// ------------------------------------------------------------------ atomics, orders
__global__ void atomics_kernel(int* i, unsigned long long* u, float* f, double* d) {
  atomicAdd(i, 1);
  atomicAdd(u, 3ull);
  atomicAdd(f, 0.5f);
  atomicAdd(d, 0.25);
}

// Each block takes a ticket when it starts; each thread of block 0 takes one before the barrier.
__global__ void order_kernel(int* ticket, int* block_order, int* thread_order) {
  if (threadIdx.x == 0) block_order[blockIdx.x] = atomicAdd(ticket, 1);
  if (blockIdx.x == 0) thread_order[threadIdx.x] = atomicAdd(ticket + 1, 1);
  __syncthreads();
}

// ------------------------------------------------------------------ arithmetic
// out[k * n + i] for the k-th expression of element i (see test_emulation_harness.py).
__global__ void rounding_kernel(const float* a, const float* b, const float* c, const double* x, int n,
                                uint32_t* out32, int64_t* out64, uint16_t* out16) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out32[0 * n + i] = __float_as_uint(__fadd_rn(__fmul_rn(a[i], b[i]), c[i]));
  out32[1 * n + i] = __float_as_uint(fmaf(a[i], b[i], c[i]));
  out32[2 * n + i] = __float_as_uint(a[i] * b[i] + c[i]);  // contracted in the contraction build
  out32[3 * n + i] = static_cast<uint32_t>(__float2int_rn(a[i] * 1000.0f));
  out64[0 * n + i] = __double2ll_rn(x[i]);
  out64[1 * n + i] = __double_as_longlong(__dadd_rn(__dmul_rn(x[i], x[i]), 1.0));
  out64[2 * n + i] = __double_as_longlong(__fma_rn(x[i], x[i], 1.0));
  out16[0 * n + i] = __float2half_rn(a[i]).__x;
  out16[1 * n + i] = __float2bfloat16_rn(a[i]).__x;
}

__global__ void screen_key_bound_kernel(const double* rel, const int64_t* dim, const double* scale,
                                        const double* row_norm, const double* gn2, int64_t n, double* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = rgf::screen_key_bound(rel[i], dim[i], scale[i], row_norm[i], gn2[i]);
}

int blocks(int64_t n, int t) { return static_cast<int>((n + t - 1) / t); }

}  // namespace

PROBE int probe_divergent_barrier(int* out) {
  divergent_barrier_kernel<<<1, 64>>>(out);
  return cudaGetLastError();
}
PROBE int probe_exited_threads(int* out) {
  exited_threads_kernel<<<1, 64>>>(out);
  return cudaGetLastError();
}
PROBE int probe_barrier_vs_shuffle(int* out) {
  barrier_vs_shuffle_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}
PROBE int probe_shuffle_values(int* out) {
  shuffle_values_kernel<<<1, 64>>>(out);
  return cudaGetLastError();
}
PROBE int probe_mask_excludes_caller(int* out) {
  mask_excludes_caller_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}
PROBE int probe_divergent_shuffle(int* out) {
  divergent_shuffle_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}
PROBE int probe_exited_lanes(int* out, int src) {
  exited_lanes_kernel<<<1, 32>>>(out, src);
  return cudaGetLastError();
}
PROBE int probe_shared_garbage(uint32_t* out, int nblocks) {
  shared_garbage_kernel<<<nblocks, 64>>>(out);
  return cudaGetLastError();
}
PROBE int probe_too_much_static_shared(float* out) {
  too_much_static_shared_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}
// A launch of the given shape; optin > 0 first raises the kernel's dynamic shared memory limit.
PROBE int probe_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, size_t shared,
                       int optin, int* out) {
  if (optin > 0) {
    const cudaError_t e = cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
    if (e != cudaSuccess) return 1000 + e;
  }
  empty_kernel<<<dim3(gx, gy, gz), dim3(bx, by, bz), shared>>>(out);
  return cudaGetLastError();
}
PROBE int probe_bad_stream(int* out) {
  empty_kernel<<<1, 1, 0, reinterpret_cast<cudaStream_t>(0x1234)>>>(out);
  return cudaGetLastError();
}
PROBE int probe_atomics(int nblocks, int threads, int* i, unsigned long long* u, float* f, double* d) {
  atomics_kernel<<<nblocks, threads>>>(i, u, f, d);
  return cudaGetLastError();
}
PROBE int probe_order(int nblocks, int threads, int* ticket, int* block_order, int* thread_order) {
  order_kernel<<<nblocks, threads>>>(ticket, block_order, thread_order);
  return cudaGetLastError();
}
PROBE int probe_rounding(const float* a, const float* b, const float* c, const double* x, int n, uint32_t* out32,
                         int64_t* out64, uint16_t* out16) {
  rounding_kernel<<<blocks(n, 128), 128>>>(a, b, c, x, n, out32, out64, out16);
  return cudaGetLastError();
}
PROBE int probe_screen_key_bound(const double* rel, const int64_t* dim, const double* scale, const double* row_norm,
                                 const double* gn2, int64_t n, double* out) {
  screen_key_bound_kernel<<<blocks(n, 256), 256>>>(rel, dim, scale, row_norm, gn2, n, out);
  return cudaGetLastError();
}
// The runtime API on host memory: malloc, set, copy back, free; events around it.
PROBE int probe_runtime(uint8_t* out, size_t n) {
  void* p = nullptr;
  cudaEvent_t e0, e1;
  cudaStream_t s;
  if (cudaStreamCreate(&s) || cudaEventCreate(&e0) || cudaEventCreate(&e1)) return cudaGetLastError();
  if (cudaEventRecord(e0, s) || cudaMallocAsync(&p, n, s)) return cudaGetLastError();
  if (cudaMemcpyAsync(out, p, n, cudaMemcpyDeviceToHost, s)) return cudaGetLastError();  // fresh memory: garbage
  if (cudaMemsetAsync(p, 7, n / 2, s) || cudaMemcpyAsync(out + n, p, n, cudaMemcpyDeviceToHost, s))
    return cudaGetLastError();
  if (cudaFreeAsync(p, s) || cudaEventRecord(e1, s) || cudaStreamSynchronize(s)) return cudaGetLastError();
  float ms = -1.0f;
  if (cudaEventElapsedTime(&ms, e0, e1) || ms < 0.0f) return 2000;
  if (cudaFree(reinterpret_cast<void*>(0x10)) != cudaErrorInvalidValue) return 2001;  // not an allocation
  cudaGetLastError();
  if (cudaSetDevice(1) != cudaErrorInvalidDevice) return 2002;
  cudaGetLastError();
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(s);
  return cudaGetLastError();
}
