// emu.h — the slice of CUDA C++ that kernels/cuda sources use, implemented for g++ on the CPU.
//
// Why it is shaped so: the kernels under kernels/cuda are written once and compiled twice —
// by nvcc as real kernels, and by g++ against this header — so that every test and CI machine
// (none has a GPU) runs the very source a GPU would. The portable subset is plain CUDA C++
// (threadIdx, __syncthreads, __shfl_*_sync, __ballot_sync, atomicAdd, ...) plus two wrappers
// that real CUDA does not need but the emulator does (kernels/cuda/launch.h): shared memory
// is declared with ST_SHARED / ST_DYNAMIC_SHARED and indexed through SharedSpan, so that every
// shared access can be checked; launches go through one helper, so `<<<>>>` appears once.
//
// Execution model: blocks run one after another on the calling OS thread; the threads of a
// block are fibers (ucontext) scheduled cooperatively, switching only at synchronisation
// points (__syncthreads, warp collectives). We chose fibers over std::thread + std::barrier
// because (a) a block may have 1024 threads and a grid thousands of blocks — OS threads would
// cost a clone and a futex per barrier each, on a machine with two cores; (b) cooperative
// scheduling is deterministic, so a race report or a deadlock is reproducible run to run and
// atomics need no host locking; (c) a fiber that waits can be inspected, which turns a hung
// barrier or a warp collective missing a lane into a diagnosed fault instead of a hang.
//
// Strictness (a real GPU forgives some of these by accident; emu does not):
//  - __syncthreads must be reached by every thread of the block; a thread that has exited
//    while others wait is a fault (CUDA calls it undefined).
//  - A warp collective's mask must contain the calling lane, only lanes that exist and have
//    not exited, every lane of the mask must execute the same collective with the same mask,
//    and a shuffle must read from a lane inside the mask.
//  - Shared memory: out-of-bounds indices, and two threads touching the same 2-byte granule
//    between two barriers with at least one write (not both atomic, not ordered by a
//    full-warp __syncwarp/collective when both are in one warp) are faults: the race detector.
//    Fresh shared memory is filled with 0xff bytes (NaN as float, -1 as int), so a read of
//    shared memory nobody wrote shows up in results.
//  - Vector loads (load_pack) must be 16-byte aligned, as on the GPU.
// A fault throws emu::Fault out of launch() on the host, naming block, thread and reason.
#pragma once

#include <math.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kernels/emu/emu_types.h"

// ---- CUDA keywords ------------------------------------------------------------------------
// __shared__ is deliberately left undefined: shared memory must go through ST_SHARED so that
// it is checked; a raw __shared__ in a kernel fails to compile here.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

namespace shardtrain::emu {

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

constexpr int kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
// 48 KiB: the static shared limit per block on sm_80/sm_90; dynamic shared memory beyond it
// needs cudaFuncSetAttribute (launch.h does it). 227 KiB: sm_90's opt-in maximum per block
// (sm_80 allows 163 KiB; kernels meant for both stay under that, which launch.h checks on GPU).
constexpr size_t kStaticSharedLimit = 48 * 1024;
constexpr size_t kMaxSharedBytes = 227 * 1024;

// What a kernel may ask of the fiber it runs in.
struct ThreadState {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  int tid;  // linear thread index in the block: x + y*Dx + z*Dx*Dy (CUDA's warp order)
};

namespace detail {

extern thread_local ThreadState* t_current;

// Synchronisation, implemented by the block scheduler in emu.cpp.
void syncthreads();
enum class WarpOp : int {
  kSync,
  kShflIdx,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAll,
  kAny,
  kWide
};
// A warp-wide operation (kWide): called once, by the last lane of the mask to arrive, with every
// lane's deposited pointer (lane_data[l], null for lanes outside the mask). All other lanes are
// still parked inside the collective, so the data each points to (on its fiber's stack) is
// alive and unchanged; results written through those pointers are seen when each lane returns.
// This is how the warp-wide tensor-core instructions (mma.sync, kernels/cuda/mma.h) are emulated.
using WarpFn = void (*)(void* const* lane_data, unsigned mask);
// Deposits `value` for the calling lane, waits for every lane of `mask`, and returns the
// collective's result (the source lane's value for shuffles, the ballot/vote otherwise; for
// kWide, `value` is the lane's pointer and `fn` runs as described above).
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width,
                         WarpFn fn = nullptr);

// Shared memory arena of the running block.
void* static_shared(const void* site, size_t bytes, size_t align);
void* dynamic_shared(size_t* bytes);
// Race detector + bounds check for an access of `bytes` at `p` (inside the arena).
void shared_access(const void* p, size_t bytes, bool write, bool atomic);
// cp.async (kernels/cuda/launch.h): the calling thread's copy of `src_bytes` from `src` (the
// rest of `bytes` zero-filled) is read now but lands in shared memory only when the thread
// waits for its group, so a read that misses the wait (or the barrier after it) sees the old
// bytes. The race detector sees the write both at the issue (the hardware may write from then
// on) and at the landing. async_wait(n) completes the oldest committed groups until n remain.
void async_copy(void* shared_dst, const void* src, size_t bytes, size_t src_bytes);
void async_commit();
void async_wait(int groups_in_flight);
[[noreturn]] void fail(const std::string& what);

// Runs `body` as every thread of every block; throws Fault on the first fault.
void run_grid(dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()>& body);

template <class T>
uint64_t to_bits64(const T& v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp exchange: <= 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
T from_bits64(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

}  // namespace detail

// ---- Shared memory views ----------------------------------------------------------------

template <class T>
class SharedPtr;

// One shared element: reads and writes go through the race detector.
template <class T>
class SharedRef {
 public:
  explicit SharedRef(T* p) : p_(p) {}
  operator T() const {  // NOLINT(google-explicit-constructor): reads like a T&
    detail::shared_access(p_, sizeof(T), false, false);
    T v;
    std::memcpy(&v, p_, sizeof(T));
    return v;
  }
  const SharedRef& operator=(const T& v) const {
    detail::shared_access(p_, sizeof(T), true, false);
    std::memcpy(p_, &v, sizeof(T));
    return *this;
  }
  const SharedRef& operator=(const SharedRef& o) const { return *this = T(o); }
  const SharedRef& operator+=(const T& v) const { return *this = T(*this) + v; }
  const SharedRef& operator-=(const T& v) const { return *this = T(*this) - v; }
  const SharedRef& operator*=(const T& v) const { return *this = T(*this) * v; }
  SharedPtr<T> operator&() const { return SharedPtr<T>(p_); }  // NOLINT: for atomicAdd(&s[i])

 private:
  T* p_;
};

template <class T>
class SharedPtr {
 public:
  explicit SharedPtr(T* p) : p_(p) {}
  T* raw() const { return p_; }

 private:
  T* p_;
};

// A bounds-checked view of `size` elements of the block's shared memory.
template <class T>
class SharedSpan {
 public:
  SharedSpan(T* base, size_t size) : base_(base), size_(size) {}
  SharedRef<T> operator[](size_t i) const {
    if (i >= size_) {
      detail::fail("shared memory index " + std::to_string(i) + " out of bounds (size " +
                   std::to_string(size_) + ")");
    }
    return SharedRef<T>(base_ + i);
  }
  size_t size() const { return size_; }

 private:
  T* base_;
  size_t size_;
};

template <class T>
SharedSpan<T> static_shared_span(const void* site, size_t n) {
  return SharedSpan<T>(static_cast<T*>(detail::static_shared(site, n * sizeof(T), alignof(T))), n);
}
template <class T>
SharedSpan<T> dynamic_shared_span() {
  size_t bytes = 0;
  T* p = static_cast<T*>(detail::dynamic_shared(&bytes));
  return SharedSpan<T>(p, bytes / sizeof(T));
}

// ---- Launch -------------------------------------------------------------------------------

// The emulator's launch helper, with kernels/cuda/launch.h's signature. Arguments are
// converted to the kernel's parameter types and copied once, as a real launch copies them.
template <class... KArgs, class... Args>
Status launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t dynamic_smem, Stream,
              Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "launch: wrong number of kernel arguments");
  std::tuple<std::decay_t<KArgs>...> params(static_cast<KArgs>(std::forward<Args>(args))...);
  detail::run_grid(grid, block, dynamic_smem, [&] { std::apply(kernel, params); });
  return Status::kOk;
}

}  // namespace shardtrain::emu

// ---- The CUDA surface, in the global namespace as CUDA has it ------------------------------

using shardtrain::emu::dim3;
using shardtrain::emu::uint3;

#define threadIdx (::shardtrain::emu::detail::t_current->thread_idx)
#define blockIdx (::shardtrain::emu::detail::t_current->block_idx)
#define blockDim (::shardtrain::emu::detail::t_current->block_dim)
#define gridDim (::shardtrain::emu::detail::t_current->grid_dim)
constexpr int warpSize = shardtrain::emu::kWarpSize;

struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

inline void __syncthreads() { shardtrain::emu::detail::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  shardtrain::emu::detail::warp_collective(shardtrain::emu::detail::WarpOp::kSync, mask, 0, 0, 32);
}

#define ST_EMU_SHFL(name, op)                                                  \
  template <class T>                                                           \
  inline T name(unsigned mask, T v, int arg, int width = 32) {                 \
    using shardtrain::emu::detail::from_bits64;                                \
    using shardtrain::emu::detail::to_bits64;                                  \
    return from_bits64<T>(shardtrain::emu::detail::warp_collective(            \
        shardtrain::emu::detail::WarpOp::op, mask, to_bits64(v), arg, width)); \
  }
ST_EMU_SHFL(__shfl_sync, kShflIdx)
ST_EMU_SHFL(__shfl_up_sync, kShflUp)
ST_EMU_SHFL(__shfl_down_sync, kShflDown)
ST_EMU_SHFL(__shfl_xor_sync, kShflXor)
#undef ST_EMU_SHFL

inline unsigned __ballot_sync(unsigned mask, int pred) {
  return unsigned(shardtrain::emu::detail::warp_collective(shardtrain::emu::detail::WarpOp::kBallot,
                                                           mask, pred != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  return int(shardtrain::emu::detail::warp_collective(shardtrain::emu::detail::WarpOp::kAll, mask,
                                                      pred != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  return int(shardtrain::emu::detail::warp_collective(shardtrain::emu::detail::WarpOp::kAny, mask,
                                                      pred != 0, 0, 32));
}

// ---- Atomics -------------------------------------------------------------------------------
// Fibers switch only at synchronisation points, so a read-modify-write cannot be interleaved;
// std::atomic_ref keeps them atomic should blocks ever run on several OS threads.
template <class T>
inline T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
template <class T>
inline T atomicSub(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_sub(v);
}
template <class T>
inline T atomicExch(T* p, T v) {
  return std::atomic_ref<T>(*p).exchange(v);
}
template <class T>
inline T atomicCAS(T* p, T expected, T desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
  return expected;  // the old value, as CUDA returns it
}
template <class T>
inline T atomicMax(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <class T>
inline T atomicOr(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_or(v);
}
// Shared-memory atomics: checked as atomic accesses (atomic vs atomic never races).
template <class T>
inline T atomicAdd(shardtrain::emu::SharedPtr<T> p, T v) {
  shardtrain::emu::detail::shared_access(p.raw(), sizeof(T), true, true);
  T old = *p.raw();
  *p.raw() = old + v;
  return old;
}
template <class T>
inline T atomicMax(shardtrain::emu::SharedPtr<T> p, T v) {
  shardtrain::emu::detail::shared_access(p.raw(), sizeof(T), true, true);
  T old = *p.raw();
  if (old < v) *p.raw() = v;
  return old;
}

// ---- Math intrinsics without a glibc twin ----------------------------------------------------
// The _rn forms are single IEEE operations, never contracted into an fma; g++ compiles C++
// with -std=c++20 (not gnu++), whose default is -ffp-contract=off, so plain operators match.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
