// tensor_parallel.cpp — CPU vocab-parallel embedding and cross-entropy pieces (declared in
// kernels/embedding.h and kernels/cross_entropy.h).
//
// These are the model's tensor-parallel host loops moved here unchanged, so that a model using
// them gets the same bits as before: OpenMP over rows (lookups, position adds, the cross-entropy
// pieces) or over fixed 64-channel blocks that walk every position in order (the gradients),
// which is deterministic and independent of the thread count without atomics. The conversions
// are dtype.h's scalar ones, exactly as the loops had them; the exponentials are std::exp on
// double (the sum) and on float (the backward), as the model's loss had them.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/isa.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels {
SHARDTRAIN_ISA_BEGIN

namespace {
// 64 fp32 channels = 256 bytes of gradient per row: whole cache lines per thread.
constexpr int64_t kChannelBlock = 64;
}  // namespace

template <class T>
void embedding_lookup_slice(T* out, const int32_t* tokens, const T* wte, int64_t vocab_begin,
                            int64_t vocab_rows, int64_t n, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = int64_t(tokens[i]) - vocab_begin;
    T* o = out + i * C;
    if (v >= 0 && v < vocab_rows) {
      std::memcpy(o, wte + v * C, size_t(C) * sizeof(T));
    } else {
      std::memset(static_cast<void*>(o), 0, size_t(C) * sizeof(T));
    }
  }
}

template <class T>
void add_positions(T* x, const T* wpe, int64_t rows, int64_t row0, int64_t seq, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    T* o = x + i * C;
    const T* p = wpe + ((row0 + i) % seq) * C;
    for (int64_t c = 0; c < C; ++c) o[c] = from_float<T>(to_float(o[c]) + to_float(p[c]));
  }
}

template <class T>
void embedding_backward_slice(float* dwte, const T* dout, const int32_t* tokens,
                              int64_t vocab_begin, int64_t vocab_rows, int64_t n, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
    const int64_t c1 = std::min(C, c0 + kChannelBlock);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = int64_t(tokens[i]) - vocab_begin;
      if (v < 0 || v >= vocab_rows) continue;
      const T* d = dout + i * C;
      float* w = dwte + v * C;
      for (int64_t c = c0; c < c1; ++c) w[c] += to_float(d[c]);
    }
  }
}

template <class T>
void positions_backward(float* dwpe, const T* dout, int64_t rows, int64_t row0, int64_t seq,
                        int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
    const int64_t c1 = std::min(C, c0 + kChannelBlock);
    for (int64_t i = 0; i < rows; ++i) {
      const T* d = dout + i * C;
      float* pw = dwpe + ((row0 + i) % seq) * C;
      for (int64_t c = c0; c < c1; ++c) pw[c] += to_float(d[c]);
    }
  }
}

template <class T>
void cross_entropy_partial_max(double* row_max, double* target_logit, const T* logits,
                               const int32_t* targets, int64_t vocab_begin, LogitsShape s,
                               int64_t valid) {
  const int64_t N = s.rows, V = s.vocab;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const T* row = logits + i * V;
    float m = -INFINITY;
    for (int64_t j = 0; j < valid; ++j) m = std::max(m, to_float(row[j]));
    row_max[i] = m;
    const int64_t t = int64_t(targets[i]) - vocab_begin;
    target_logit[i] = targets[i] >= 0 && t >= 0 && t < valid ? double(to_float(row[t])) : 0.0;
  }
}

template <class T>
void cross_entropy_partial_sumexp(double* sum, const T* logits, const double* row_max,
                                  LogitsShape s, int64_t valid) {
  const int64_t N = s.rows, V = s.vocab;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const T* row = logits + i * V;
    const float m = float(row_max[i]);
    double acc = 0.0;
    for (int64_t j = 0; j < valid; ++j) acc += std::exp(double(to_float(row[j]) - m));
    sum[i] = acc;
  }
}

template <class T>
void cross_entropy_backward_slice(T* dlogits, const T* logits, const float* lse,
                                  const int32_t* targets, int64_t vocab_begin, float grad_weight,
                                  LogitsShape s, int64_t valid) {
  const int64_t N = s.rows, V = s.vocab;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const T* row = logits + i * V;
    T* drow = dlogits + i * V;
    const int64_t t = int64_t(targets[i]) - vocab_begin;
    const bool ignored = targets[i] < 0;
    for (int64_t j = 0; j < V; ++j) {
      float g = 0.0f;
      if (!ignored && j < valid) {
        g = std::exp(to_float(row[j]) - lse[i]) - (j == t ? 1.0f : 0.0f);
      }
      drow[j] = from_float<T>(g * grad_weight);
    }
  }
}

void cross_entropy_from_partials(float* losses, float* lse, const double* row_max,
                                 const double* sum, const double* target_logit,
                                 const int32_t* targets, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    lse[i] = float(row_max[i] + std::log(sum[i]));
    losses[i] = targets[i] < 0 ? 0.0f : float(double(lse[i]) - target_logit[i]);
  }
}

#define ST_INSTANTIATE(T)                                                                          \
  template void embedding_lookup_slice<T>(T*, const int32_t*, const T*, int64_t, int64_t, int64_t, \
                                          int64_t);                                                \
  template void add_positions<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t);                \
  template void embedding_backward_slice<T>(float*, const T*, const int32_t*, int64_t, int64_t,    \
                                            int64_t, int64_t);                                     \
  template void positions_backward<T>(float*, const T*, int64_t, int64_t, int64_t, int64_t);       \
  template void cross_entropy_partial_max<T>(double*, double*, const T*, const int32_t*, int64_t,  \
                                             LogitsShape, int64_t);                                \
  template void cross_entropy_partial_sumexp<T>(double*, const T*, const double*, LogitsShape,     \
                                                int64_t);                                          \
  template void cross_entropy_backward_slice<T>(T*, const T*, const float*, const int32_t*,        \
                                                int64_t, float, LogitsShape, int64_t);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
