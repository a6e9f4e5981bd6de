// rope.h — rotary position embeddings (Llama), Hugging Face's convention.
//
// A head vector v of D elements is rotated pairwise, element i with element i + D/2 (HF's
// rotate_half), by the angle p * inv_freq[i] of its position p:
//   v'[i] = v[i] cos - v[i + D/2] sin,   v'[i + D/2] = v[i + D/2] cos + v[i] sin,
//   inv_freq[i] = theta^(-2i/D) for i < D/2 (optionally rescaled, Llama 3.1's rule below).
// The cos/sin come from a table every backend reads (rope_table: computed once on the host in
// fp32 from HF's formula, uploaded by GPU backends), so all backends rotate by the same bits.
// Contract: fp32 arithmetic whatever the storage type, one rounding per stored element; in
// place; deterministic (no reductions).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/isa.h"

namespace shardtrain::kernels {

// Llama 3.1's frequency rescaling (HF's rope_type "llama3"); factor 0 = none.
struct RopeScaling {
  float factor = 0.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  float original_max_position = 8192.0f;
};

// inv_freq as HF computes it in fp32: 1 / theta^(arange(0, D, 2) / D), then Llama 3.1's rule:
// wavelengths 2 pi / f shorter than original / high_freq_factor keep f, longer than
// original / low_freq_factor get f / factor, and in between a linear blend by
// smooth = (original / wavelength - low) / (high - low).
inline std::vector<float> rope_inv_freq(int64_t head_dim, float theta, const RopeScaling& sc) {
  std::vector<float> f(size_t(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    f[size_t(i)] = 1.0f / std::pow(theta, float(2 * i) / float(head_dim));
  }
  if (sc.factor > 0.0f) {
    const float low_wavelen = sc.original_max_position / sc.low_freq_factor;
    const float high_wavelen = sc.original_max_position / sc.high_freq_factor;
    for (float& x : f) {
      const float wavelen = 2.0f * float(M_PI) / x;
      if (wavelen > low_wavelen) {
        x = x / sc.factor;
      } else if (wavelen >= high_wavelen) {
        const float smooth = (sc.original_max_position / wavelen - sc.low_freq_factor) /
                             (sc.high_freq_factor - sc.low_freq_factor);
        x = (1.0f - smooth) * x / sc.factor + smooth * x;
      }
    }
  }
  return f;
}

// The (positions, D/2, 2) table of (cos, sin) of p * inv_freq[i] (the product in fp32, as HF's
// matmul of inv_freq by the positions; cos and sin of that fp32 angle).
inline std::vector<float> rope_table(int64_t positions, int64_t head_dim, float theta,
                                     const RopeScaling& sc) {
  const std::vector<float> f = rope_inv_freq(head_dim, theta, sc);
  const int64_t half = head_dim / 2;
  std::vector<float> t(size_t(positions * half * 2));
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(p) * f[size_t(i)];
      t[size_t((p * half + i) * 2)] = std::cos(angle);
      t[size_t((p * half + i) * 2 + 1)] = std::sin(angle);
    }
  }
  return t;
}

// Which elements rotate: `rows` rows (B*T, position = pos_offset + row % seq) of `row_stride`
// elements; in each, heads 0 .. heads-1 of head_dim elements from the row's start (Llama's
// q | k | v row: q and k heads rotate, v does not).
struct RopeShape {
  int64_t rows;
  int64_t seq;
  int64_t row_stride;
  int64_t heads;
  int64_t head_dim;  // even
  int64_t pos_offset = 0;
};

SHARDTRAIN_ISA_BEGIN
// x rotated in place by the table (rope_table with >= pos_offset + seq positions).
template <class T>
void rope_forward(T* x, const float* table, RopeShape s);
// The gradient through the rotation: dx rotated back (the transpose), in place.
template <class T>
void rope_backward(T* dx, const float* table, RopeShape s);
SHARDTRAIN_ISA_END

}  // namespace shardtrain::kernels
