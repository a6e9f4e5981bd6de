// adamw.cu — AdamW on fp32 master weights (+ cast to the compute dtype) on the GPU; one
// source for nvcc and emu.
//
// A direct port of kernels/cpu/adamw.cpp, written op for op with the IEEE-rounded intrinsics
// (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn, __fmaf_rn) so nvcc cannot contract a*b+c into
// an fma the CPU does not do (nvcc contracts by default): the update is then bit-identical to
// the CPU backend's, which follows torch 1.13's operation order. The step scalars (bias
// corrections etc.) are computed on the host in double exactly as the CPU backend does.
// Elementwise: each thread takes 4 consecutive elements through 16-byte packs when every
// pointer is 16-byte aligned, else one; grid-stride over n. adamw_update_segments does the same
// over the segments of one flat buffer in one launch, each with its own weight decay.
#include <cmath>

#include "kernels/adamw.h"
#include "kernels/cuda/launch.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

constexpr int kThreads = 256;
constexpr long long kMaxBlocks = 65535;

// The scalars of one step, as torch computes them (kernels/cpu/adamw.cpp, step_scalars).
struct StepScalars {
  float decay, b1, b2, one_minus_b1, one_minus_b2, bc2_sqrt, neg_step_size, eps, grad_scale;
};

StepScalars step_scalars(const AdamWParams& p, float grad_scale) {
  const double step = double(p.step);
  const double bias_correction1 = 1.0 - std::pow(double(p.beta1), step);
  const double bias_correction2 = 1.0 - std::pow(double(p.beta2), step);
  StepScalars k;
  k.decay = float(1.0 - double(p.lr) * double(p.weight_decay));
  k.b1 = p.beta1;
  k.b2 = p.beta2;
  k.one_minus_b1 = float(1.0 - double(p.beta1));
  k.one_minus_b2 = float(1.0 - double(p.beta2));
  k.bc2_sqrt = float(std::sqrt(bias_correction2));
  k.neg_step_size = float(-(double(p.lr) / bias_correction1));
  k.eps = p.eps;
  k.grad_scale = grad_scale;
  return k;
}

// One element, torch's order: decay; moments; denom = sqrt(v)/sqrt(bc2) + eps;
// p += (-lr/bc1 * m) / denom. `decay` = 1 - lr * weight_decay (k.decay, or a segment's).
ST_DEVICE void update(float& p, float g_raw, float& m, float& v, const StepScalars& k,
                      float decay) {
  const float g = __fmul_rn(g_raw, k.grad_scale);
  p = __fmul_rn(p, decay);
  m = __fmaf_rn(g, k.one_minus_b1, __fmul_rn(m, k.b1));
  v = __fadd_rn(__fmul_rn(v, k.b2), __fmul_rn(__fmul_rn(k.one_minus_b2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), k.bc2_sqrt), k.eps);
  p = __fadd_rn(p, __fdiv_rn(__fmul_rn(k.neg_step_size, m), denom));
}
ST_DEVICE void update(float& p, float g_raw, float& m, float& v, const StepScalars& k) {
  update(p, g_raw, m, v, k, k.decay);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                 float* __restrict__ v, T* __restrict__ compute_param, long long n, bool vec,
                 StepScalars k) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long i0 = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  long long scalar_from = 0;
  if (vec) {
    // 1. Groups of 4 through 16-byte packs.
    const long long groups = n / 4;
    for (long long gi = i0; gi < groups; gi += stride) {
      const long long i = gi * 4;
      Pack<float> p = load_pack(param + i), m4 = load_pack(m + i), v4 = load_pack(v + i);
      const Pack<float> g = load_pack(grad + i);
      for (int e = 0; e < 4; ++e) update(p.v[e], g.v[e], m4.v[e], v4.v[e], k);
      store_pack(param + i, p);
      store_pack(m + i, m4);
      store_pack(v + i, v4);
      if (compute_param != nullptr) {
        for (int e = 0; e < 4; ++e) compute_param[i + e] = from_float<T>(p.v[e]);
      }
    }
    scalar_from = groups * 4;
  }
  // 2. The tail (or everything, unaligned).
  for (long long i = scalar_from + i0; i < n; i += stride) {
    float p = param[i], mi = m[i], vi = v[i];
    update(p, grad[i], mi, vi, k);
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
    if (compute_param != nullptr) compute_param[i] = from_float<T>(p);
  }
}

// step_scalars' decay for one segment's weight decay, on the device: float(1 - lr * wd) in
// double. lr * wd of two floats is exact in double (24 + 24 significant bits < 53), so
// 1 - lr * wd rounds once whether or not the compiler contracts it into an fma, and the double
// -> float conversion rounds to nearest: the host's value, bit for bit.
ST_DEVICE float segment_decay(float lr, float weight_decay) {
  return float(1.0 - double(lr) * double(weight_decay));
}

// AdamW over the segments of one flat buffer. Each block stages the segments in shared memory
// (begin, end, decay), then the grid strides over [segments[0].begin, segments[last].end) in
// chunks of w elements (w = 4, one 16-byte pack, when every fp32 pointer is 16-byte aligned;
// else 1). A thread's chunks only move forward, so it finds a chunk's segment by advancing its
// current one (a linear search spread over the loop, <= num_segments steps per thread in all);
// chunks wholly before the current segment (a gap) are skipped in one jump. A chunk inside one
// segment is one pack; a chunk straddling a segment edge or a gap goes element by element.
template <class T>
__global__ void __launch_bounds__(kThreads)
    adamw_segments_kernel(float* __restrict__ param, const float* __restrict__ grad,
                          float* __restrict__ m, float* __restrict__ v, T* compute_param,
                          const AdamWSegment* __restrict__ segments, int num_segments, bool vec,
                          StepScalars k, float lr) {
  ST_SHARED(long long, seg_begin, kAdamWMaxSegments);
  ST_SHARED(long long, seg_end, kAdamWMaxSegments);
  ST_SHARED(float, seg_decay, kAdamWMaxSegments);
  for (int s = int(threadIdx.x); s < num_segments; s += int(blockDim.x)) {
    const AdamWSegment g = segments[s];
    seg_begin[size_t(s)] = (long long)g.begin;
    seg_end[size_t(s)] = (long long)g.end;
    seg_decay[size_t(s)] = segment_decay(lr, g.weight_decay);
  }
  __syncthreads();
  const long long w = vec ? 4 : 1;
  const long long hi = seg_end[size_t(num_segments - 1)];
  const long long stride = (long long)gridDim.x * blockDim.x;
  // The current segment, in registers.
  int s = 0;
  long long begin = seg_begin[0], end = seg_end[0];
  float decay = seg_decay[0];
  for (long long ci = begin / w + blockIdx.x * (long long)blockDim.x + threadIdx.x; ci * w < hi;) {
    const long long i = ci * w;
    while (i >= end && s + 1 < num_segments) {
      ++s;
      begin = seg_begin[size_t(s)];
      end = seg_end[size_t(s)];
      decay = seg_decay[size_t(s)];
    }
    if (i + w <= begin) {  // the whole chunk lies in the gap before the segment: jump past it
      ci += (begin / w - ci + stride - 1) / stride * stride;
      continue;
    }
    if (vec && i >= begin && i + 4 <= end) {
      Pack<float> p = load_pack(param + i), m4 = load_pack(m + i), v4 = load_pack(v + i);
      const Pack<float> g = load_pack(grad + i);
      for (int e = 0; e < 4; ++e) update(p.v[e], g.v[e], m4.v[e], v4.v[e], k, decay);
      store_pack(param + i, p);
      store_pack(m + i, m4);
      store_pack(v + i, v4);
      if (compute_param != nullptr) {
        for (int e = 0; e < 4; ++e) compute_param[i + e] = from_float<T>(p.v[e]);
      }
    } else {
      for (long long j = i; j < i + w; ++j) {
        while (j >= end && s + 1 < num_segments) {
          ++s;
          begin = seg_begin[size_t(s)];
          end = seg_end[size_t(s)];
          decay = seg_decay[size_t(s)];
        }
        if (j < begin || j >= end) continue;  // a gap, or past the last segment
        float p = param[j], mj = m[j], vj = v[j];
        update(p, grad[j], mj, vj, k, decay);
        param[j] = p;
        m[j] = mj;
        v[j] = vj;
        if (compute_param != nullptr) compute_param[j] = from_float<T>(p);
      }
    }
    ci += stride;
  }
}

// Blocks of the segment kernel. The host cannot see the extent of the segments (device memory)
// without a synchronisation, so the grid does not depend on it: on a GPU, as many 256-thread
// blocks as are resident at once (SMs x max threads per SM / 256; each thread strides), under
// the emulator a fixed 4 (every emulated thread is a fiber; 4 x 256 of them stride any test
// shard in a few dozen steps). The grid never changes the bits: elements are independent.
Status segment_blocks(int* blocks) {
#if defined(__CUDACC__)
  int device = 0, sms = 0, threads_per_sm = 0;
  Status e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess) {
    e = cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device);
  }
  if (e != cudaSuccess) return e;
  *blocks = sms * (threads_per_sm / kThreads);
  if (*blocks < 1) *blocks = 1;
#else
  *blocks = 4;
#endif
  return kOk;
}

Status too_many_segments() {
#if defined(__CUDACC__)
  return cudaErrorInvalidValue;
#else
  emu::detail::fail("adamw_update_segments: num_segments must be in [0, kAdamWMaxSegments]");
#endif
}

}  // namespace

template <class T>
Status adamw_update_segments(float* param, const float* grad, float* m, float* v, T* compute_param,
                             const AdamWSegment* segments, int64_t num_segments,
                             const AdamWParams& p, float grad_scale, Stream stream) {
  if (num_segments == 0) return kOk;
  if (num_segments < 0 || num_segments > kAdamWMaxSegments) return too_many_segments();
  const bool vec = is_aligned16(param) && is_aligned16(grad) && is_aligned16(m) && is_aligned16(v);
  int blocks = 0;
  const Status e = segment_blocks(&blocks);
  if (e != kOk) return e;
  return launch(adamw_segments_kernel<T>, dim3(unsigned(blocks)), dim3(kThreads), 0, stream, param,
                grad, m, v, compute_param, segments, int(num_segments), vec,
                step_scalars(p, grad_scale), p.lr);
}

template <class T>
Status adamw_update(float* param, const float* grad, float* m, float* v, T* compute_param,
                    int64_t n, const AdamWParams& p, float grad_scale, Stream stream) {
  if (n == 0) return kOk;
  const bool vec = is_aligned16(param) && is_aligned16(grad) && is_aligned16(m) && is_aligned16(v);
  const long long work = vec ? (n + 3) / 4 : n;
  long long blocks = (work + kThreads - 1) / kThreads;
  blocks = blocks > kMaxBlocks ? kMaxBlocks : blocks;
  return launch(adamw_kernel<T>, dim3(unsigned(blocks)), dim3(kThreads), 0, stream, param, grad, m,
                v, compute_param, (long long)n, vec, step_scalars(p, grad_scale));
}

template Status adamw_update<float>(float*, const float*, float*, float*, float*, int64_t,
                                    const AdamWParams&, float, Stream);
template Status adamw_update<BFloat16>(float*, const float*, float*, float*, BFloat16*, int64_t,
                                       const AdamWParams&, float, Stream);
template Status adamw_update<Half>(float*, const float*, float*, float*, Half*, int64_t,
                                   const AdamWParams&, float, Stream);

#define ST_INSTANTIATE(T)                                                                    \
  template Status adamw_update_segments<T>(float*, const float*, float*, float*, T*,         \
                                           const AdamWSegment*, int64_t, const AdamWParams&, \
                                           float, Stream);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

}  // namespace shardtrain::kernels::ST_GPU_NS
