// embedding.cpp — CPU token + position embedding, forward and deterministic backward.
//
// Forward is a gather: one OpenMP iteration per (b, t) row. Backward is a scatter-add into the
// gradient tables, where two positions with the same token would race; instead of atomics the
// channels are split into fixed chunks of kChunk columns and each chunk is owned by one thread,
// which walks every position in (b, t) order. Each gradient element is therefore summed by one
// thread in token order — deterministic, and the same for any thread count — while dout is
// still read exactly once in total. dwpe is accumulated in the same walk (b ascending per t).
#include "kernels/embedding.h"

#include <algorithm>

#include "kernels/cpu/vec_util.h"

namespace shardtrain::kernels {
SHARDTRAIN_ISA_BEGIN

using cpu::as_f32;
using cpu::out_f32;
using cpu::row_scratch;
using cpu::store;

template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe,
                       EmbeddingShape s) {
  const int64_t C = s.channels, N = s.batch * s.seq;
#pragma omp parallel for schedule(static) if (N > 1)
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = i % s.seq;
    const float* e = as_f32(wte + int64_t(tokens[i]) * C, C, row_scratch<T>(C, 0));  // (C)
    const float* p = as_f32(wpe + t * C, C, row_scratch<T>(C, 1));                   // (C)
    float* o = out_f32(out + i * C, row_scratch<T>(C, 2));                           // (C)
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = e[c] + p[c];
    store(out + i * C, o, C);
  }
}

template <class T>
void embedding_backward(float* dwte, float* dwpe, const T* dout, const int32_t* tokens,
                        EmbeddingShape s) {
  // 64 columns = 256 bytes of fp32 gradient per row: whole cache lines, and GPT-2's C = 768
  // gives 12 chunks to spread over the threads.
  constexpr int64_t kChunk = 64;
  const int64_t C = s.channels, seq = s.seq;
  const int64_t chunks = (C + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t c0 = ch * kChunk, len = std::min(kChunk, C - c0);
    float buf[kChunk];
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t t = 0; t < seq; ++t) {
        const int64_t i = b * seq + t;
        const float* g = as_f32(dout + i * C + c0, len, buf);  // (len)
        float* we = dwte + int64_t(tokens[i]) * C + c0;
        float* pe = dwpe + t * C + c0;
#pragma omp simd
        for (int64_t c = 0; c < len; ++c) we[c] += g[c];
#pragma omp simd
        for (int64_t c = 0; c < len; ++c) pe[c] += g[c];
      }
    }
  }
}

#define ST_INSTANTIATE(T)                                                                     \
  template void embedding_forward<T>(T*, const int32_t*, const T*, const T*, EmbeddingShape); \
  template void embedding_backward<T>(float*, float*, const T*, const int32_t*, EmbeddingShape);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
