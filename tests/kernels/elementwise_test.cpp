// Elementwise ops against double-precision references: GELU (forward, and backward against
// central differences), residual add (also in place), bias gradient (finite differences,
// accumulation, thread-count independence), bias add, fp32 accumulation, the sum of squares,
// cast (bit-exact against dtype.h over every 16-bit pattern and a dense fp32 sample) and scale.
// Also bounds the CPU backend's exp_f32, which GELU and cross-entropy rely on.
#include "kernels/elementwise.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/vec_util.h"
#include "tests/kernels/test_util.h"

namespace shardtrain::kernels {
namespace {

using shardtrain::testing::finite_difference;
using shardtrain::testing::max_rel_error;
using shardtrain::testing::random_vector;
using shardtrain::testing::to_f64;
using shardtrain::testing::to_storage;

// Sizes around the 1024-element block and the 8/16-wide vectors: tails of every length.
const int64_t kSizes[] = {1, 3, 17, 100, 768, 1023, 1025, 3001};

using shardtrain::testing::rounding_of;

double gelu_ref(double x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

using shardtrain::testing::usize;
uint32_t bits_of(float f) { return float_to_bits(f); }

// ---- exp_f32 -------------------------------------------------------------------------------

TEST(ExpF32, AccuracyOverTheRange) {
  // Every 997th float in [-87.3, 88.7] plus a fine sweep near 0. Cephes' polynomial is good to
  // about 1 ulp; the range reduction and the rounded product add ~1 more: bound 3 ulp (2^-22
  // relative), the figure the kernels' tolerances assume.
  double worst = 0;
  auto check = [&](float x) {
    double want = std::exp(double(x));
    double got = cpu::exp_f32(x);
    worst = std::max(worst, std::fabs(got - want) / want);
  };
  for (uint32_t u = bits_of(-87.3f); u >= 0x80000000u; u -= 997) check(bits_to_float(u));
  for (uint32_t u = 0; u <= bits_of(88.7f); u += 997) check(bits_to_float(u));
  for (int i = -100000; i <= 100000; ++i) check(float(i) * 1e-5f);
  EXPECT_LT(worst, std::ldexp(3.0, -24));
}

TEST(ExpF32, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(cpu::exp_f32(0.0f), 1.0f);
  EXPECT_EQ(cpu::exp_f32(-inf), 0.0f);
  EXPECT_EQ(cpu::exp_f32(-1000.0f), 0.0f);
  EXPECT_EQ(cpu::exp_f32(inf), inf);
  EXPECT_EQ(cpu::exp_f32(100.0f), inf);
  EXPECT_TRUE(std::isnan(cpu::exp_f32(std::nanf(""))));
  float top = cpu::exp_f32(88.72f);  // just below ln(FLT_MAX): finite, and close
  EXPECT_TRUE(std::isfinite(top));
  EXPECT_NEAR(top / std::exp(double(88.72f)), 1.0, 3e-7);  // the 3-ulp bound above
}

// ---- GELU ------------------------------------------------------------------------------------

template <class T>
void check_gelu_forward() {
  for (int64_t n : kSizes) {
    auto x = to_storage<T>(random_vector(n, 11 + uint64_t(n), 3.0f));
    std::vector<T> out(usize(n));
    gelu_forward(out.data(), x.data(), n);
    std::vector<double> want(usize(n));
    auto xd = to_f64(x);
    for (int64_t i = 0; i < n; ++i) want[size_t(i)] = gelu_ref(xd[size_t(i)]);
    // fp32: exp_f32 (3 ulp) and four rounded operations, ~7 ulp = 4e-7 of the largest
    // output; 1e-6 leaves margin. 16-bit storage adds its output rounding.
    EXPECT_LT(max_rel_error(to_f64(out), want), 1e-6 + rounding_of<T>()) << "n=" << n;
  }
}
TEST(Gelu, ForwardF32) { check_gelu_forward<float>(); }
TEST(Gelu, ForwardBF16) { check_gelu_forward<BFloat16>(); }
TEST(Gelu, ForwardF16) { check_gelu_forward<Half>(); }

TEST(Gelu, ForwardTails) {
  // Far tails: -0 (not NaN) below, identity above; the tanh form rounds the same way.
  std::vector<float> x = {-1e30f, -200.0f, -12.0f, 12.0f, 200.0f, 1e30f}, out(x.size());
  gelu_forward(out.data(), x.data(), int64_t(x.size()));
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_EQ(out[3], 12.0f);
  EXPECT_EQ(out[4], 200.0f);
  EXPECT_EQ(out[5], 1e30f);
}

template <class T>
void check_gelu_backward(int64_t n, bool in_place) {
  auto x = to_storage<T>(random_vector(n, 21 + uint64_t(n), 2.5f));
  auto g = to_storage<T>(random_vector(n, 22 + uint64_t(n)));
  auto gd = to_f64(g);
  // Loss sum(gelu(x) * G): its gradient is G * gelu'(x), the kernel's dx for dout = G.
  auto loss = [&](const std::vector<double>& xv) {
    double s = 0;
    for (size_t i = 0; i < xv.size(); ++i) s += gelu_ref(xv[i]) * gd[i];
    return s;
  };
  auto want = finite_difference(loss, to_f64(x));
  std::vector<T> dx = g;  // in place: dx aliases dout
  std::vector<T> dout = g;
  gelu_backward(dx.data(), x.data(), in_place ? dx.data() : dout.data(), n);
  // fp32: exp_f32 and ~10 rounded operations, each relative to a term no larger than
  // |dout| * max|gelu'| ~ the largest output: 1e-5. Central differences are good to ~1e-9.
  EXPECT_LT(max_rel_error(to_f64(dx), want), 1e-5 + rounding_of<T>()) << "n=" << n;
}
TEST(Gelu, BackwardF32) {
  for (int64_t n : {1, 3, 17, 100}) check_gelu_backward<float>(n, false);
  check_gelu_backward<float>(100, true);
}
TEST(Gelu, BackwardBF16) {
  for (int64_t n : {1, 17, 100}) check_gelu_backward<BFloat16>(n, false);
  check_gelu_backward<BFloat16>(100, true);
}
TEST(Gelu, BackwardF16) {
  for (int64_t n : {1, 17, 100}) check_gelu_backward<Half>(n, false);
  check_gelu_backward<Half>(100, true);
}

TEST(Gelu, BackwardLargeInputsStayFinite) {
  std::vector<float> x = {-1e30f, -300.0f, -20.0f, 20.0f, 300.0f, 1e30f};
  std::vector<float> dout(x.size(), 1.0f), dx(x.size());
  gelu_backward(dx.data(), x.data(), dout.data(), int64_t(x.size()));
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(dx[i], 0.0f) << i;
  for (size_t i = 3; i < 6; ++i) EXPECT_EQ(dx[i], 1.0f) << i;
}

// ---- residual add and scale --------------------------------------------------------------

template <class T>
void check_residual_and_scale() {
  for (int64_t n : kSizes) {
    auto a = to_storage<T>(random_vector(n, 31 + uint64_t(n)));
    auto b = to_storage<T>(random_vector(n, 32 + uint64_t(n)));
    auto ad = to_f64(a), bd = to_f64(b);
    std::vector<double> sum(usize(n)), scaled(usize(n));
    for (size_t i = 0; i < size_t(n); ++i) {
      sum[i] = ad[i] + bd[i];
      scaled[i] = ad[i] * 0.37;
    }
    std::vector<T> out(usize(n));
    residual_add(out.data(), a.data(), b.data(), n);
    // fp32: one rounding of the exact sum, 2^-24 relative; 16-bit: plus the output rounding.
    double tol = 1e-7 + rounding_of<T>();
    EXPECT_LT(max_rel_error(to_f64(out), sum), tol) << "n=" << n;
    std::vector<T> inplace = a;  // out aliases a
    residual_add(inplace.data(), inplace.data(), b.data(), n);
    EXPECT_EQ(std::memcmp(inplace.data(), out.data(), sizeof(T) * size_t(n)), 0);
    std::vector<T> x = a;
    scale(x.data(), 0.37f, n);
    // 0.37f differs from 0.37 by 2^-25 relative, the product rounds once: 1e-7 covers both.
    EXPECT_LT(max_rel_error(to_f64(x), scaled), tol) << "n=" << n;
  }
}
TEST(ResidualAdd, F32) { check_residual_and_scale<float>(); }
TEST(ResidualAdd, BF16) { check_residual_and_scale<BFloat16>(); }
TEST(ResidualAdd, F16) { check_residual_and_scale<Half>(); }

// ---- bias_backward ---------------------------------------------------------------------------

template <class T>
void check_bias_backward(int64_t rows, int64_t cols) {
  auto g = to_storage<T>(random_vector(rows * cols, 41 + uint64_t(rows * cols)));
  auto gd = to_f64(g);
  std::vector<float> dbias = random_vector(cols, 42);  // accumulates onto what is there
  std::vector<double> want(usize(cols));
  for (int64_t c = 0; c < cols; ++c) {
    want[size_t(c)] = dbias[size_t(c)];
    for (int64_t r = 0; r < rows; ++r) want[size_t(c)] += gd[size_t(r * cols + c)];
  }
  bias_backward(dbias.data(), g.data(), rows, cols);
  // Sums of up to `rows` fp32 terms: error <= rows * 2^-24 * sum|g|; with ~sqrt(rows)-sized
  // sums of N(0,1) terms, 1e-5 of the largest column covers rows <= 300 with margin. The inputs
  // are exact in fp32, so 16-bit storage needs no extra allowance.
  EXPECT_LT(max_rel_error(dbias, want), 1e-5) << rows << "x" << cols;
}
TEST(BiasBackward, MatchesColumnSums) {
  for (auto [r, c] : {std::pair<int64_t, int64_t>{1, 1}, {1, 17}, {3, 100}, {33, 3}, {300, 768}}) {
    check_bias_backward<float>(r, c);
    check_bias_backward<BFloat16>(r, c);
    check_bias_backward<Half>(r, c);
  }
}

TEST(BiasBackward, FiniteDifferences) {
  // Loss sum_rc (x_rc + b_c) G_rc: d/db is the column sum of G, which the kernel must produce.
  const int64_t rows = 5, cols = 7;
  auto x = to_f64(random_vector(rows * cols, 51));
  auto g = random_vector(rows * cols, 52);
  auto gd = to_f64(g);
  auto loss = [&](const std::vector<double>& b) {
    double s = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        s += (x[size_t(r * cols + c)] + b[size_t(c)]) * gd[size_t(r * cols + c)];
    return s;
  };
  auto want = finite_difference(loss, to_f64(random_vector(cols, 53)));
  std::vector<float> dbias(size_t(cols), 0.0f);
  bias_backward(dbias.data(), g.data(), rows, cols);
  EXPECT_LT(max_rel_error(dbias, want), 1e-6);  // 5-term fp32 sums vs ~1e-9 FD error
}

template <class T>
std::vector<float> bias_backward_with_threads(int threads, const std::vector<T>& g, int64_t rows,
                                              int64_t cols) {
  int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  std::vector<float> dbias(size_t(cols), 0.5f);
  bias_backward(dbias.data(), g.data(), rows, cols);
  omp_set_num_threads(saved);
  return dbias;
}

TEST(BiasBackward, BitwiseIndependentOfThreadCount) {
  const int64_t rows = 517, cols = 300;
  auto g = random_vector(rows * cols, 61);
  auto g16 = to_storage<BFloat16>(g);
  auto one = bias_backward_with_threads(1, g, rows, cols);
  auto one16 = bias_backward_with_threads(1, g16, rows, cols);
  for (int threads : {2, 3}) {
    auto many = bias_backward_with_threads(threads, g, rows, cols);
    auto many16 = bias_backward_with_threads(threads, g16, rows, cols);
    EXPECT_EQ(std::memcmp(one.data(), many.data(), one.size() * 4), 0) << threads;
    EXPECT_EQ(std::memcmp(one16.data(), many16.data(), one16.size() * 4), 0) << threads;
  }
}

// ---- add_bias, add_f32, sum_squares -----------------------------------------------------------

template <class T>
void check_add_bias(int64_t rows, int64_t cols) {
  const uint64_t seed = 81 + uint64_t(rows * 1000 + cols);
  auto x = to_storage<T>(random_vector(rows * cols, seed));
  auto bias = to_storage<T>(random_vector(cols, seed + 1, 0.5f));
  auto xd = to_f64(x), bd = to_f64(bias);
  std::vector<double> want(usize(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      want[usize(r * cols + c)] = xd[usize(r * cols + c)] + bd[usize(c)];
    }
  }
  std::vector<T> got = x;
  add_bias(got.data(), bias.data(), rows, cols);
  // fp32: one rounding of an exact sum, 2^-24 relative; 16-bit: plus the output rounding.
  EXPECT_LT(max_rel_error(to_f64(got), want), 1e-7 + rounding_of<T>()) << rows << "x" << cols;
  // And bitwise the scalar definition: to_float + to_float, rounded once to T.
  for (int64_t i = 0; i < rows * cols; ++i) {
    const T one = from_float<T>(to_float(x[usize(i)]) + to_float(bias[usize(i % cols)]));
    ASSERT_EQ(std::memcmp(&one, &got[usize(i)], sizeof(T)), 0) << i;
  }
}
TEST(AddBias, MatchesDoubleReference) {
  for (auto [r, c] : {std::pair<int64_t, int64_t>{1, 1}, {1, 17}, {3, 100}, {33, 3}, {7, 768}}) {
    check_add_bias<float>(r, c);
    check_add_bias<BFloat16>(r, c);
    check_add_bias<Half>(r, c);
  }
}

TEST(AddF32, MatchesDoubleReference) {
  for (int64_t n : kSizes) {
    auto acc = random_vector(n, 91 + uint64_t(n)), x = random_vector(n, 92 + uint64_t(n));
    std::vector<double> want(usize(n));
    for (size_t i = 0; i < want.size(); ++i) want[i] = double(acc[i]) + double(x[i]);
    add_f32(acc.data(), x.data(), n);
    EXPECT_LT(max_rel_error(acc, want), 1e-7) << "n=" << n;  // one rounding per element
  }
}

TEST(SumSquares, MatchesDoubleReference) {
  EXPECT_EQ(sum_squares(nullptr, 0), 0.0);
  for (int64_t n : kSizes) {
    // Magnitudes over ~10 binades, as gradients have them.
    auto x = random_vector(n, 95 + uint64_t(n)), spread = random_vector(n, 96 + uint64_t(n), 2.0f);
    for (size_t i = 0; i < x.size(); ++i) x[i] *= std::exp2(spread[i]);
    // Reference: the squares (exact in double) summed in long double (64-bit mantissa).
    long double want = 0;
    for (float v : x) want += (long double)(v) * (long double)(v);
    const double got = sum_squares(x.data(), n);
    // n - 1 double additions of positive terms: <= (n - 1) 2^-53 relative, plus the reference's
    // own n 2^-64.
    EXPECT_LE(std::fabs((long double)(got)-want), want * (double(n + 1) * std::ldexp(1.0, -53)))
        << "n=" << n;
  }
  // Small integers: every partial sum is exact, so the result is too.
  std::vector<float> ints(1000);
  for (size_t i = 0; i < ints.size(); ++i) ints[i] = float(int(i % 37) - 18);
  double want = 0;
  for (float v : ints) want += double(v) * double(v);
  EXPECT_EQ(sum_squares(ints.data(), int64_t(ints.size())), want);
}

// The order elementwise.h defines, written out as plain loops: 2^16-element chunks, 16 lanes
// each (lane j takes i = j mod 16 in index order), lanes then chunks added in order.
double sum_squares_by_definition(const float* x, int64_t n) {
  const int64_t chunk = int64_t(1) << 16;
  double total = 0.0;
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    double lane[16] = {};
    for (int64_t i = c0; i < std::min(n, c0 + chunk); ++i) {
      lane[(i - c0) % 16] += double(x[i]) * double(x[i]);
    }
    double sum = 0.0;
    for (double l : lane) sum += l;
    total += sum;
  }
  return total;
}

TEST(SumSquares, BitwiseTheDefinedOrderAtAnyThreadCountAndAddress) {
  // Three chunks and a ragged tail; magnitudes over ~10 binades so that the order shows in the
  // last bits (a sequential sum of these differs).
  const int64_t n = 3 * (int64_t(1) << 16) + 1234 + 7;
  auto x = random_vector(n + 1, 97), spread = random_vector(n + 1, 98, 2.0f);
  for (size_t i = 0; i < x.size(); ++i) x[i] *= std::exp2(spread[i]);
  const int saved = omp_get_max_threads();
  for (int64_t offset : {0, 1}) {  // x + 1: not 64-byte aligned, the same order
    const double want = sum_squares_by_definition(x.data() + offset, n);
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      EXPECT_EQ(sum_squares(x.data() + offset, n), want)
          << "offset " << offset << ", " << threads << " threads";
    }
  }
  omp_set_num_threads(saved);
}

// ---- cast ------------------------------------------------------------------------------------

std::vector<uint16_t> all_patterns() {
  std::vector<uint16_t> v(65536);
  for (uint32_t i = 0; i < 65536; ++i) v[i] = uint16_t(i);
  return v;
}

template <class T>
std::vector<T> from_bits(const std::vector<uint16_t>& bits) {
  std::vector<T> v(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) v[i].bits = bits[i];
  return v;
}

// Widening: every 16-bit pattern, NaNs included, bit-for-bit as dtype.h converts it.
template <class T>
void check_widen_all() {
  auto in = from_bits<T>(all_patterns());
  std::vector<float> out(in.size());
  cast(out.data(), in.data(), int64_t(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(bits_of(out[i]), bits_of(to_float(in[i]))) << "pattern " << i;
  }
}
TEST(Cast, WidenBF16AllPatterns) { check_widen_all<BFloat16>(); }
TEST(Cast, WidenF16AllPatterns) { check_widen_all<Half>(); }

// Narrowing: every combination of sign, exponent and top 11 mantissa bits (2^20), each with
// the low 12 bits at the rounding-critical values (0, just below / at / above the bf16 and f16
// halfway points, all ones) — covering every exponent, tie, carry, subnormal, inf and NaN case.
template <class T>
void check_narrow_sample() {
  const uint32_t lows[] = {0x000, 0x001, 0x7ff, 0x800, 0x801, 0xfff};
  std::vector<float> in;
  in.reserve((1u << 20) * 6);
  for (uint32_t hi = 0; hi < (1u << 20); ++hi) {
    for (uint32_t lo : lows) in.push_back(bits_to_float((hi << 12) | lo));
  }
  // bf16's halfway point is bit 15, inside the "hi" part: the sample above covers it when the
  // bits below are 0 (exact tie) or not.
  std::vector<T> out(in.size());
  cast(out.data(), in.data(), int64_t(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(out[i].bits, from_float<T>(in[i]).bits) << std::hex << "input 0x" << bits_of(in[i]);
  }
}
TEST(Cast, NarrowToBF16MatchesDtype) { check_narrow_sample<BFloat16>(); }
TEST(Cast, NarrowToF16MatchesDtype) { check_narrow_sample<Half>(); }

template <class In, class Out>
void check_cross_cast() {
  auto in = from_bits<In>(all_patterns());
  std::vector<Out> out(in.size());
  cast(out.data(), in.data(), int64_t(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    // Same type: a plain copy. Otherwise the exact widening, then one rounding.
    uint16_t want = std::is_same_v<In, Out> ? in[i].bits : from_float<Out>(to_float(in[i])).bits;
    ASSERT_EQ(out[i].bits, want) << "pattern " << i;
  }
}
TEST(Cast, SixteenBitPairs) {
  check_cross_cast<BFloat16, Half>();
  check_cross_cast<Half, BFloat16>();
  check_cross_cast<BFloat16, BFloat16>();
  check_cross_cast<Half, Half>();
}

TEST(Cast, F32ToF32IsACopy) {
  auto in = random_vector(3001, 71);
  std::vector<float> out(in.size());
  cast(out.data(), in.data(), int64_t(in.size()));
  EXPECT_EQ(in, out);
  cast(out.data(), out.data(), int64_t(out.size()));  // in place is a no-op
  EXPECT_EQ(in, out);
}

}  // namespace
}  // namespace shardtrain::kernels
