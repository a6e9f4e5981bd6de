// column_sum.h — the second pass of the GPU's deterministic column reductions (bias and
// LayerNorm parameter gradients): out[c] += sum over g < groups of partial[g * stride + c].
// Device code, included by kernel sources.
//
// Why this shape: the first pass leaves one partial sum per (row group, column) (up to 256
// groups); one thread per column walking the groups serially gives C threads (3 blocks at
// C = 768) each waiting on a chain of 256 dependent loads. Here a block is kColumnSumCols
// columns x kColumnSumLanes lanes: lane l adds groups l, l + 8, l + 16, ... in order, then lane
// 0 adds the 8 lane sums in lane order. The order is a function of the group count alone (not
// of the device or the grid), so the result is bitwise reproducible; warps read 32 adjacent
// columns (128-byte transactions); each thread's chain is groups / 8 loads long.
// blockIdx.y = 1 selects a second output whose partials start `cols` floats after the first's
// (LayerNorm's (groups, 2, C) layout: dweight, dbias).
#pragma once

#include "kernels/cuda/launch.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

constexpr int kColumnSumCols = 32, kColumnSumLanes = 8;

__global__ void __launch_bounds__(kColumnSumCols* kColumnSumLanes)
    column_sum_kernel(float* __restrict__ out0, float* __restrict__ out1,
                      const float* __restrict__ partial, long long cols, long long groups,
                      long long stride) {
  ST_SHARED(float, sums, kColumnSumCols* kColumnSumLanes);
  const int x = int(threadIdx.x), lane = int(threadIdx.y);
  const long long c = (long long)blockIdx.x * kColumnSumCols + x;
  const float* p = partial + (long long)blockIdx.y * cols;
  float acc = 0.0f;
  if (c < cols) {
    for (long long g = lane; g < groups; g += kColumnSumLanes) acc += p[g * stride + c];
  }
  sums[size_t(lane * kColumnSumCols + x)] = acc;
  __syncthreads();
  if (lane != 0 || c >= cols) return;
  float total = sums[size_t(x)];
  for (int l = 1; l < kColumnSumLanes; ++l) total += sums[size_t(l * kColumnSumCols + x)];
  float* out = blockIdx.y == 0 ? out0 : out1;
  out[c] += total;
}

}  // namespace
}  // namespace shardtrain::kernels::ST_GPU_NS
