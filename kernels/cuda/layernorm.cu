// layernorm.cu — LayerNorm and RMSNorm forward/backward on the GPU; one source for nvcc and
// kernels/emu. RMSNorm is the same kernels with the mean taken as 0 and no bias (kRms).
//
// A direct port of kernels/cpu/layernorm.cpp (STYLE practice 9), so the statistics are the
// same two-pass mean / biased variance in fp32 and only the summation order differs:
//  - forward: one warp per row (8 rows per 256-thread block); lanes stride the channels, so
//    each load instruction of the warp is one coalesced 128-byte (fp32) access; the sums are
//    warp butterflies, no shared memory and no __syncthreads.
//  - fused residual add + forward: the same shape; writes res = a + b and normalises the
//    rounded res, most of it kept in registers (bitwise the forward kernel applied to res).
//  - backward, input gradient: the same warp-per-row shape.
//  - backward, parameter gradients: deterministic, like the CPU backend's fixed row partition
//    — a (groups x column-tiles) grid where each thread sums its column over its row group in
//    row order into a (groups, 2, C) workspace, then column_sum.h adds the group partials in a
//    fixed order (8 lanes per column) into dweight/dbias. No float atomics, so the bits are the
//    same run to run and GPU to GPU. This reads dout and x a second time (the CPU version reads
//    them once); the fused version keeps per-warp partials in shared memory (README).
#include "kernels/cuda/column_sum.h"
#include "kernels/cuda/launch.h"
#include "kernels/layernorm.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;  // one warp per row

// d rstd w + b for LayerNorm (d = x - mean); d rstd w for RMSNorm (d = x; no bias).
template <bool kRms, class T>
ST_DEVICE float normalised(float d, float rs, T w, const T* bias, int c) {
  if constexpr (kRms) {
    return d * rs * to_float(w);
  } else {
    return d * rs * to_float(w) + to_float(bias[c]);
  }
}

// kRms: RMSNorm (no mean, no bias: mean and bias are unused) — the same kernel with the mean
// taken as 0, so (x - m) is x exactly.
template <class T, bool kRms>
__global__ void __launch_bounds__(kThreads)
    layernorm_forward_kernel(T* __restrict__ out, float* __restrict__ mean,
                             float* __restrict__ rstd, const T* __restrict__ x,
                             const T* __restrict__ weight, const T* __restrict__ bias,
                             long long rows, int C, float eps) {
  const int lane = int(threadIdx.x) % 32;
  const long long r = (long long)blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;    // whole warps leave together; no block barrier follows
  const T* xr = x + r * C;  // (C)
  // 1. Mean, then biased variance about it (two passes, as the CPU reference); RMSNorm: the
  //    mean of squares.
  float m = 0.0f;
  if constexpr (!kRms) {
    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) sum += to_float(xr[c]);
    m = warp_sum(sum) / float(C);
  }
  float sq = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float d = to_float(xr[c]) - m;
    sq += d * d;
  }
  const float rs = 1.0f / sqrtf(warp_sum(sq) / float(C) + eps);
  // 2. Normalise, scale and shift; one rounding into T.
  T* o = out + r * C;  // (C)
  for (int c = lane; c < C; c += 32) {
    o[c] = from_float<T>(normalised<kRms>(to_float(xr[c]) - m, rs, weight[c], bias, c));
  }
  if (lane == 0) {
    if constexpr (!kRms) mean[r] = m;
    rstd[r] = rs;
  }
}

// Channels per lane whose res value stays in a register between the three passes of the fused
// kernel: C <= 32 x kResCache (768, GPT-2 small) never re-reads res; wider rows re-read the
// rest from res (this thread's own stores: L1/L2 hits), as layernorm_forward_kernel does x.
constexpr int kResCache = 24;
// The cache and the 2 x kResCache loads issued together take ~80 registers unbounded; asking for
// 3 blocks (768 threads) per SM caps them at 80 without spills (README register table; at 4
// blocks, 64 registers, the bf16 copy spills since the device code converts with the hardware
// cvt). 24 warps per SM with 48 loads in flight each are more bytes in flight than HBM needs.
constexpr int kResBlocksPerSm = 3;

// res = a + b (rounded once to T), then LayerNorm of the rounded res, one warp per row. The
// statistics are summed from the rounded values in layernorm_forward_kernel's order (lane
// strides of 32, then the butterfly) with its expressions, so out/mean/rstd are bitwise that
// kernel applied to res. res may alias a or b (no __restrict__ on those three): every element
// is read and written by the same lane, and the loads of a row's a and b are all issued before
// its first store so they are not serialised behind possibly-aliasing stores.
template <class T, bool kRms>
__global__ void __launch_bounds__(kThreads, kResBlocksPerSm)
    residual_layernorm_forward_kernel(T* res, T* __restrict__ out, float* __restrict__ mean,
                                      float* __restrict__ rstd, const T* a, const T* b,
                                      const T* __restrict__ weight, const T* __restrict__ bias,
                                      long long rows, int C, float eps) {
  // RMSNorm keeps no channels in registers (with the cache, ptxas spills it at any register
  // bound tried, 64 to 128): it re-reads res, its own stores, in the normalising pass.
  constexpr int kCache = kRms ? 0 : kResCache;
  const int lane = int(threadIdx.x) % 32;
  const long long r = (long long)blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;    // whole warps leave together; no block barrier follows
  const T* ar = a + r * C;  // (C)
  const T* br = b + r * C;  // (C)
  T* xr = res + r * C;      // (C)
  // 1. res = a + b: first the fp32 sums of the cached channels (loads only), then each rounded
  //    once to T, stored, and kept (as fp32) for the statistics; the mean in the LN order.
  float x[kCache > 0 ? kCache : 1];  // (kCache 0: unused)
  ST_UNROLL
  for (int k = 0; k < kCache; ++k) {
    const int c = lane + 32 * k;
    x[k] = c < C ? to_float(ar[c]) + to_float(br[c]) : 0.0f;
  }
  // RMSNorm sums the squares in this pass already, in the order pass 2 would (the cached
  // channels, then the rest): the same bits, without keeping the loads live across a pass.
  float sum = 0.0f, sq = 0.0f;
  ST_UNROLL
  for (int k = 0; k < kCache; ++k) {
    const int c = lane + 32 * k;
    if (c < C) {
      const T rounded = from_float<T>(x[k]);
      xr[c] = rounded;
      x[k] = to_float(rounded);
      sum += x[k];
      if constexpr (kRms) sq += x[k] * x[k];
    }
  }
  for (int c = lane + 32 * kCache; c < C; c += 32) {
    const T rounded = from_float<T>(to_float(ar[c]) + to_float(br[c]));
    xr[c] = rounded;
    const float v = to_float(rounded);
    sum += v;
    if constexpr (kRms) sq += v * v;
  }
  const float m = kRms ? 0.0f : warp_sum(sum) / float(C);
  // 2. Biased variance about the mean (layernorm_forward_kernel's second pass).
  if constexpr (!kRms) {
    ST_UNROLL
    for (int k = 0; k < kCache; ++k) {
      if (lane + 32 * k < C) {
        const float d = x[k] - m;
        sq += d * d;
      }
    }
    for (int c = lane + 32 * kCache; c < C; c += 32) {
      const float d = to_float(xr[c]) - m;
      sq += d * d;
    }
  }
  const float rs = 1.0f / sqrtf(warp_sum(sq) / float(C) + eps);
  // 3. Normalise, scale and shift; one rounding into T.
  T* o = out + r * C;  // (C)
  ST_UNROLL
  for (int k = 0; k < kCache; ++k) {
    const int c = lane + 32 * k;
    if (c < C) o[c] = from_float<T>(normalised<kRms>(x[k] - m, rs, weight[c], bias, c));
  }
  for (int c = lane + 32 * kCache; c < C; c += 32) {
    o[c] = from_float<T>(normalised<kRms>(to_float(xr[c]) - m, rs, weight[c], bias, c));
  }
  if (lane == 0) {
    if constexpr (!kRms) mean[r] = m;
    rstd[r] = rs;
  }
}

// dx += rstd (g w - mean(g w) - xhat mean(g w xhat)), one warp per row (RMSNorm: mean 0 and
// no mean(g w) term).
template <class T, bool kRms>
__global__ void __launch_bounds__(kThreads)
    layernorm_backward_dx_kernel(T* __restrict__ dx, const T* __restrict__ dout,
                                 const T* __restrict__ x, const T* __restrict__ weight,
                                 const float* __restrict__ mean, const float* __restrict__ rstd,
                                 long long rows, int C) {
  const int lane = int(threadIdx.x) % 32;
  const long long r = (long long)blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;
  const T* xr = x + r * C;     // (C)
  const T* gr = dout + r * C;  // (C)
  const float m = kRms ? 0.0f : mean[r], rs = rstd[r];
  // 1. The two row means the input gradient needs: mean(g w) and mean(g w xhat).
  float gw_sum = 0.0f, gwx_sum = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float xhat = (to_float(xr[c]) - m) * rs;
    const float gw = to_float(gr[c]) * to_float(weight[c]);
    gw_sum += gw;
    gwx_sum += gw * xhat;
  }
  const float gw_mean = kRms ? 0.0f : warp_sum(gw_sum) / float(C);
  const float gwx_mean = warp_sum(gwx_sum) / float(C);
  // 2. Accumulate into dx (it already holds the residual gradient), one rounding into T.
  T* d = dx + r * C;  // (C)
  for (int c = lane; c < C; c += 32) {
    const float xhat = (to_float(xr[c]) - m) * rs;
    const float gw = to_float(gr[c]) * to_float(weight[c]);
    const float g = kRms ? (gw - xhat * gwx_mean) * rs : (gw - gw_mean - xhat * gwx_mean) * rs;
    d[c] = from_float<T>(to_float(d[c]) + g);
  }
}

// Row partition of the parameter-gradient reduction (same formula as cpu::part_begin).
ST_DEVICE long long group_begin(long long g, long long groups, long long rows) {
  return rows * g / groups;
}

// partial[g][0][c] = sum over rows of group g of dout * xhat; partial[g][1][c] = of dout
// (RMSNorm: only the first, partial (groups, 1, C)).
template <class T, bool kRms>
__global__ void __launch_bounds__(kThreads)
    layernorm_backward_partial_kernel(float* __restrict__ partial, const T* __restrict__ dout,
                                      const T* __restrict__ x, const float* __restrict__ mean,
                                      const float* __restrict__ rstd, long long rows, int C,
                                      long long groups) {
  const long long g = blockIdx.y;
  const int c = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (c >= C) return;
  float dw = 0.0f, db = 0.0f;
  const long long r1 = group_begin(g + 1, groups, rows);
  for (long long r = group_begin(g, groups, rows); r < r1; ++r) {
    const float gv = to_float(dout[r * C + c]);
    dw += gv * ((to_float(x[r * C + c]) - (kRms ? 0.0f : mean[r])) * rstd[r]);
    db += gv;
  }
  if constexpr (kRms) {
    partial[g * C + c] = dw;
  } else {
    partial[(g * 2 + 0) * C + c] = dw;
    partial[(g * 2 + 1) * C + c] = db;
  }
}

// dweight[c] += sum over g of partial[g][0][c]; dbias likewise from partial[g][1][c]:
// column_sum_kernel (column_sum.h), blockIdx.y choosing the output.

unsigned ceil_div(long long a, long long b) { return unsigned((a + b - 1) / b); }

// The backward of both norms, three launches: dx per row, per-column partial sums of the
// weight (and, LayerNorm only, bias) gradients over row groups, then the fixed-order column sums.
template <bool kRms, class T>
Status norm_backward(T* dx, float* dweight, float* dbias, const T* dout, const T* x,
                     const T* weight, const float* mean, const float* rstd, float* workspace,
                     RowsShape s, Stream stream) {
  if (s.rows == 0) return kOk;
  const int C = int(s.channels);
  const long long groups = layernorm_backward_groups(s);
  const int sums = kRms ? 1 : 2;  // rows of partial sums per group: dweight (and dbias)
  Status e =
      launch(layernorm_backward_dx_kernel<T, kRms>, dim3(ceil_div(s.rows, kRowsPerBlock)),
             dim3(kThreads), 0, stream, dx, dout, x, weight, mean, rstd, (long long)s.rows, C);
  if (e != kOk) return e;
  e = launch(layernorm_backward_partial_kernel<T, kRms>,
             dim3(ceil_div(C, kThreads), unsigned(groups)), dim3(kThreads), 0, stream, workspace,
             dout, x, mean, rstd, (long long)s.rows, C, groups);
  if (e != kOk) return e;
  return launch(column_sum_kernel, dim3(ceil_div(C, kColumnSumCols), unsigned(sums)),
                dim3(kColumnSumCols, kColumnSumLanes), 0, stream, dweight, dbias,
                static_cast<const float*>(workspace), (long long)C, groups, sums * (long long)C);
}

}  // namespace

template <class T>
Status layernorm_forward(T* out, float* mean, float* rstd, const T* x, const T* weight,
                         const T* bias, RowsShape s, float eps, Stream stream) {
  if (s.rows == 0) return kOk;
  return launch(layernorm_forward_kernel<T, false>, dim3(ceil_div(s.rows, kRowsPerBlock)),
                dim3(kThreads), 0, stream, out, mean, rstd, x, weight, bias, (long long)s.rows,
                int(s.channels), eps);
}

template <class T>
Status residual_layernorm_forward(T* res, T* out, float* mean, float* rstd, const T* a, const T* b,
                                  const T* weight, const T* bias, RowsShape s, float eps,
                                  Stream stream) {
  if (s.rows == 0) return kOk;
  return launch(residual_layernorm_forward_kernel<T, false>, dim3(ceil_div(s.rows, kRowsPerBlock)),
                dim3(kThreads), 0, stream, res, out, mean, rstd, a, b, weight, bias,
                (long long)s.rows, int(s.channels), eps);
}

template <class T>
Status layernorm_backward(T* dx, float* dweight, float* dbias, const T* dout, const T* x,
                          const T* weight, const float* mean, const float* rstd, float* workspace,
                          RowsShape s, Stream stream) {
  return norm_backward<false>(dx, dweight, dbias, dout, x, weight, mean, rstd, workspace, s,
                              stream);
}

template <class T>
Status rmsnorm_forward(T* out, float* rstd, const T* x, const T* weight, RowsShape s, float eps,
                       Stream stream) {
  if (s.rows == 0) return kOk;
  return launch(layernorm_forward_kernel<T, true>, dim3(ceil_div(s.rows, kRowsPerBlock)),
                dim3(kThreads), 0, stream, out, static_cast<float*>(nullptr), rstd, x, weight,
                static_cast<const T*>(nullptr), (long long)s.rows, int(s.channels), eps);
}

template <class T>
Status residual_rmsnorm_forward(T* res, T* out, float* rstd, const T* a, const T* b,
                                const T* weight, RowsShape s, float eps, Stream stream) {
  if (s.rows == 0) return kOk;
  return launch(residual_layernorm_forward_kernel<T, true>, dim3(ceil_div(s.rows, kRowsPerBlock)),
                dim3(kThreads), 0, stream, res, out, static_cast<float*>(nullptr), rstd, a, b,
                weight, static_cast<const T*>(nullptr), (long long)s.rows, int(s.channels), eps);
}

template <class T>
Status rmsnorm_backward(T* dx, float* dweight, const T* dout, const T* x, const T* weight,
                        const float* rstd, float* workspace, RowsShape s, Stream stream) {
  return norm_backward<true>(dx, dweight, static_cast<float*>(nullptr), dout, x, weight,
                             static_cast<const float*>(nullptr), rstd, workspace, s, stream);
}

#define ST_INSTANTIATE(T)                                                                       \
  template Status rmsnorm_forward<T>(T*, float*, const T*, const T*, RowsShape, float, Stream); \
  template Status residual_rmsnorm_forward<T>(T*, T*, float*, const T*, const T*, const T*,     \
                                              RowsShape, float, Stream);                        \
  template Status rmsnorm_backward<T>(T*, float*, const T*, const T*, const T*, const float*,   \
                                      float*, RowsShape, Stream);                               \
  template Status layernorm_forward<T>(T*, float*, float*, const T*, const T*, const T*,        \
                                       RowsShape, float, Stream);                               \
  template Status layernorm_backward<T>(T*, float*, float*, const T*, const T*, const T*,       \
                                        const float*, const float*, float*, RowsShape, Stream); \
  template Status residual_layernorm_forward<T>(T*, T*, float*, float*, const T*, const T*,     \
                                                const T*, const T*, RowsShape, float, Stream);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

}  // namespace shardtrain::kernels::ST_GPU_NS
