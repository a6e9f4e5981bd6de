// vec_util.h — shared helpers for the CPU kernels: storage <-> fp32 row conversion, a
// vectorisable expf, per-thread scratch rows, and the fixed row partition used by reductions.
//
// Why these exist: the kernels are plain loops left to the compiler's vectoriser (-O3, no
// -ffast-math; compiled once per ISA level, isa.h). dtype.h's scalar conversions branch per
// element and glibc's expf/tanhf are opaque calls, so loops that use them stay scalar. The
// branch-free versions here compute every case and select, which the vectoriser turns into blends;
// widen/narrow are bit-identical to dtype.h (tests/kernels/elementwise_test checks all 65,536
// 16-bit patterns and a dense sample of fp32 ones). Reductions across rows must not depend on the
// OpenMP thread count, so they use a partition of the rows that depends only on the row count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/isa.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::cpu {
SHARDTRAIN_ISA_BEGIN

// ---- Storage -> fp32 -----------------------------------------------------------------------

inline void widen(float* dst, const float* src, int64_t n) {
  if (dst != src) std::memcpy(dst, src, size_t(n) * sizeof(float));
}

inline void widen(float* dst, const BFloat16* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bits_to_float(uint32_t(src[i].bits) << 16);
}

// f16 -> f32 without branches: exponent/mantissa shifted into fp32 position and multiplied by
// 2^112 (rebias 15 -> 127) is exact for normals and subnormals alike; inf/NaN (exponent 31)
// instead get the all-ones fp32 exponent with the mantissa kept, as f16_to_float does.
inline void widen(float* dst, const Half* src, int64_t n) {
  const float k2p112 = bits_to_float(0x77800000u);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t h = src[i].bits;
    uint32_t em = (h & 0x7fffu) << 13;
    uint32_t finite = float_to_bits(bits_to_float(em) * k2p112);
    uint32_t special = em | 0x7f800000u;
    uint32_t mag = em >= (0x7c00u << 13) ? special : finite;
    dst[i] = bits_to_float(mag | ((h & 0x8000u) << 16));
  }
}

// ---- fp32 -> storage (round to nearest even) -----------------------------------------------

inline void narrow(float* dst, const float* src, int64_t n) {
  if (dst != src) std::memcpy(dst, src, size_t(n) * sizeof(float));
}

// float_to_bf16 with the NaN branch turned into a select.
inline void narrow(BFloat16* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u = float_to_bits(src[i]);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x0040u;
    dst[i].bits = uint16_t((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
}

// float_to_f16 without branches (after F. Giesen's float_to_half_fast3_rtne):
//  - subnormal results (|x| < 2^-14): adding 2^-1 lines the f16 subnormal grid up with the
//    last fp32 mantissa bits, so the fp32 adder rounds to nearest even for us;
//  - normal results: rebias, then round the 13 dropped bits to nearest even by integer add
//    (a carry into the exponent is the correct result, up to inf at 65520);
//  - inf/NaN inputs: inf, or a quiet NaN keeping sign and top payload bits as dtype.h does.
inline void narrow(Half* dst, const float* src, int64_t n) {
  const float kDenormMagic = 0.5f;  // bits (127-1) << 23
  const uint32_t kDenormMagicBits = 0x3f000000u;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u = float_to_bits(src[i]);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    uint32_t sub = float_to_bits(bits_to_float(a) + kDenormMagic) - kDenormMagicBits;
    uint32_t norm = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;  // 0xc8000000 = (15-127) << 23
    uint32_t nan = 0x7e00u | ((a >> 13) & 0x3ffu);
    uint32_t r = a < 0x38800000u ? sub : norm;
    r = a >= 0x477ff000u ? 0x7c00u : r;  // rounds to inf (65520 and up)
    r = a > 0x7f800000u ? nan : r;
    dst[i].bits = uint16_t(r | sign);
  }
}

// Widens src into buf and returns buf; for fp32 storage returns src itself (no copy).
template <class T>
inline const float* as_f32(const T* src, int64_t n, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    (void)n;
    (void)buf;
    return src;
  } else {
    widen(buf, src, n);
    return buf;
  }
}

// Where to compute a row that will be stored to dst: dst itself for fp32, else buf (then narrow).
template <class T>
inline float* out_f32(T* dst, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    (void)buf;
    return dst;
  } else {
    return buf;
  }
}

template <class T>
inline void store(T* dst, const float* row, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    (void)dst, (void)row, (void)n;  // the row was computed in dst itself
  } else {
    narrow(dst, row, n);
  }
}

// A per-thread fp32 scratch row (slot 0..3), grown on demand and kept for the next call; OpenMP
// reuses its pool threads, so a training step allocates nothing after the first.
inline float* scratch(int64_t n, int slot = 0) {
  thread_local std::vector<float> bufs[4];
  std::vector<float>& b = bufs[slot];
  if (int64_t(b.size()) < n) b.resize(size_t(n));
  return b.data();
}

// Scratch for widening a row of storage type T: none is needed (nullptr) for fp32 storage,
// whose rows are used in place.
template <class T>
inline float* row_scratch(int64_t n, int slot = 0) {
  if constexpr (std::is_same_v<T, float>) {
    (void)n, (void)slot;
    return nullptr;
  } else {
    return scratch(n, slot);
  }
}

// ---- exp --------------------------------------------------------------------------------------

// expf for any x, branch-free (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial
// for e^r, then scale by 2^n through the exponent bits). Relative error below 1.5 * 2^-24
// (measured over every 7th float in range; elementwise_test asserts 3 * 2^-24). Results below
// FLT_MIN flush to 0 (they only ever feed sums and products dominated by larger terms); above
// ln(FLT_MAX) give inf; NaN propagates.
inline float exp_f32(float x) {
  const float kLo = -87.33654f;  // ln(FLT_MIN)
  const float kHi = 88.72283f;   // ln(FLT_MAX)
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;  // ln 2 split so that n * kLn2Hi is exact for |n| <= 2^8
  const float kLn2Lo = -2.12194440e-4f;
  const float kShift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  float xc = x < kLo ? kLo : x;
  xc = xc > kHi ? kHi : xc;
  float t = xc * kLog2e + kShift;
  int32_t n = int32_t(float_to_bits(t) - float_to_bits(kShift));  // round(xc / ln2)
  float fn = t - kShift;
  float r = (xc - fn * kLn2Hi) - fn * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * (r * r) + r + 1.0f;
  // 2^n as two factors, each a normal float for n in [-126, 128].
  int32_t n1 = n >> 1, n2 = n - n1;
  float s1 = bits_to_float(uint32_t(n1 + 127) << 23);
  float s2 = bits_to_float(uint32_t(n2 + 127) << 23);
  float e = y * s1 * s2;
  e = x < kLo ? 0.0f : e;
  return x > kHi ? bits_to_float(0x7f800000u) : e;
}

// ---- Fixed row partition for reductions ----------------------------------------------------

// Reductions over rows are summed per partition (rows in order), then partitions in order. The
// partition depends only on the row count, so the result is the same for any thread count;
// 32 parts keep 2..32 threads busy while the partial buffers stay small (32 x C floats).
constexpr int64_t kRowParts = 32;

inline int64_t row_parts(int64_t rows) { return std::min<int64_t>(rows, kRowParts); }
inline int64_t part_begin(int64_t p, int64_t parts, int64_t rows) { return rows * p / parts; }

// dst (cols) += sum over p of partial (parts, cols), parts added in order 0, 1, ... for every
// column (the fixed order that makes the result thread-count independent).
inline void add_parts(float* dst, const float* partial, int64_t parts, int64_t cols) {
  if (parts == 0) return;
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t c0 = ch * kChunk, len = std::min(kChunk, cols - c0);
    float total[kChunk];
    for (int64_t c = 0; c < len; ++c) total[c] = partial[c0 + c];
    for (int64_t p = 1; p < parts; ++p) {
      const float* row = partial + p * cols + c0;
      for (int64_t c = 0; c < len; ++c) total[c] += row[c];
    }
    for (int64_t c = 0; c < len; ++c) dst[c0 + c] += total[c];
  }
}

// Runs body(begin, len) over [0, n) in blocks of kBlock elements, blocks spread over the
// OpenMP threads; the block is the unit a 16-bit kernel widens into a stack buffer.
constexpr int64_t kBlock = 1024;
template <class F>
inline void for_blocks(int64_t n, F&& body) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) body(b * kBlock, std::min(kBlock, n - b * kBlock));
}

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels::cpu
