// cross_entropy.cpp — CPU fused softmax cross-entropy over the vocabulary.
//
// One OpenMP iteration per row; rows are independent, so the result cannot depend on the
// thread count. A 16-bit row is widened once into a per-thread fp32 scratch row (V floats, in
// L2 for GPT-2's 50k vocabulary). Exponentials use the vectorisable exp_f32 (vec_util.h) and
// the row max / sum are `omp simd` reductions. The loss is formed as (max - x_target) +
// log(sum) rather than lse - x_target: with large logits lse is a big number whose rounding
// (ulp(1000) = 6e-5) would otherwise land in a loss of order 1. Backward rebuilds the softmax
// from the saved lse, reading each element before writing the same index, so dlogits may be
// the logits buffer itself; the target logit is read before the row is overwritten.
#include "kernels/cross_entropy.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/vec_util.h"

namespace shardtrain::kernels {
SHARDTRAIN_ISA_BEGIN

using cpu::as_f32;
using cpu::exp_f32;
using cpu::out_f32;
using cpu::row_scratch;
using cpu::store;

template <class T>
void cross_entropy_forward(float* losses, float* lse, const T* logits, const int32_t* targets,
                           LogitsShape s, int64_t valid_vocab) {
  const int64_t V = s.vocab, Vv = valid_vocab;
#pragma omp parallel for schedule(static) if (s.rows > 1)
  for (int64_t r = 0; r < s.rows; ++r) {
    const float* x = as_f32(logits + r * V, Vv, row_scratch<T>(Vv));  // (Vv), padding not read
    // 1. Row max over the real vocabulary.
    float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t c = 0; c < Vv; ++c) m = x[c] > m ? x[c] : m;
    // 2. Max-subtracted sum of exponentials (the max term is 1, so sum >= 1).
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < Vv; ++c) sum += exp_f32(x[c] - m);
    const float log_sum = std::log(sum);
    lse[r] = m + log_sum;
    const int32_t t = targets[r];
    losses[r] = t < 0 ? 0.0f : (m - x[t]) + log_sum;
  }
}

template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const float* lse, const int32_t* targets,
                            float grad_weight, LogitsShape s, int64_t valid_vocab) {
  const int64_t V = s.vocab, Vv = valid_vocab;
#pragma omp parallel for schedule(static) if (s.rows > 1)
  for (int64_t r = 0; r < s.rows; ++r) {
    T* drow = dlogits + r * V;
    const int32_t t = targets[r];
    if (t < 0) {  // ignored row: zero gradient (all-zero bits are +0 in every storage type)
      std::memset(static_cast<void*>(drow), 0, size_t(V) * sizeof(T));
      continue;
    }
    // 1. Read the row (widened into scratch for 16-bit; in place for fp32) and its target
    //    logit, before anything is written: drow may be the same memory.
    float* buf = row_scratch<T>(Vv);
    const float* x = as_f32(logits + r * V, Vv, buf);  // (Vv)
    const float xt = x[t];
    const float L = lse[r];
    // 2. softmax * weight over the real vocabulary, element by element (alias-safe), then the
    //    target column becomes (p_t - 1) * weight.
    float* d = out_f32(drow, buf);  // (Vv)
#pragma omp simd
    for (int64_t c = 0; c < Vv; ++c) d[c] = exp_f32(x[c] - L) * grad_weight;
    d[t] = (exp_f32(xt - L) - 1.0f) * grad_weight;
    store(drow, d, Vv);
    // 3. Padding columns get no gradient.
    if (V > Vv) std::memset(static_cast<void*>(drow + Vv), 0, size_t(V - Vv) * sizeof(T));
  }
}

#define ST_INSTANTIATE(T)                                                                       \
  template void cross_entropy_forward<T>(float*, float*, const T*, const int32_t*, LogitsShape, \
                                         int64_t);                                              \
  template void cross_entropy_backward<T>(T*, const T*, const float*, const int32_t*, float,    \
                                          LogitsShape, int64_t);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
