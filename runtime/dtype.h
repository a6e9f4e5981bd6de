// dtype.h — the three floating-point storage types and their conversions.
//
// Compute is fp32 everywhere; bf16 and f16 are storage formats. The conversions are plain
// bit manipulation, written once and marked host+device so the CPU backend, kernels/emu and
// real CUDA kernels round identically: float -> 16-bit is round-to-nearest-even, NaN stays NaN
// (made quiet, sign and top payload bits kept), overflow goes to inf, f16 subnormals are exact.
// They are tested exhaustively over all 65,536 patterns of each type (tests/runtime/dtype_test).
// In device code (nvcc, __CUDA_ARCH__) the non-NaN cases are one hardware `cvt` instruction
// each (cvt.rn.bf16.f32, cvt.rn.f16.f32, cvt.f32.f16: IEEE round-to-nearest-even with the same
// overflow and subnormal results, so the same bits; sm_80 and later), and NaN keeps the
// software path, whose payload rule the hardware's canonical NaN would not follow. The GPU op
// table (tests/kernels/gpu) compares the casts bit for bit with the CPU.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define ST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ST_HOST_DEVICE inline
#endif

namespace shardtrain {

// The floating-point types, plus int32 for token ids.
enum class DType : uint8_t { kF32 = 0, kBF16 = 1, kF16 = 2, kI32 = 3 };

constexpr int64_t dtype_bytes(DType t) { return t == DType::kF32 || t == DType::kI32 ? 4 : 2; }
constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kI32:
      return "i32";
  }
  return "?";
}

// 16-bit storage types. Only the bit pattern is stored; arithmetic happens in fp32.
struct BFloat16 {
  uint16_t bits;
};
struct Half {
  uint16_t bits;
};

ST_HOST_DEVICE uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

ST_HOST_DEVICE float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// ---- bf16: the top half of an fp32 -------------------------------------------------------

ST_HOST_DEVICE float bf16_to_float(BFloat16 h) { return bits_to_float(uint32_t(h.bits) << 16); }

ST_HOST_DEVICE BFloat16 float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: truncate the payload and set the quiet bit
    return BFloat16{uint16_t((u >> 16) | 0x0040u)};
  }
#if defined(__CUDA_ARCH__)
  uint16_t hw;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(hw) : "f"(f));
  return BFloat16{hw};
#else
  // Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate. A carry out of
  // the mantissa bumps the exponent, and the largest finite values round up to inf, as required.
  u += 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{uint16_t(u >> 16)};
#endif
}

// ---- f16: IEEE binary16 (5-bit exponent, bias 15, 10-bit mantissa) -----------------------

ST_HOST_DEVICE float f16_to_float(Half h) {
  uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / NaN
#if defined(__CUDA_ARCH__)
  float hw;
  asm("cvt.f32.f16 %0, %1;" : "=f"(hw) : "h"(h.bits));
  return hw;
#else
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);  // +-0
    // Subnormal man * 2^-24: shift the leading one into the implicit position.
    int e = 1;
    while ((man & 0x400u) == 0) {
      man <<= 1;
      --e;
    }
    man &= 0x3ffu;
    return bits_to_float(sign | (uint32_t(e + 112) << 23) | (man << 13));
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));  // rebias 15 -> 127
#endif
}

ST_HOST_DEVICE Half float_to_f16(float f) {
  uint32_t u = float_to_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return Half{uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu))};  // NaN
#if defined(__CUDA_ARCH__)
  uint16_t hw;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(hw) : "f"(f));
  return Half{hw};
#else
  // 65520 = halfway between 65504 (max finite, odd mantissa) and 65536: ties go up, to inf.
  if (a >= 0x477ff000u) return Half{uint16_t(sign | 0x7c00u)};
  if (a < 0x38800000u) {  // below 2^-14: f16 subnormal (or zero), in units of 2^-24
    if (a <= 0x33000000u) return Half{sign};  // <= 2^-25 (the tie goes to even: zero)
    uint32_t exp = a >> 23;                   // 102 .. 112
    uint32_t man = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - exp;  // value * 2^24 = man * 2^(exp - 126)
    uint32_t r = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;  // may carry into the smallest normal
    return Half{uint16_t(sign | r)};
  }
  uint32_t r = (a - 0x38000000u) >> 13;  // rebias 127 -> 15 and drop 13 mantissa bits
  uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // carry may reach the exponent
  return Half{uint16_t(sign | r)};
#endif
}

// ---- Generic access, for kernels templated on the storage type --------------------------

ST_HOST_DEVICE float to_float(float x) { return x; }
ST_HOST_DEVICE float to_float(BFloat16 x) { return bf16_to_float(x); }
ST_HOST_DEVICE float to_float(Half x) { return f16_to_float(x); }

template <class T>
ST_HOST_DEVICE T from_float(float x);
template <>
ST_HOST_DEVICE float from_float<float>(float x) {
  return x;
}
template <>
ST_HOST_DEVICE BFloat16 from_float<BFloat16>(float x) {
  return float_to_bf16(x);
}
template <>
ST_HOST_DEVICE Half from_float<Half>(float x) {
  return float_to_f16(x);
}

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::kF32;
}
template <>
constexpr DType dtype_of<BFloat16>() {
  return DType::kBF16;
}
template <>
constexpr DType dtype_of<Half>() {
  return DType::kF16;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::kI32;
}

}  // namespace shardtrain
