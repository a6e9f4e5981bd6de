// Exhaustive tests of runtime/dtype.h against a reference written here from the IEEE formats'
// definitions (value = (-1)^s * 2^(e-bias) * 1.m, subnormals, specials), computed in double.
// Every one of the 65,536 patterns of bf16 and f16 is decoded, round-tripped, and used to
// build the rounding cases around it (the exact midpoint to its neighbour and the floats just
// either side of it), so round-to-nearest-even is checked at every boundary of both types.
#include "runtime/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>

namespace shardtrain {
namespace {

struct Format {
  int exp_bits, man_bits;  // bf16: 8, 7; f16: 5, 10
  int bias() const { return (1 << (exp_bits - 1)) - 1; }
  int max_exp() const { return (1 << exp_bits) - 1; }
};
constexpr Format kBF16{8, 7};
constexpr Format kF16{5, 10};

// Reference decode of a 16-bit pattern, in double (exact for both formats).
double ref_decode(Format f, uint16_t p) {
  int sign = p >> 15;
  int e = (p >> f.man_bits) & f.max_exp();
  int m = p & ((1 << f.man_bits) - 1);
  double v;
  if (e == f.max_exp()) {
    v = m == 0 ? INFINITY : NAN;
  } else if (e == 0) {
    v = std::ldexp(double(m), 1 - f.bias() - f.man_bits);
  } else {
    v = std::ldexp(double(m + (1 << f.man_bits)), e - f.bias() - f.man_bits);
  }
  return sign ? -v : v;
}

// Reference round-to-nearest-even of a finite double into the format, returned as a double.
double ref_round(Format f, double x) {
  if (std::isnan(x)) return x;
  double a = std::fabs(x);
  double max_finite = std::ldexp(2.0 - std::ldexp(1.0, -f.man_bits), f.max_exp() - 1 - f.bias());
  // Beyond max_finite + half an ulp of the top binade (and at that tie, since max_finite's
  // mantissa is all ones, i.e. odd) the result is infinity.
  double top_ulp = std::ldexp(1.0, f.max_exp() - 1 - f.bias() - f.man_bits);
  if (a >= max_finite + top_ulp / 2) return std::copysign(INFINITY, x);
  int exp = a == 0 ? 0 : std::ilogb(a);
  int min_exp = 1 - f.bias();
  double quantum = std::ldexp(1.0, std::max(exp, min_exp) - f.man_bits);
  double q = a / quantum;  // exact: a power-of-two scaling
  double r = std::floor(q);
  double frac = q - r;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(r, 2.0) != 0)) r += 1;
  return std::copysign(r * quantum, x);
}

template <class T>
uint16_t bits_of(T t) {
  return t.bits;
}

// Same value (0 and -0 told apart), or both NaN.
void expect_same(double want, float got, const char* what, uint32_t case_bits) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << what << " case 0x" << std::hex << case_bits;
    return;
  }
  ASSERT_EQ(double(got), want) << what << " case 0x" << std::hex << case_bits;
  ASSERT_EQ(std::signbit(got), std::signbit(want)) << what << " case 0x" << std::hex << case_bits;
}

template <class T>
void check_exhaustive(Format f, float (*decode)(T), T (*encode)(float)) {
  int nan_count = 0;
  for (uint32_t p = 0; p < 65536; ++p) {
    T h{uint16_t(p)};
    double want = ref_decode(f, uint16_t(p));
    float got = decode(h);
    expect_same(want, got, "decode", p);
    if (std::isnan(want)) {
      ++nan_count;
      // NaN stays NaN through a round trip, with its sign.
      T back = encode(got);
      EXPECT_TRUE(std::isnan(decode(back))) << std::hex << p;
      EXPECT_EQ(bits_of(back) >> 15, p >> 15) << std::hex << p;
      continue;
    }
    // Every non-NaN pattern round-trips bit-exactly.
    ASSERT_EQ(bits_of(encode(got)), p) << "round trip 0x" << std::hex << p;

    // Rounding around this pattern: midpoint to the next-larger-magnitude neighbour, and the
    // floats just below and above it. Both formats' midpoints are exact in fp32.
    uint16_t next = uint16_t(p + 1);
    if ((p & 0x7fff) == 0x7fff || std::isnan(ref_decode(f, next))) continue;
    double lo = want, hi = ref_decode(f, next);
    if (std::isinf(lo)) continue;
    double mid;
    if (std::isinf(hi)) {  // midpoint between max finite and "2^(emax+1)"
      mid = lo + std::copysign(std::ldexp(1.0, f.max_exp() - 1 - f.bias() - f.man_bits), lo) / 2;
    } else {
      mid = (lo + hi) / 2;
    }
    float m = float(mid);
    ASSERT_EQ(double(m), mid) << "midpoint must be exact in fp32";
    for (float x : {m, std::nextafter(m, 0.0f), std::nextafter(m, m * 2.0f)}) {
      expect_same(ref_round(f, x), decode(encode(x)), "round", float_to_bits(x));
    }
  }
  EXPECT_EQ(nan_count, 2 * ((1 << f.man_bits) - 1));  // exponent all ones, mantissa != 0
}

TEST(DType, BFloat16Exhaustive) { check_exhaustive<BFloat16>(kBF16, bf16_to_float, float_to_bf16); }
TEST(DType, HalfExhaustive) { check_exhaustive<Half>(kF16, f16_to_float, float_to_f16); }

// Random fp32 bit patterns over the whole range (every exponent, NaNs, subnormals) against
// the reference rounding.
TEST(DType, RandomFloatsRoundLikeReference) {
  std::mt19937 rng(12345);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = rng();
    float x = bits_to_float(u);
    expect_same(ref_round(kBF16, x), bf16_to_float(float_to_bf16(x)), "bf16", u);
    expect_same(ref_round(kF16, x), f16_to_float(float_to_f16(x)), "f16", u);
  }
}

TEST(DType, NamedValues) {
  EXPECT_EQ(float_to_f16(65504.0f).bits, 0x7bff);               // max finite
  EXPECT_EQ(float_to_f16(65519.0f).bits, 0x7bff);               // below the tie: stays finite
  EXPECT_EQ(float_to_f16(65520.0f).bits, 0x7c00);               // the tie rounds to even: inf
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -24)).bits, 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25)).bits, 0x0000);  // tie to even: zero
  EXPECT_EQ(float_to_f16(-0.0f).bits, 0x8000);
  EXPECT_EQ(float_to_bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3f808000)).bits, 0x3f80);           // tie, even stays
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3f818000)).bits, 0x3f82);           // tie, odd goes up
  EXPECT_EQ(float_to_bf16(bits_to_float(0x7f7fffff)).bits, 0x7f80);           // max float: inf
  EXPECT_EQ(float_to_bf16(bits_to_float(0x7f800001)).bits & 0x7fc0, 0x7fc0);  // sNaN -> qNaN
}

}  // namespace
}  // namespace shardtrain
