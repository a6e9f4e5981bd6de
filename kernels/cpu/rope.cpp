// rope.cpp — CPU rotary embeddings: one OpenMP iteration per row; each head's two halves are
// widened, rotated in fp32 and stored (one rounding per element).
#include "kernels/rope.h"

#include "kernels/cpu/vec_util.h"

namespace shardtrain::kernels {
SHARDTRAIN_ISA_BEGIN

namespace {

// sign +1: forward (v'[i] = a c - b s, v'[i+h] = b c + a s); -1: its transpose.
template <class T>
void rotate(T* x, const float* table, RopeShape s, float sign) {
  const int64_t half = s.head_dim / 2;
#pragma omp parallel for schedule(static) if (s.rows > 1)
  for (int64_t r = 0; r < s.rows; ++r) {
    const float* cs = table + (s.pos_offset + r % s.seq) * half * 2;  // (D/2, 2)
    for (int64_t h = 0; h < s.heads; ++h) {
      T* v = x + r * s.row_stride + h * s.head_dim;
      float* buf = cpu::out_f32(v, cpu::row_scratch<T>(s.head_dim, 0));  // (D)
      if constexpr (!std::is_same_v<T, float>) cpu::widen(buf, v, s.head_dim);
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const float a = buf[i], b = buf[half + i], c = cs[2 * i], sn = sign * cs[2 * i + 1];
        buf[i] = a * c - b * sn;
        buf[half + i] = b * c + a * sn;
      }
      cpu::store(v, buf, s.head_dim);
    }
  }
}

}  // namespace

template <class T>
void rope_forward(T* x, const float* table, RopeShape s) {
  rotate(x, table, s, 1.0f);
}

template <class T>
void rope_backward(T* dx, const float* table, RopeShape s) {
  rotate(dx, table, s, -1.0f);
}

#define ST_INSTANTIATE(T)                                     \
  template void rope_forward<T>(T*, const float*, RopeShape); \
  template void rope_backward<T>(T*, const float*, RopeShape);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
