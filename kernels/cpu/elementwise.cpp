// elementwise.cpp — CPU GELU, residual add, bias gradient, cast and scale.
//
// Every op runs over blocks of kBlock elements spread across the OpenMP threads. A 16-bit block
// is widened into a stack buffer, computed in fp32 and narrowed once; fp32 storage is computed
// in place. The inner loops are `omp simd` so that the vectoriser keeps them vector even when
// the output aliases an input (out == a is legal: there is no dependence across elements).
// add_bias, add_f32 and residual_add are one fp32 add and one rounding per element (bitwise what a
// scalar loop over dtype.h's conversions gives); sum_squares adds in a fixed blocked order (the
// same bits at every thread count and ISA level).
// GELU uses the identity 0.5 (1 + tanh u) = 1 / (1 + e^{-2u}) so that it needs only the
// vectorisable exp_f32 (glibc's tanhf is an opaque call), and the form is accurate in both
// tails. bias_backward sums a fixed partition of the rows (vec_util.h) so the result does not
// depend on the thread count.
#include "kernels/elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/vec_util.h"

namespace shardtrain::kernels {
SHARDTRAIN_ISA_BEGIN

using cpu::as_f32;
using cpu::for_blocks;
using cpu::kBlock;
using cpu::out_f32;
using cpu::store;

namespace {

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluA = 0.044715f;
// sum_squares' fixed order (kernels/elementwise.h): chunks of 64 Ki elements, 16 lanes each.
constexpr int64_t kSqChunk = int64_t(1) << 16;
constexpr int64_t kSqLanes = 16;

}  // namespace

template <class T>
void gelu_forward(T* out, const T* x, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t len) {
    float xb[kBlock], ob[kBlock];
    const float* xf = as_f32(x + i0, len, xb);
    float* of = out_f32(out + i0, ob);
    // gelu(x) = x * sigmoid(2u), u = sqrt(2/pi) (x + a x^3); exp overflow gives x / inf = -0.
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      float v = xf[i];
      float u = kGeluK * (v + kGeluA * v * v * v);
      of[i] = v / (1.0f + cpu::exp_f32(-2.0f * u));
    }
    store(out + i0, of, len);
  });
}

template <class T>
void gelu_backward(T* dx, const T* x, const T* dout, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t len) {
    float xb[kBlock], db[kBlock], ob[kBlock];
    const float* xf = as_f32(x + i0, len, xb);
    const float* df = as_f32(dout + i0, len, db);
    float* of = out_f32(dx + i0, ob);
    // With s = sigmoid(2u) = 0.5 (1 + tanh u) and 1 - tanh^2 u = 4 s (1 - s):
    //   gelu'(x) = s + 2 x s (1 - s) du/dx,  du/dx = sqrt(2/pi) (1 + 3 a x^2),
    // and s (1 - s) = (e s) s with e = e^{-2u}. Beyond |2u| = 80 gelu' is 0 or 1 to within
    // 1e-32, so the tails are set exactly (this also keeps inf * 0 out of huge inputs).
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      float v = xf[i];
      float u = kGeluK * (v + kGeluA * v * v * v);
      float arg = -2.0f * u;
      float e = cpu::exp_f32(arg);
      float s = 1.0f / (1.0f + e);
      float dudx = kGeluK * (1.0f + 3.0f * kGeluA * v * v);
      float gp = s + 2.0f * v * ((e * s) * s) * dudx;
      gp = arg >= 80.0f ? 0.0f : gp;
      gp = arg <= -80.0f ? 1.0f : gp;
      of[i] = df[i] * gp;
    }
    store(dx + i0, of, len);
  });
}

template <class T>
void residual_add(T* out, const T* a, const T* b, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t len) {
    float ab[kBlock], bb[kBlock], ob[kBlock];
    const float* af = as_f32(a + i0, len, ab);
    const float* bf = as_f32(b + i0, len, bb);
    float* of = out_f32(out + i0, ob);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) of[i] = af[i] + bf[i];
    store(out + i0, of, len);
  });
}

template <class T>
void bias_backward(float* dbias, const T* dout, int64_t rows, int64_t cols) {
  // 1. Each partition of rows sums its rows, in row order, into its own partial row.
  const int64_t parts = cpu::row_parts(rows);
  std::vector<float> partial(size_t(parts * cols), 0.0f);  // (parts, cols)
#pragma omp parallel for schedule(static) if (parts > 1)
  for (int64_t p = 0; p < parts; ++p) {
    float* acc = partial.data() + p * cols;
    float* buf = cpu::row_scratch<T>(cols);
    const int64_t r1 = cpu::part_begin(p + 1, parts, rows);
    for (int64_t r = cpu::part_begin(p, parts, rows); r < r1; ++r) {
      const float* row = as_f32(dout + r * cols, cols, buf);
      for (int64_t c = 0; c < cols; ++c) acc[c] += row[c];
    }
  }
  // 2. Partials are added in partition order.
  cpu::add_parts(dbias, partial.data(), parts, cols);
}

template <class T>
void add_bias(T* x, const T* bias, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* b = as_f32(bias, cols, cpu::row_scratch<T>(cols, 0));  // (cols)
    T* row = x + r * cols;
    float* xf = out_f32(row, cpu::row_scratch<T>(cols, 1));  // (cols)
    if constexpr (!std::is_same_v<T, float>) cpu::widen(xf, row, cols);
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) xf[c] += b[c];
    store(row, xf, cols);
  }
}

void add_f32(float* acc, const float* x, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t len) {
    float* a = acc + i0;
    const float* b = x + i0;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) a[i] += b[i];
  });
}

double sum_squares(const float* x, int64_t n) {
  // 1. Each chunk of kSqChunk elements sums into kSqLanes doubles, lane j taking the elements
  //    i = j (mod kSqLanes) in index order: vector code at any ISA, the same additions at all.
  // 2. A chunk's lanes add in lane order; the chunks' sums add in chunk order, from 0.0.
  const int64_t chunks = (n + kSqChunk - 1) / kSqChunk;
  double partial_stack[64];
  std::vector<double> partial_heap;
  double* partial = partial_stack;
  if (chunks > 64) {
    partial_heap.resize(size_t(chunks));
    partial = partial_heap.data();
  }
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const float* xc = x + c * kSqChunk;
    const int64_t len = std::min(kSqChunk, n - c * kSqChunk);
    double lane[kSqLanes] = {};
    int64_t i = 0;
    for (; i + kSqLanes <= len; i += kSqLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kSqLanes; ++j) lane[j] += double(xc[i + j]) * double(xc[i + j]);
    }
    for (int64_t j = 0; i + j < len; ++j) lane[j] += double(xc[i + j]) * double(xc[i + j]);
    double sum = 0.0;
    for (int64_t j = 0; j < kSqLanes; ++j) sum += lane[j];
    partial[c] = sum;
  }
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  return total;
}

double sum_f32(const float* x, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += double(x[i]);
  return s;
}

template <class In, class Out>
void cast(Out* out, const In* in, int64_t n) {
  if constexpr (std::is_same_v<In, Out>) {
    if (static_cast<const void*>(out) == static_cast<const void*>(in)) return;
    for_blocks(n, [&](int64_t i0, int64_t len) {
      std::memcpy(out + i0, in + i0, size_t(len) * sizeof(In));
    });
  } else if constexpr (std::is_same_v<In, float>) {
    for_blocks(n, [&](int64_t i0, int64_t len) { cpu::narrow(out + i0, in + i0, len); });
  } else if constexpr (std::is_same_v<Out, float>) {
    for_blocks(n, [&](int64_t i0, int64_t len) { cpu::widen(out + i0, in + i0, len); });
  } else {  // bf16 <-> f16: widening is exact, so the only rounding is the narrowing
    for_blocks(n, [&](int64_t i0, int64_t len) {
      float buf[kBlock];
      cpu::widen(buf, in + i0, len);
      cpu::narrow(out + i0, buf, len);
    });
  }
}

template <class T>
void scale(T* x, float s, int64_t n) {
  for_blocks(n, [&](int64_t i0, int64_t len) {
    float xb[kBlock];
    float* xf = out_f32(x + i0, xb);
    if constexpr (!std::is_same_v<T, float>) cpu::widen(xf, x + i0, len);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) xf[i] *= s;
    store(x + i0, xf, len);
  });
}

// silu(g) = g s, s = 1 / (1 + e), e = e^-g; silu'(g) = s + g s (1 - s) = s + g (e s) s. Below
// g = -80 silu' is 0 to within 1e-33 and e s overflows to inf * 0: set exactly, as GELU's tails.
template <class T>
void swiglu_forward(T* out, const T* gu, int64_t rows, int64_t ffn) {
#pragma omp parallel for schedule(static) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = as_f32(gu + r * 2 * ffn, 2 * ffn, cpu::row_scratch<T>(2 * ffn, 0));  // (2F)
    float* o = out_f32(out + r * ffn, cpu::row_scratch<T>(ffn, 1));                       // (F)
#pragma omp simd
    for (int64_t f = 0; f < ffn; ++f) o[f] = g[f] / (1.0f + cpu::exp_f32(-g[f])) * g[ffn + f];
    store(out + r * ffn, o, ffn);
  }
}

template <class T>
void swiglu_backward(T* dgu, const T* gu, const T* dout, int64_t rows, int64_t ffn) {
#pragma omp parallel for schedule(static) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = as_f32(gu + r * 2 * ffn, 2 * ffn, cpu::row_scratch<T>(2 * ffn, 0));  // (2F)
    const float* d = as_f32(dout + r * ffn, ffn, cpu::row_scratch<T>(ffn, 1));            // (F)
    float* o = out_f32(dgu + r * 2 * ffn, cpu::row_scratch<T>(2 * ffn, 2));               // (2F)
#pragma omp simd
    for (int64_t f = 0; f < ffn; ++f) {
      const float v = g[f], e = cpu::exp_f32(-v), sg = 1.0f / (1.0f + e);
      float ds = sg + v * ((e * sg) * sg);
      ds = v <= -80.0f ? 0.0f : ds;
      o[f] = d[f] * g[ffn + f] * ds;
      o[ffn + f] = d[f] * (v * sg);
    }
    store(dgu + r * 2 * ffn, o, 2 * ffn);
  }
}

#define ST_INSTANTIATE(T)                                                     \
  template void swiglu_forward<T>(T*, const T*, int64_t, int64_t);            \
  template void swiglu_backward<T>(T*, const T*, const T*, int64_t, int64_t); \
  template void gelu_forward<T>(T*, const T*, int64_t);                       \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t);            \
  template void residual_add<T>(T*, const T*, const T*, int64_t);             \
  template void bias_backward<T>(float*, const T*, int64_t, int64_t);         \
  template void add_bias<T>(T*, const T*, int64_t, int64_t);                  \
  template void scale<T>(T*, float, int64_t);                                 \
  template void cast<T, float>(float*, const T*, int64_t);                    \
  template void cast<T, BFloat16>(BFloat16*, const T*, int64_t);              \
  template void cast<T, Half>(Half*, const T*, int64_t);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
