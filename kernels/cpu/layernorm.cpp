// layernorm.cpp — CPU LayerNorm and RMSNorm forward and backward over rows of C channels.
//
// One OpenMP iteration per row (forward) or per fixed row partition (backward). A 16-bit row is
// widened into a per-thread fp32 scratch row first, so every inner loop is a contiguous fp32
// loop the vectoriser handles; row sums use `omp simd` reductions (GCC will not reorder a plain
// fp32 sum without -ffast-math). Statistics are two-pass (mean, then the mean of squared
// deviations), which stays accurate when |mean| >> std. The parameter gradients are reductions
// over rows: each partition of a fixed, thread-count-independent row split (vec_util.h)
// accumulates its own partial rows, and the partials are added in partition order, so the
// backward pass reads dout and x exactly once and is bitwise reproducible for any thread count.
#include "kernels/layernorm.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/vec_util.h"
#include "kernels/elementwise.h"

namespace shardtrain::kernels {
SHARDTRAIN_ISA_BEGIN

using cpu::as_f32;
using cpu::out_f32;
using cpu::row_scratch;
using cpu::store;

namespace {

// The (C) parameter vectors in fp32: a view for fp32 storage, a widened copy otherwise.
template <class T>
struct ParamF32 {
  std::vector<float> copy;
  const float* ptr;
  ParamF32(const T* p, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
      ptr = p;
      (void)n;
    } else {
      copy.resize(size_t(n));
      cpu::widen(copy.data(), p, n);
      ptr = copy.data();
    }
  }
};

}  // namespace

template <class T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* x, const T* weight, const T* bias,
                       RowsShape s, float eps) {
  const int64_t C = s.channels;
  ParamF32<T> w(weight, C), b(bias, C);
  const float* wf = w.ptr;
  const float* bf = b.ptr;
#pragma omp parallel for schedule(static) if (s.rows > 1)
  for (int64_t r = 0; r < s.rows; ++r) {
    const float* xr = as_f32(x + r * C, C, row_scratch<T>(C, 0));  // (C)
    // 1. Mean, then biased variance about it.
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; ++c) sum += xr[c];
    const float m = sum / float(C);
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < C; ++c) {
      float d = xr[c] - m;
      sq += d * d;
    }
    const float rs = 1.0f / std::sqrt(sq / float(C) + eps);
    // 2. Normalise, scale and shift.
    float* o = out_f32(out + r * C, row_scratch<T>(C, 1));  // (C)
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = (xr[c] - m) * rs * wf[c] + bf[c];
    store(out + r * C, o, C);
    mean[r] = m;
    rstd[r] = rs;
  }
}

// The two calls: residual_add's one fp32 add and one rounding per element, then LayerNorm of
// the stored (rounded) res, so the bits are those of the unfused calls by construction.
template <class T>
void residual_layernorm_forward(T* res, T* out, float* mean, float* rstd, const T* a, const T* b,
                                const T* weight, const T* bias, RowsShape s, float eps) {
  residual_add(res, a, b, s.rows * s.channels);
  layernorm_forward(out, mean, rstd, static_cast<const T*>(res), weight, bias, s, eps);
}

template <class T>
void layernorm_backward(T* dx, float* dweight, float* dbias, const T* dout, const T* x,
                        const T* weight, const float* mean, const float* rstd, RowsShape s) {
  const int64_t C = s.channels;
  ParamF32<T> w(weight, C);
  const float* wf = w.ptr;
  const int64_t parts = cpu::row_parts(s.rows);
  std::vector<float> dw_part(size_t(parts * C), 0.0f);  // (parts, C)
  std::vector<float> db_part(size_t(parts * C), 0.0f);  // (parts, C)
#pragma omp parallel for schedule(static) if (parts > 1)
  for (int64_t p = 0; p < parts; ++p) {
    float* dw = dw_part.data() + p * C;
    float* db = db_part.data() + p * C;
    const int64_t r1 = cpu::part_begin(p + 1, parts, s.rows);
    for (int64_t r = cpu::part_begin(p, parts, s.rows); r < r1; ++r) {
      const float* xr = as_f32(x + r * C, C, row_scratch<T>(C, 0));     // (C)
      const float* gr = as_f32(dout + r * C, C, row_scratch<T>(C, 1));  // (C)
      const float m = mean[r], rs = rstd[r];
      // 1. The two row means the input gradient needs: mean(g w) and mean(g w xhat).
      float gw_sum = 0.0f, gwx_sum = 0.0f;
#pragma omp simd reduction(+ : gw_sum, gwx_sum)
      for (int64_t c = 0; c < C; ++c) {
        float xhat = (xr[c] - m) * rs;
        float gw = gr[c] * wf[c];
        gw_sum += gw;
        gwx_sum += gw * xhat;
      }
      const float gw_mean = gw_sum / float(C), gwx_mean = gwx_sum / float(C);
      // 2. Parameter gradients into this partition's partial rows, rows in order.
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        dw[c] += gr[c] * ((xr[c] - m) * rs);
        db[c] += gr[c];
      }
      // 3. dx += rstd (g w - mean(g w) - xhat mean(g w xhat)), one rounding into T.
      float* dxr = out_f32(dx + r * C, row_scratch<T>(C, 2));  // (C)
      if constexpr (!std::is_same_v<T, float>) cpu::widen(dxr, dx + r * C, C);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        float xhat = (xr[c] - m) * rs;
        dxr[c] += (gr[c] * wf[c] - gw_mean - xhat * gwx_mean) * rs;
      }
      store(dx + r * C, dxr, C);
    }
  }
  // 4. Partials added in partition order: the same sums for any thread count.
  cpu::add_parts(dweight, dw_part.data(), parts, C);
  cpu::add_parts(dbias, db_part.data(), parts, C);
}

template <class T>
void rmsnorm_forward(T* out, float* rstd, const T* x, const T* weight, RowsShape s, float eps) {
  const int64_t C = s.channels;
  ParamF32<T> w(weight, C);
  const float* wf = w.ptr;
#pragma omp parallel for schedule(static) if (s.rows > 1)
  for (int64_t r = 0; r < s.rows; ++r) {
    const float* xr = as_f32(x + r * C, C, row_scratch<T>(C, 0));  // (C)
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < C; ++c) sq += xr[c] * xr[c];
    const float rs = 1.0f / std::sqrt(sq / float(C) + eps);
    float* o = out_f32(out + r * C, row_scratch<T>(C, 1));  // (C)
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = xr[c] * rs * wf[c];
    store(out + r * C, o, C);
    rstd[r] = rs;
  }
}

template <class T>
void residual_rmsnorm_forward(T* res, T* out, float* rstd, const T* a, const T* b, const T* weight,
                              RowsShape s, float eps) {
  residual_add(res, a, b, s.rows * s.channels);
  rmsnorm_forward(out, rstd, static_cast<const T*>(res), weight, s, eps);
}

// As layernorm_backward without the mean terms: one pass over dout and x, the weight gradient
// through the fixed row partition.
template <class T>
void rmsnorm_backward(T* dx, float* dweight, const T* dout, const T* x, const T* weight,
                      const float* rstd, RowsShape s) {
  const int64_t C = s.channels;
  ParamF32<T> w(weight, C);
  const float* wf = w.ptr;
  const int64_t parts = cpu::row_parts(s.rows);
  std::vector<float> dw_part(size_t(parts * C), 0.0f);  // (parts, C)
#pragma omp parallel for schedule(static) if (parts > 1)
  for (int64_t p = 0; p < parts; ++p) {
    float* dw = dw_part.data() + p * C;
    const int64_t r1 = cpu::part_begin(p + 1, parts, s.rows);
    for (int64_t r = cpu::part_begin(p, parts, s.rows); r < r1; ++r) {
      const float* xr = as_f32(x + r * C, C, row_scratch<T>(C, 0));     // (C)
      const float* gr = as_f32(dout + r * C, C, row_scratch<T>(C, 1));  // (C)
      const float rs = rstd[r];
      float gwx_sum = 0.0f;
#pragma omp simd reduction(+ : gwx_sum)
      for (int64_t c = 0; c < C; ++c) gwx_sum += gr[c] * wf[c] * (xr[c] * rs);
      const float gwx_mean = gwx_sum / float(C);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dw[c] += gr[c] * (xr[c] * rs);
      float* dxr = out_f32(dx + r * C, row_scratch<T>(C, 2));  // (C)
      if constexpr (!std::is_same_v<T, float>) cpu::widen(dxr, dx + r * C, C);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dxr[c] += (gr[c] * wf[c] - (xr[c] * rs) * gwx_mean) * rs;
      store(dx + r * C, dxr, C);
    }
  }
  cpu::add_parts(dweight, dw_part.data(), parts, C);
}

#define ST_INSTANTIATE(T)                                                                         \
  template void rmsnorm_forward<T>(T*, float*, const T*, const T*, RowsShape, float);             \
  template void residual_rmsnorm_forward<T>(T*, T*, float*, const T*, const T*, const T*,         \
                                            RowsShape, float);                                    \
  template void rmsnorm_backward<T>(T*, float*, const T*, const T*, const T*, const float*,       \
                                    RowsShape);                                                   \
  template void layernorm_forward<T>(T*, float*, float*, const T*, const T*, const T*, RowsShape, \
                                     float);                                                      \
  template void layernorm_backward<T>(T*, float*, float*, const T*, const T*, const T*,           \
                                      const float*, const float*, RowsShape);                     \
  template void residual_layernorm_forward<T>(T*, T*, float*, float*, const T*, const T*,         \
                                              const T*, const T*, RowsShape, float);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
