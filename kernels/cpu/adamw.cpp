// adamw.cpp — CPU AdamW on fp32 master weights, torch 1.13 single-tensor operation order.
//
// Parity with torch is the point, so the arithmetic is written op for op as torch's kernels do
// it, and the compiler is told not to rearrange it: fp-contract is off for this file (GCC
// otherwise fuses a*b+c into an fma in C++, changing roundings). The one fma is torch's own:
// add_ with alpha is `vec::fmadd(other, alpha, self)` in ATen's vectorised CPU kernel. Scalars
// follow Python: the bias corrections, 1 - lr*wd, 1 - beta, lr / bc1 and sqrt(bc2) are computed
// in double and rounded to float where ATen converts a Scalar to the tensor's dtype. (Whether a
// given torch wheel's compiler fused any of its own expressions is not knowable from here;
// parity holds to the ulp either way, and bit for bit when it did not.)
// Elements are independent; the loop runs over blocks of kBlock, each in three cache-resident
// passes, and each block's compute-dtype copy is narrowed right after its update.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/adamw.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/vec_util.h"

namespace shardtrain::kernels {
SHARDTRAIN_ISA_BEGIN
namespace {

// The scalars of one step, as torch computes them (see the file comment).
struct StepScalars {
  float decay, b1, b2, one_minus_b1, one_minus_b2, bc2_sqrt, neg_step_size, eps, grad_scale;
};

StepScalars step_scalars(const AdamWParams& p, float grad_scale) {
  // Python-side values (torch/optim/adamw.py, _single_tensor_adamw), in double...
  const double step = double(p.step);
  const double bias_correction1 = 1.0 - std::pow(double(p.beta1), step);
  const double bias_correction2 = 1.0 - std::pow(double(p.beta2), step);
  // ...and as the float Scalars the ATen kernels receive.
  StepScalars k;
  k.decay = float(1.0 - double(p.lr) * double(p.weight_decay));  // param.mul_
  k.b1 = p.beta1;                                                // exp_avg.mul_
  k.b2 = p.beta2;                                                // exp_avg_sq.mul_
  k.one_minus_b1 = float(1.0 - double(p.beta1));                 // add_ alpha
  k.one_minus_b2 = float(1.0 - double(p.beta2));                 // addcmul_ value
  k.bc2_sqrt = float(std::sqrt(bias_correction2));               // divides sqrt(v)
  k.neg_step_size = float(-(double(p.lr) / bias_correction1));   // addcdiv_ value
  k.eps = p.eps;
  k.grad_scale = grad_scale;
  return k;
}

// dst = sqrt(src) elementwise. GCC vectorises std::sqrt only under -fno-math-errno (otherwise
// the errno check is control flow in the loop, and `optimize` pragmas do not lift it), so the
// vector instruction is named directly; like std::sqrt it is correctly rounded.
void sqrt_block(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  // The masked form with an all-ones mask: the plain one trips GCC 12's -Wmaybe-uninitialized
  // inside its own header (_mm512_undefined_ps).
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_loadu_ps(src + i);
    _mm512_storeu_ps(dst + i, _mm512_mask_sqrt_ps(x, __mmask16(0xffff), x));
  }
#elif defined(__AVX__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_sqrt_ps(_mm256_loadu_ps(src + i)));
#elif defined(__SSE__)
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(dst + i, _mm_sqrt_ps(_mm_loadu_ps(src + i)));
#endif
  for (; i < n; ++i) dst[i] = std::sqrt(src[i]);
}

// One block of at most kBlock elements, in three cache-resident passes (the sqrt between them).
void update_block(float* param, const float* grad, float* m, float* v, int64_t n,
                  const StepScalars& k) {
  // 1. Decay and moments.
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * k.grad_scale;
    // param.mul_(1 - lr * wd)
    param[i] = param[i] * k.decay;
    // exp_avg.mul_(b1).add_(g, alpha=1-b1): fmadd(g, 1-b1, m*b1)
    m[i] = std::fma(g, k.one_minus_b1, m[i] * k.b1);
    // exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2): v*b2 + ((1-b2)*g)*g
    v[i] = v[i] * k.b2 + (k.one_minus_b2 * g) * g;
  }
  // 2. exp_avg_sq.sqrt()
  float root[cpu::kBlock];
  sqrt_block(root, v, n);
  // 3. denom = (sqrt(v) / sqrt(bc2)).add_(eps);
  //    param.addcdiv_(exp_avg, denom, value=-lr/bc1): p + ((-lr/bc1) * m) / denom
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float denom = root[i] / k.bc2_sqrt + k.eps;
    param[i] = param[i] + (k.neg_step_size * m[i]) / denom;
  }
}

}  // namespace

template <class T>
void adamw_update(float* param, const float* grad, float* m, float* v, T* compute_param, int64_t n,
                  const AdamWParams& p, float grad_scale) {
  const StepScalars k = step_scalars(p, grad_scale);
  cpu::for_blocks(n, [&](int64_t i0, int64_t len) {
    update_block(param + i0, grad + i0, m + i0, v + i0, len, k);
    if (compute_param == nullptr) return;
    if constexpr (std::is_same_v<T, float>) {
      if (compute_param != param) {
        std::memcpy(compute_param + i0, param + i0, size_t(len) * sizeof(float));
      }
    } else {
      cpu::narrow(compute_param + i0, param + i0, len);
    }
  });
}

template <class T>
void adamw_update_segments(float* param, const float* grad, float* m, float* v, T* compute_param,
                           const AdamWSegment* segments, int64_t num_segments, const AdamWParams& p,
                           float grad_scale) {
  // One adamw_update per segment: the contract's definition, so equal to it by construction.
  for (int64_t s = 0; s < num_segments; ++s) {
    const AdamWSegment& seg = segments[s];
    if (seg.end <= seg.begin) continue;
    AdamWParams ps = p;
    ps.weight_decay = seg.weight_decay;
    adamw_update(param + seg.begin, grad + seg.begin, m + seg.begin, v + seg.begin,
                 compute_param == nullptr ? nullptr : compute_param + seg.begin,
                 seg.end - seg.begin, ps, grad_scale);
  }
}

template void adamw_update<float>(float*, const float*, float*, float*, float*, int64_t,
                                  const AdamWParams&, float);
template void adamw_update<BFloat16>(float*, const float*, float*, float*, BFloat16*, int64_t,
                                     const AdamWParams&, float);
template void adamw_update<Half>(float*, const float*, float*, float*, Half*, int64_t,
                                 const AdamWParams&, float);

#define ST_INSTANTIATE(T)                                                          \
  template void adamw_update_segments<T>(float*, const float*, float*, float*, T*, \
                                         const AdamWSegment*, int64_t, const AdamWParams&, float);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
