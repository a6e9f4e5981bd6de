// emu_test.cpp — the emulator's own semantics (kernels/emu): barriers, per-block shared
// memory, warp shuffles and votes with strict masks, atomics, dynamic shared memory, and the
// faults it must raise (a racy kernel, a divergent barrier, a wrong mask, out-of-bounds and
// misaligned accesses). The kernels here are written in the portable subset, as
// kernels/cuda sources are, and launched through the same helper.
#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

#include "kernels/cuda/launch.h"

namespace shardtrain::kernels::cuda_emu {
namespace {

// Expects launch to fault with a message containing `needle`.
template <class F>
void expect_fault(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an emu fault containing '" << needle << "'";
  } catch (const emu::Fault& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// ---- Barrier and shared memory -------------------------------------------------------------

// Each thread writes its slot, then (after the barrier) reads its neighbour's: correct only if
// every write happened before any read.
__global__ void rotate_kernel(int* out, bool barrier) {
  ST_SHARED(int, s, 1024);
  const int t = int(threadIdx.x), n = int(blockDim.x);
  s[size_t(t)] = t * 10 + int(blockIdx.x);
  if (barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[size_t((t + 1) % n)];
}

TEST(Emu, BarrierOrdersSharedWritesBeforeReads) {
  const int blocks = 3, threads = 96;
  std::vector<int> out(blocks * threads, -7);
  launch(rotate_kernel, dim3(blocks), dim3(threads), 0, nullptr, out.data(), true);
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < threads; ++t)
      EXPECT_EQ(out[size_t(b * threads + t)], ((t + 1) % threads) * 10 + b);
  }
}

TEST(Emu, RaceDetectorCatchesMissingBarrier) {
  std::vector<int> out(64);
  expect_fault([&] { launch(rotate_kernel, dim3(1), dim3(64), 0, nullptr, out.data(), false); },
               "shared-memory race");
}

// Two threads write one word with no barrier between: write after write.
__global__ void double_write_kernel(int* out) {
  ST_SHARED(int, s, 1);
  s[0] = int(threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = s[0];
}

TEST(Emu, RaceDetectorCatchesWriteWrite) {
  int out = 0;
  expect_fault([&] { launch(double_write_kernel, dim3(1), dim3(2), 0, nullptr, &out); },
               "write after write");
}

// Writes of disjoint bf16 halves of one 32-bit word are not a race (2-byte granules).
__global__ void halves_kernel(uint16_t* out) {
  ST_SHARED(uint16_t, s, 2);
  s[threadIdx.x] = uint16_t(100 + threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[1 - threadIdx.x];
}

TEST(Emu, AdjacentHalfWordsDoNotRace) {
  uint16_t out[2] = {0, 0};
  launch(halves_kernel, dim3(1), dim3(2), 0, nullptr, out);
  EXPECT_EQ(out[0], 101);
  EXPECT_EQ(out[1], 100);
}

// Reads by many threads of a value written before the barrier, then a write after another
// barrier: legal. The same write before that second barrier: write after reads.
__global__ void broadcast_kernel(float* out, bool second_barrier) {
  ST_SHARED(float, s, 1);
  if (threadIdx.x == 0) s[0] = 2.5f;
  __syncthreads();
  out[threadIdx.x] = s[0];
  if (second_barrier) __syncthreads();
  if (threadIdx.x == 5) s[0] = 1.0f;
}

TEST(Emu, BroadcastThenRewrite) {
  std::vector<float> out(64);
  launch(broadcast_kernel, dim3(1), dim3(64), 0, nullptr, out.data(), true);
  for (float v : out) EXPECT_EQ(v, 2.5f);
  expect_fault([&] { launch(broadcast_kernel, dim3(1), dim3(64), 0, nullptr, out.data(), false); },
               "write after read");
}

// Every block sees its own shared memory, initially poisoned (0xff bytes = -1 as int).
__global__ void per_block_kernel(int* out) {
  ST_SHARED(int, s, 2);
  if (threadIdx.x == 0) out[2 * blockIdx.x] = s[1];  // never written: poison
  if (threadIdx.x == 0) s[0] = int(blockIdx.x) * 7;
  __syncthreads();
  if (threadIdx.x == 31) out[2 * blockIdx.x + 1] = s[0];
}

TEST(Emu, SharedMemoryIsPerBlockAndPoisoned) {
  std::vector<int> out(2 * 5);
  launch(per_block_kernel, dim3(5), dim3(32), 0, nullptr, out.data());
  for (int b = 0; b < 5; ++b) {
    EXPECT_EQ(out[size_t(2 * b)], -1);
    EXPECT_EQ(out[size_t(2 * b + 1)], b * 7);
  }
}

// Dynamic shared memory: reverse `n` values through it; its size is the launch's.
__global__ void reverse_kernel(float* data, int n) {
  ST_DYNAMIC_SHARED(float, s);
  for (int i = int(threadIdx.x); i < n; i += int(blockDim.x)) s[size_t(i)] = data[i];
  __syncthreads();
  for (int i = int(threadIdx.x); i < n; i += int(blockDim.x)) data[i] = s[size_t(n - 1 - i)];
}

TEST(Emu, DynamicSharedMemory) {
  const int n = 1000;
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), 0.0f);
  launch(reverse_kernel, dim3(1), dim3(128), n * sizeof(float), nullptr, v.data(), n);
  for (int i = 0; i < n; ++i) EXPECT_EQ(v[size_t(i)], float(n - 1 - i));
  // One element short: the last index is out of bounds.
  expect_fault(
      [&] {
        launch(reverse_kernel, dim3(1), dim3(128), (n - 1) * sizeof(float), nullptr, v.data(), n);
      },
      "out of bounds");
}

// A thread that returns before a barrier the others reach: a fault, not a hang.
__global__ void early_exit_kernel(int* out) {
  if (threadIdx.x == 3) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

TEST(Emu, BarrierNotReachedByAllThreadsFaults) {
  std::vector<int> out(64);
  expect_fault([&] { launch(early_exit_kernel, dim3(1), dim3(64), 0, nullptr, out.data()); },
               "__syncthreads");
}

// ---- Warp shuffles and votes -----------------------------------------------------------------

__global__ void shuffle_kernel(int* out) {
  const int lane = int(threadIdx.x) % 32, t = int(threadIdx.x);
  const int v = 1000 * (t / 32) + lane;
  out[t * 6 + 0] = __shfl_xor_sync(0xffffffffu, v, 5);
  out[t * 6 + 1] = __shfl_down_sync(0xffffffffu, v, 3);
  out[t * 6 + 2] = __shfl_up_sync(0xffffffffu, v, 2);
  out[t * 6 + 3] = __shfl_sync(0xffffffffu, v, 7);
  out[t * 6 + 4] = __shfl_down_sync(0xffffffffu, v, 1, 8);  // segments of 8 lanes
  out[t * 6 + 5] = __shfl_sync(0xffffffffu, v, 3, 16);      // lane 3 of each half-warp
}

TEST(Emu, Shuffles) {
  const int threads = 64;
  std::vector<int> out(threads * 6);
  launch(shuffle_kernel, dim3(1), dim3(threads), 0, nullptr, out.data());
  for (int t = 0; t < threads; ++t) {
    const int lane = t % 32, base = 1000 * (t / 32);
    EXPECT_EQ(out[size_t(t * 6 + 0)], base + (lane ^ 5));
    EXPECT_EQ(out[size_t(t * 6 + 1)], base + (lane + 3 < 32 ? lane + 3 : lane));
    EXPECT_EQ(out[size_t(t * 6 + 2)], base + (lane >= 2 ? lane - 2 : lane));
    EXPECT_EQ(out[size_t(t * 6 + 3)], base + 7);
    EXPECT_EQ(out[size_t(t * 6 + 4)], base + (lane % 8 + 1 < 8 ? lane + 1 : lane));
    EXPECT_EQ(out[size_t(t * 6 + 5)], base + (lane & ~15) + 3);
  }
}

// Float payloads and the reductions built on shuffles (launch.h's warp_sum / block_reduce).
__global__ void reduce_kernel(float* out, const float* in) {
  ST_SHARED(float, scratch, 33);
  const float v = in[threadIdx.x];
  const float ws = warp_sum(v);
  const float bs = block_reduce<false>(v, scratch);
  const float bm = block_reduce<true>(v, scratch);
  if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = ws;
  if (threadIdx.x == 0) {
    out[8] = bs;
    out[9] = bm;
  }
}

TEST(Emu, WarpAndBlockReductions) {
  std::vector<float> in(256), out(10);
  for (int i = 0; i < 256; ++i) in[size_t(i)] = float(i % 17) - 3.0f;  // small integers: exact sums
  launch(reduce_kernel, dim3(1), dim3(256), 0, nullptr, out.data(), in.data());
  float total = 0, mx = -1e9f;
  for (int w = 0; w < 8; ++w) {
    float s = 0;
    for (int l = 0; l < 32; ++l) s += in[size_t(w * 32 + l)];
    EXPECT_EQ(out[size_t(w)], s);
    total += s;
  }
  for (float v : in) mx = std::max(mx, v);
  EXPECT_EQ(out[8], total);
  EXPECT_EQ(out[9], mx);
}

// Votes over the full warp and over the even lanes only (a legal partial mask).
__global__ void vote_kernel(unsigned* out) {
  const int lane = int(threadIdx.x) % 32;
  out[lane * 4 + 0] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  out[lane * 4 + 1] = unsigned(__all_sync(0xffffffffu, lane < 32));
  out[lane * 4 + 2] = unsigned(__any_sync(0xffffffffu, lane == 31));
  if (lane % 2 == 0) out[lane * 4 + 3] = __ballot_sync(0x55555555u, lane >= 16);
}

TEST(Emu, Votes) {
  std::vector<unsigned> out(32 * 4, 0);
  launch(vote_kernel, dim3(1), dim3(32), 0, nullptr, out.data());
  unsigned every_third = 0;
  for (int l = 0; l < 32; l += 3) every_third |= 1u << l;
  for (int l = 0; l < 32; ++l) {
    EXPECT_EQ(out[size_t(l * 4 + 0)], every_third);
    EXPECT_EQ(out[size_t(l * 4 + 1)], 1u);
    EXPECT_EQ(out[size_t(l * 4 + 2)], 1u);
    if (l % 2 == 0) {
      EXPECT_EQ(out[size_t(l * 4 + 3)], 0x55550000u);
    }
  }
}

// Mask errors: each variant breaks one rule.
__global__ void bad_mask_kernel(int* out, int variant) {
  const int lane = int(threadIdx.x) % 32;
  int v = lane;
  switch (variant) {
    case 0:  // the caller is not in the mask
      v = __shfl_xor_sync(0x0000ffffu, v, 1);
      break;
    case 1:  // lanes 0..15 name the full warp, but lanes 16..31 never join
      if (lane < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
      break;
    case 2:  // lanes disagree on the mask
      v = __shfl_xor_sync(lane < 16 ? 0xffffffffu : 0xffff0000u, v, 1);
      break;
    case 3:  // the source lane is outside the mask
      if (lane < 16) v = __shfl_xor_sync(0x0000ffffu, v, 16);
      break;
    case 4:  // same mask, different collectives
      v = lane < 8 ? int(__ballot_sync(0xffffffffu, 1)) : __shfl_xor_sync(0xffffffffu, v, 1);
      break;
  }
  out[threadIdx.x] = v;
}

TEST(Emu, WrongMasksFault) {
  std::vector<int> out(32);
  const char* needles[] = {"calling lane not in mask", "exited without it",
                           "overlapping masks differ", "not in the mask", "different collectives"};
  for (int variant = 0; variant < 5; ++variant) {
    SCOPED_TRACE(variant);
    expect_fault(
        [&] { launch(bad_mask_kernel, dim3(1), dim3(32), 0, nullptr, out.data(), variant); },
        needles[variant]);
  }
}

// A full mask in a block whose last warp has only 16 lanes names lanes that do not exist.
TEST(Emu, FullMaskInPartialWarpFaults) {
  std::vector<int> out(48 * 6);  // shuffle_kernel writes 6 values per thread
  expect_fault([&] { launch(shuffle_kernel, dim3(1), dim3(48), 0, nullptr, out.data()); },
               "do not exist");
}

// ---- Atomics ---------------------------------------------------------------------------------

__global__ void atomic_kernel(int* counter, float* fsum, int* shared_total) {
  ST_SHARED(int, s, 1);
  if (threadIdx.x == 0) s[0] = 0;
  __syncthreads();
  atomicAdd(counter, 1);
  atomicAdd(fsum, 0.5f);
  atomicAdd(&s[0], int(threadIdx.x));  // shared atomics from every thread: no race
  __syncthreads();
  if (threadIdx.x == 0) shared_total[blockIdx.x] = s[0];
}

TEST(Emu, Atomics) {
  int counter = 0;
  float fsum = 0;
  std::vector<int> totals(4);
  launch(atomic_kernel, dim3(4), dim3(128), 0, nullptr, &counter, &fsum, totals.data());
  EXPECT_EQ(counter, 4 * 128);
  EXPECT_EQ(fsum, 4 * 128 * 0.5f);  // exact: multiples of 0.5 below 2^23
  for (int t : totals) EXPECT_EQ(t, 127 * 128 / 2);
}

// ---- Vector access ---------------------------------------------------------------------------

__global__ void pack_kernel(float* out, const float* in) {
  store_pack(out + 4 * threadIdx.x, load_pack(in + 4 * threadIdx.x));
}

TEST(Emu, VectorAccessNeedsAlignment) {
  alignas(16) float in[36], out[36];
  for (int i = 0; i < 36; ++i) in[i] = float(i);
  launch(pack_kernel, dim3(1), dim3(8), 0, nullptr, out, static_cast<const float*>(in));
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], float(i));
  expect_fault([&] { launch(pack_kernel, dim3(1), dim3(8), 0, nullptr, out, in + 1); },
               "misaligned");
}

// ---- cp.async and ordering between blocks ---------------------------------------------------

// Each thread copies 16 bytes (4 ints) of `in` into shared memory with cp.async; `mode` 0
// waits and syncs before the neighbour reads them, 1 reads without waiting, 2 waits but
// skips the barrier. Out-of-range rows (`valid` false) are zero-filled.
__global__ void async_copy_kernel(int* out, const int* in, int mode) {
  ST_SHARED(int, s, 4 * 64);
  const int t = int(threadIdx.x), n = int(blockDim.x);
  const bool valid = t < n - 1;  // the last thread's pack is zero-filled
  cp_async_16(s, size_t(4 * t), valid ? in + 4 * t : in, valid);
  cp_async_commit();
  if (mode != 1) cp_async_wait<0>();
  if (mode != 2) __syncthreads();
  const int src = (t + 1) % n;
  for (int e = 0; e < 4; ++e) out[4 * t + e] = s[size_t(4 * src + e)];
}

TEST(Emu, AsyncCopyLandsAtTheWait) {
  const int n = 64;
  std::vector<int> in(4 * n), out(4 * n, -7);
  std::iota(in.begin(), in.end(), 100);
  launch(async_copy_kernel, dim3(1), dim3(n), 0, nullptr, out.data(),
         static_cast<const int*>(in.data()), 0);
  for (int t = 0; t < n; ++t) {
    const int src = (t + 1) % n;
    for (int e = 0; e < 4; ++e) {
      EXPECT_EQ(out[size_t(4 * t + e)], src == n - 1 ? 0 : in[size_t(4 * src + e)]);
    }
  }
  // No wait: the bytes have not landed, the reader sees the poison (0xff bytes = -1).
  launch(async_copy_kernel, dim3(1), dim3(n), 0, nullptr, out.data(),
         static_cast<const int*>(in.data()), 1);
  EXPECT_EQ(out[0], -1);
  // The wait but no barrier: another thread's copy is a race.
  expect_fault(
      [&] {
        launch(async_copy_kernel, dim3(1), dim3(n), 0, nullptr, out.data(),
               static_cast<const int*>(in.data()), 2);
      },
      "shared-memory race");
}

// Block b adds its index into a running value after block b - 1 (b - 1 published), in ticket
// order; `wrong_order` maps the tickets backwards, so the first block waits on one not yet run.
__global__ void ordered_kernel(int* flag, int* ticket, long long* value, bool wrong_order) {
  ST_SHARED(int, s_ticket, 1);
  if (threadIdx.x == 0) s_ticket[0] = atomicAdd(ticket, 1);
  __syncthreads();
  const int me = wrong_order ? int(gridDim.x) - 1 - s_ticket[0] : s_ticket[0];
  if (me > 0) block_wait(flag, me);
  if (threadIdx.x == 0) *value = *value * 10 + me;
  block_publish(flag, me + 1);
}

TEST(Emu, BlockOrderingFollowsTickets) {
  int flag = 0, ticket = 0;
  long long value = 0;
  launch(ordered_kernel, dim3(5), dim3(64), 0, nullptr, &flag, &ticket, &value, false);
  EXPECT_EQ(value, 1234);  // 0, 1, 2, 3, 4 in order
  EXPECT_EQ(flag, 5);
  flag = ticket = 0;
  expect_fault(
      [&] { launch(ordered_kernel, dim3(5), dim3(64), 0, nullptr, &flag, &ticket, &value, true); },
      "block_wait");
}

TEST(Emu, MultiDimensionalIndices) {
  // threadIdx/blockIdx in 3-D: every (block, thread) writes its own linear slot once.
  struct K {
    static __global__ void kernel(int* out) {
      const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
      const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
      out[b * blockDim.x * blockDim.y * blockDim.z + t] += 1;
    }
  };
  std::vector<int> out(2 * 3 * 2 * 4 * 2 * 2, 0);
  launch(K::kernel, dim3(2, 3, 2), dim3(4, 2, 2), 0, nullptr, out.data());
  for (int v : out) EXPECT_EQ(v, 1);
}

}  // namespace
}  // namespace shardtrain::kernels::cuda_emu
