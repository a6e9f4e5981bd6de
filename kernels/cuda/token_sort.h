// token_sort.h — a step's positions grouped by token, for the wte gradient: device code and its
// launcher, included by embedding.cu and tensor_parallel.cu.
//
// Why: dwte[token] += dout[position] must add each row's positions in ascending order to be
// deterministic (and the CPU's bits). One thread per channel walking every position does that
// with only C threads (3 blocks at C = 768, B*T serial steps each). Sorting the positions by
// token once, stably, turns it into independent segments: one thread per (segment, channel)
// adds its segment's positions in order, which are ascending because the sort is stable — the
// same additions in the same order as the CPU, with B*T/segment-length times the parallelism.
//
// The sort: LSD radix on 4-bit digits, stable by construction and without atomics or warp
// intrinsics (so the emulator runs it as it is): each thread owns a run of kSortRun
// consecutive elements and counts its digits (count kernel), one block scans the counts in
// (digit, run) order (scan kernel), and each thread places its run's elements in order at its
// offsets (scatter kernel). Keys are the token's row in the slice, or `rows` (sorted last,
// skipped) for a token outside it; ceil(bits(rows) / 4) passes, three launches each.
#pragma once

#include <cstdint>

#include "kernels/cuda/launch.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

constexpr long long kSortRun = 16;
constexpr int kSortDigits = 16, kSortDigitBits = 4;
constexpr int kSortThreads = 256, kSortScanThreads = 1024;

inline long long sort_runs(long long n) { return (n + kSortRun - 1) / kSortRun; }
// int32 elements: keys and positions, double-buffered, then the (digit, run) counts.
inline long long token_sort_workspace_numel(long long n) {
  return 4 * n + kSortDigits * sort_runs(n);
}

__global__ void __launch_bounds__(kSortThreads)
    sort_init_kernel(int32_t* __restrict__ keys, int32_t* __restrict__ pos,
                     const int32_t* __restrict__ tokens, long long n, long long begin,
                     long long rows) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
    const long long v = (long long)tokens[i] - begin;
    keys[i] = int32_t(v >= 0 && v < rows ? v : rows);
    pos[i] = int32_t(i);
  }
}

// counts[d * runs + r] = how many elements of run r have digit d.
__global__ void __launch_bounds__(kSortThreads)
    sort_count_kernel(int32_t* __restrict__ counts, const int32_t* __restrict__ keys, long long n,
                      long long runs, int shift) {
  const long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (r >= runs) return;
  for (int d = 0; d < kSortDigits; ++d) counts[d * runs + r] = 0;
  const long long end = (r + 1) * kSortRun < n ? (r + 1) * kSortRun : n;
  for (long long i = r * kSortRun; i < end; ++i) {
    counts[((keys[i] >> shift) & (kSortDigits - 1)) * runs + r] += 1;
  }
}

// Exclusive prefix sum of counts[0..m) in place, by one block: each thread sums its chunk,
// thread 0 scans the chunk sums, each thread rewrites its chunk.
__global__ void __launch_bounds__(kSortScanThreads)
    sort_scan_kernel(int32_t* __restrict__ counts, long long m) {
  ST_SHARED(int32_t, part, kSortScanThreads);
  const long long chunk = (m + kSortScanThreads - 1) / kSortScanThreads;
  const long long lo = (long long)threadIdx.x * chunk;
  const long long hi = lo + chunk < m ? lo + chunk : m;
  int32_t s = 0;
  for (long long k = lo; k < hi; ++k) s += counts[k];
  part[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t run = 0;
    for (int t = 0; t < kSortScanThreads; ++t) {
      const int32_t v = part[size_t(t)];
      part[size_t(t)] = run;
      run += v;
    }
  }
  __syncthreads();
  int32_t run = part[threadIdx.x];
  for (long long k = lo; k < hi; ++k) {
    const int32_t v = counts[k];
    counts[k] = run;
    run += v;
  }
}

// Run r's elements, in order, to their places: stable.
__global__ void __launch_bounds__(kSortThreads)
    sort_scatter_kernel(int32_t* __restrict__ keys_out, int32_t* __restrict__ pos_out,
                        const int32_t* __restrict__ keys, const int32_t* __restrict__ pos,
                        int32_t* __restrict__ offsets, long long n, long long runs, int shift) {
  const long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (r >= runs) return;
  const long long end = (r + 1) * kSortRun < n ? (r + 1) * kSortRun : n;
  for (long long i = r * kSortRun; i < end; ++i) {
    int32_t& o = offsets[((keys[i] >> shift) & (kSortDigits - 1)) * runs + r];
    keys_out[o] = keys[i];
    pos_out[o] = pos[i];
    ++o;
  }
}

// dwte[key][c] += dout[pos][c] over each segment of equal keys (key < rows), in sorted order:
// thread (c, k) works only when k starts a segment. grid.y strides over k.
template <class T>
__global__ void __launch_bounds__(kSortThreads)
    sorted_rows_backward_kernel(float* __restrict__ dwte, const T* __restrict__ dout,
                                const int32_t* __restrict__ keys, const int32_t* __restrict__ pos,
                                long long n, long long rows, long long C) {
  const long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (long long k = blockIdx.y; k < n; k += gridDim.y) {
    const int32_t key = keys[k];
    if (key >= rows || (k > 0 && keys[k - 1] == key)) continue;
    float* g = dwte + (long long)key * C + c;
    float acc = *g;
    for (long long j = k; j < n && keys[j] == key; ++j) acc += to_float(dout[pos[j] * C + c]);
    *g = acc;
  }
}

// dwte (rows, C) += dout row i for every i < n whose token - begin is in [0, rows), positions
// of a row in ascending order. `workspace`: token_sort_workspace_numel(n) int32.
template <class T>
Status sorted_rows_backward(float* dwte, const T* dout, const int32_t* tokens, long long begin,
                            long long rows, long long n, long long C, int32_t* workspace,
                            Stream stream) {
  if (n == 0 || C == 0 || rows <= 0) return kOk;
  const long long runs = sort_runs(n);
  int32_t* keys[2] = {workspace, workspace + n};
  int32_t* pos[2] = {workspace + 2 * n, workspace + 3 * n};
  int32_t* counts = workspace + 4 * n;
  auto blocks = [](long long work) {
    const long long b = (work + kSortThreads - 1) / kSortThreads;
    return unsigned(b < 1 ? 1 : (b > 65535 ? 65535 : b));
  };
  Status e = launch(sort_init_kernel, dim3(blocks(n)), dim3(kSortThreads), 0, stream, keys[0],
                    pos[0], tokens, n, begin, rows);
  if (e != kOk) return e;
  int bits = 1;  // keys are in [0, rows]
  while (bits < 31 && (1ll << bits) <= rows) ++bits;
  int cur = 0;
  for (int shift = 0; shift < bits; shift += kSortDigitBits, cur ^= 1) {
    e = launch(sort_count_kernel, dim3(blocks(runs)), dim3(kSortThreads), 0, stream, counts,
               keys[cur], n, runs, shift);
    if (e != kOk) return e;
    e = launch(sort_scan_kernel, dim3(1), dim3(kSortScanThreads), 0, stream, counts,
               kSortDigits * runs);
    if (e != kOk) return e;
    e = launch(sort_scatter_kernel, dim3(blocks(runs)), dim3(kSortThreads), 0, stream,
               keys[cur ^ 1], pos[cur ^ 1], keys[cur], pos[cur], counts, n, runs, shift);
    if (e != kOk) return e;
  }
  // Channels across a block (a warp multiple, at most kSortThreads), sorted positions across
  // grid.y.
  const long long threads = C < kSortThreads ? (C + 31) / 32 * 32 : kSortThreads;
  const unsigned ny = unsigned(n < 65535 ? n : 65535);
  return launch(sorted_rows_backward_kernel<T>, dim3(unsigned((C + threads - 1) / threads), ny),
                dim3(unsigned(threads)), 0, stream, dwte, dout, keys[cur], pos[cur], n, rows, C);
}

}  // namespace
}  // namespace shardtrain::kernels::ST_GPU_NS
