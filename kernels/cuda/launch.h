// launch.h — the portable layer every kernels/cuda source includes first: the one `<<<>>>`
// of the project, shared-memory declarations, 16-byte vector access, and the namespace that
// keeps the two compilations of one source apart.
//
// Under nvcc (__CUDACC__) this is thin CUDA: SharedSpan is a raw pointer, launch() is `<<<>>>`
// plus cudaGetLastError. Under g++ the same names come from kernels/emu (emu.h), which runs
// the kernel on CPU fibers and checks it. The code of a kernel source is placed in
// namespace shardtrain::kernels::ST_GPU_NS — `cuda` or `cuda_emu` — so both compilations can
// be linked into one binary (a test can run the GPU and the emulator side by side).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

// The world's declarations of the op set (kernels/cuda/ops.inc) come with it, so a kernel
// source defines exactly what ops.h declares.
#if defined(__CUDACC__)
#include <cuda_runtime.h>

#include "kernels/cuda/ops.h"
#define ST_GPU_NS cuda
#else
#include "kernels/emu/emu.h"
#include "kernels/emu/ops.h"
#define ST_GPU_NS cuda_emu
#endif

#define ST_DEVICE __device__ __forceinline__
// Full unrolling of loops over register arrays (fragments, accumulators): a register array
// indexed by a loop variable that is not unrolled lives in local memory (a stack frame in
// ptxas -v). g++ needs no hint for correctness, so under emu it is empty.
// ST_NO_UNROLL keeps a loop rolled where unrolling would only raise register pressure (its
// body indexes register arrays with unrolled inner loops only).
#if defined(__CUDACC__)
#define ST_UNROLL _Pragma("unroll")
#define ST_NO_UNROLL _Pragma("unroll 1")
#else
#define ST_UNROLL
#define ST_NO_UNROLL
#endif

namespace shardtrain::kernels::ST_GPU_NS {

#if defined(__CUDACC__)

constexpr Status kOk = cudaSuccess;  // Stream and Status: kernels/cuda/ops.h

// Shared memory as the kernel sees it: indexable like an array.
template <class T>
struct SharedSpan {
  T* p;
  ST_DEVICE T& operator[](size_t i) const { return p[i]; }
};

// The launch helper: the only `<<<>>>` in shardtrain. Dynamic shared memory beyond 48 KiB
// must be opted into per kernel (cudaFuncAttributeMaxDynamicSharedMemorySize).
template <class... KArgs, class... Args>
Status launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t dynamic_smem, Stream stream,
              Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "launch: wrong number of kernel arguments");
  if (dynamic_smem > 48 * 1024) {
    Status e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(dynamic_smem));
    if (e != cudaSuccess) return e;
  }
  kernel<<<grid, block, dynamic_smem, stream>>>(static_cast<KArgs>(std::forward<Args>(args))...);
  return cudaGetLastError();
}

#define ST_SHARED(T, name, n)                      \
  __shared__ __align__(16) T name##_st_storage[n]; \
  const ::shardtrain::kernels::cuda::SharedSpan<T> name { name##_st_storage }
#define ST_DYNAMIC_SHARED(T, name)                                 \
  extern __shared__ __align__(16) unsigned char st_dynamic_smem[]; \
  const ::shardtrain::kernels::cuda::SharedSpan<T> name { reinterpret_cast<T*>(st_dynamic_smem) }

#else  // the emulator

constexpr Status kOk = Status::kOk;  // Stream and Status: kernels/emu/ops.h
using emu::launch;
using emu::SharedSpan;

// Each declaration site is identified by the address of a static it owns (one per template
// instantiation), so every thread of a block gets the same arena slot.
#define ST_SHARED(T, name, n)           \
  static const char name##_st_site = 0; \
  const auto name = ::shardtrain::emu::static_shared_span<T>(&name##_st_site, size_t(n))
#define ST_DYNAMIC_SHARED(T, name) const auto name = ::shardtrain::emu::dynamic_shared_span<T>()

#endif

// ---- 16-byte vector access ----------------------------------------------------------------

// 16 bytes of T: one LDG.128/STG.128 on the GPU. The pointer must be 16-byte aligned (emu
// faults otherwise, as the GPU would); callers check alignment and keep a scalar path.
template <class T>
struct alignas(16) Pack {
  static constexpr int kN = int(16 / sizeof(T));
  T v[kN];
};

template <class T>
__host__ __device__ __forceinline__ bool is_aligned16(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

template <class T>
ST_DEVICE Pack<T> load_pack(const T* p) {
  Pack<T> r;
#if defined(__CUDACC__)
  *reinterpret_cast<uint4*>(&r) = *reinterpret_cast<const uint4*>(p);
#else
  if (!is_aligned16(p)) emu::detail::fail("misaligned 16-byte vector load");
  std::memcpy(&r, p, 16);
#endif
  return r;
}

template <class T>
ST_DEVICE void store_pack(T* p, const Pack<T>& r) {
#if defined(__CUDACC__)
  *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(&r);
#else
  if (!is_aligned16(p)) emu::detail::fail("misaligned 16-byte vector store");
  std::memcpy(p, &r, 16);
#endif
}

// ---- Reductions ---------------------------------------------------------------------------

constexpr unsigned kFullMask = 0xffffffffu;

// Butterfly sum/max over the 32 lanes; every lane gets the result. The xor order (16, 8, 4,
// 2, 1) is fixed, so a warp's sum is deterministic.
ST_DEVICE float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
ST_DEVICE float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Block-wide sum/max for blockDim.x a multiple of 32 (<= 1024): warp butterflies, the warp
// results through shared memory, then warp 0 reduces them and broadcasts. `scratch` holds 33
// floats; the leading barrier makes back-to-back calls with one scratch safe.
template <bool kMax>
ST_DEVICE float block_reduce(float v, const SharedSpan<float>& scratch) {
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  const int warps = int(blockDim.x) / 32;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[size_t(warp)] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < warps ? float(scratch[size_t(lane)]) : (kMax ? -INFINITY : 0.0f);
    w = kMax ? warp_max(w) : warp_sum(w);
    if (lane == 0) scratch[32] = w;
  }
  __syncthreads();
  return scratch[32];
}

// ---- Asynchronous copies, global -> shared (cp.async, sm_80+) ------------------------------
// cp_async_16: 16 bytes from src to shared elements i .. (both 16-byte aligned), or 16 zero
// bytes when !valid (src not read, but must be a valid address); cp_async_commit closes the
// thread's group of copies; cp_async_wait<N> returns once at most N of its groups are in
// flight. Other threads see the bytes after the wait and a barrier. Under emu a copy lands at
// the wait, not before (kernels/emu/emu.h), so a missing wait or barrier fails the tests.
#if defined(__CUDACC__)
template <class T>
ST_DEVICE void cp_async_16(const SharedSpan<T>& s, size_t i, const T* src, bool valid) {
  const unsigned a = unsigned(__cvta_generic_to_shared(&s[i]));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
ST_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
ST_DEVICE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#else
template <class T>
inline void cp_async_16(const SharedSpan<T>& s, size_t i, const T* src, bool valid) {
  (void)s[i + 16 / sizeof(T) - 1];  // bounds check of the last element
  emu::detail::async_copy((&s[i]).raw(), src, 16, valid ? 16 : 0);
}
inline void cp_async_commit() { emu::detail::async_commit(); }
template <int N>
inline void cp_async_wait() {
  emu::detail::async_wait(N);
}
#endif

// ---- Ordering between blocks ----------------------------------------------------------------
// A block hands a result in global memory to a later block through an int flag (the pattern of
// CUTLASS's serial split-K semaphore): block_publish — every thread fences its own writes, the
// barrier, then thread 0 stores the flag with release semantics; block_wait — thread 0 spins on
// acquire loads until the flag equals `value`, then the barrier. The data itself goes through
// load_l2 / store_l2 (L2 only: another SM's L1 may hold a stale copy). 1-D blocks. A wait is
// deadlock-free only on a block that is already running: callers take their work in the order
// of an atomic ticket and wait on lower tickets only. Under emu blocks run one at a time in
// that order, so a flag not yet set can never become set: the wait faults (an ordering bug)
// instead of hanging.
#if defined(__CUDACC__)
ST_DEVICE void block_publish(int* flag, int value) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("st.release.gpu.global.s32 [%0], %1;\n" ::"l"(flag), "r"(value) : "memory");
  }
}
ST_DEVICE void block_wait(const int* flag, int value) {
  if (threadIdx.x == 0) {
    for (;;) {
      int v;
      asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
      if (v == value) break;
      __nanosleep(32);
    }
  }
  __syncthreads();
}
ST_DEVICE float2 load_l2(const float2* p) { return __ldcg(p); }
ST_DEVICE void store_l2(float2* p, float2 v) { __stcg(p, v); }
#else
inline void block_publish(int* flag, int value) {
  __syncthreads();
  if (threadIdx.x == 0) *flag = value;
}
inline void block_wait(const int* flag, int value) {
  if (threadIdx.x == 0 && *flag != value) {
    emu::detail::fail("block_wait: flag is " + std::to_string(*flag) + ", waiting for " +
                      std::to_string(value) +
                      " from a block that has not run (blocks run in ticket order)");
  }
  __syncthreads();
}
inline float2 load_l2(const float2* p) { return *p; }
inline void store_l2(float2* p, float2 v) { *p = v; }
#endif

}  // namespace shardtrain::kernels::ST_GPU_NS
