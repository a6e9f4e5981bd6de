// adamw.cu — AdamW on fp32 master weights (+ cast to the compute dtype) on the GPU; one
// source for nvcc and emu.
//
// A direct port of kernels/cpu/adamw.cpp, written op for op with the IEEE-rounded intrinsics
// (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn, __fmaf_rn) so nvcc cannot contract a*b+c into
// an fma the CPU does not do (nvcc contracts by default): the update is then bit-identical to
// the CPU backend's, which follows torch 1.13's operation order. The step scalars (bias
// corrections etc.) are computed on the host in double exactly as the CPU backend does.
// Elementwise: each thread takes 4 consecutive elements through 16-byte packs when every
// pointer is 16-byte aligned, else one; grid-stride over n.
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
// p += (-lr/bc1 * m) / denom.
ST_DEVICE void update(float& p, float g_raw, float& m, float& v, const StepScalars& k) {
  const float g = __fmul_rn(g_raw, k.grad_scale);
  p = __fmul_rn(p, k.decay);
  m = __fmaf_rn(g, k.one_minus_b1, __fmul_rn(m, k.b1));
  v = __fadd_rn(__fmul_rn(v, k.b2), __fmul_rn(__fmul_rn(k.one_minus_b2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), k.bc2_sqrt), k.eps);
  p = __fadd_rn(p, __fdiv_rn(__fmul_rn(k.neg_step_size, m), denom));
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

}  // namespace

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

}  // namespace shardtrain::kernels::ST_GPU_NS
