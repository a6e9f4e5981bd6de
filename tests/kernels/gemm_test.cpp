// GEMM against a naive double-precision reference: every transpose combination, batches,
// bias, alpha/beta accumulation, and f32 / bf16 / f16 storage.
#include "kernels/gemm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "tests/kernels/test_util.h"

namespace shardtrain::kernels {
namespace {

using shardtrain::testing::max_rel_error;
using shardtrain::testing::random_vector;
using shardtrain::testing::to_f64;
using shardtrain::testing::to_storage;

struct Case {
  int64_t m, n, k, batch;
  bool ta, tb, bias;
  float alpha, beta;
};

const Case kCases[] = {
    {1, 1, 1, 1, false, false, false, 1, 0},
    {7, 5, 3, 1, false, false, true, 1, 0},
    {33, 17, 65, 1, false, true, false, 1, 0},
    {33, 17, 65, 1, true, false, false, 1, 1},
    {16, 48, 64, 1, true, true, false, 0.5f, 0},
    {64, 192, 64, 3, false, false, false, 1, 0},
    {100, 1, 37, 2, false, true, false, 2, 1},
    {1, 256, 80, 1, false, false, true, 1, 0.5f},
    // A^T B without AVX-512 copies out the smaller operand (kernels/cpu/gemm.cpp): B here
    // (n (k + m) < k m, C = the transpose of C^T, beta added in the transpose back; ragged
    // 8 x 8 tiles), A in the next one.
    {70, 9, 40, 1, true, false, false, 0.5f, 0.25f},
    {70, 9, 40, 1, true, false, false, 1, 0},
    {9, 70, 40, 1, true, false, false, 2, 1},
};

template <class T>
void check(const Case& c, double tol) {
  const int64_t na = c.batch * c.m * c.k, nb = c.batch * c.k * c.n, nc = c.batch * c.m * c.n;
  auto a = to_storage<T>(random_vector(na, 1));
  auto b = to_storage<T>(random_vector(nb, 2));
  auto bias = to_storage<T>(random_vector(c.n, 3));
  std::vector<float> c0 = random_vector(nc, 4);
  std::vector<double> da = to_f64(a), db = to_f64(b), dbias = to_f64(bias);
  std::vector<double> want(static_cast<size_t>(nc));
  for (int64_t i = 0; i < c.batch; ++i) {
    for (int64_t r = 0; r < c.m; ++r) {
      for (int64_t col = 0; col < c.n; ++col) {
        double acc = 0;
        for (int64_t p = 0; p < c.k; ++p) {
          double av = c.ta ? da[size_t(i * c.m * c.k + p * c.m + r)]
                           : da[size_t(i * c.m * c.k + r * c.k + p)];
          double bv = c.tb ? db[size_t(i * c.k * c.n + col * c.k + p)]
                           : db[size_t(i * c.k * c.n + p * c.n + col)];
          acc += av * bv;
        }
        size_t o = size_t(i * c.m * c.n + r * c.n + col);
        want[o] = c.alpha * acc + c.beta * c0[o] + (c.bias ? dbias[size_t(col)] : 0.0);
      }
    }
  }
  GemmDesc d;
  d.shape = {c.m, c.n, c.k, c.batch};
  d.ab_dtype = dtype_of<T>();
  d.c_dtype = DType::kF32;
  d.trans_a = c.ta;
  d.trans_b = c.tb;
  d.alpha = c.alpha;
  d.beta = c.beta;
  std::vector<float> out = c0;
  gemm(d, a.data(), b.data(), out.data(), c.bias ? bias.data() : nullptr);
  EXPECT_LT(max_rel_error(out, want), tol) << "f32 out, m=" << c.m << " n=" << c.n << " k=" << c.k;

  if (dtype_of<T>() != DType::kF32) {  // also with C in the 16-bit type
    d.c_dtype = dtype_of<T>();
    auto out16 = to_storage<T>(c0);
    std::vector<double> want16 = want;
    if (c.beta != 0) {  // the reference must see the same rounded C
      auto c16 = to_f64(out16);
      for (size_t o = 0; o < want.size(); ++o) want16[o] += c.beta * (c16[o] - c0[o]);
    }
    gemm(d, a.data(), b.data(), out16.data(), c.bias ? bias.data() : nullptr);
    // Output rounding dominates: half an ulp of the 16-bit type relative to the largest value
    // (2^-8 bf16, 2^-11 f16), plus the accumulation error below.
    double round = dtype_of<T>() == DType::kBF16 ? 1.0 / 256 : 1.0 / 2048;
    EXPECT_LT(max_rel_error(to_f64(out16), want16), round + tol) << "16-bit out";
  }
}

// fp32: K products accumulated in fp32, error ~ K * 2^-24 relative to the largest magnitude
// in the worst case; 1e-5 covers K <= 80 with margin. The 16-bit inputs are exact in fp32 and
// their products are exact too, so the same bound holds (oneDNN accumulates in fp32).
TEST(Gemm, F32) {
  for (const Case& c : kCases) check<float>(c, 1e-5);
}
TEST(Gemm, BF16) {
  for (const Case& c : kCases) check<BFloat16>(c, 1e-5);
}
TEST(Gemm, F16) {
  for (const Case& c : kCases) check<Half>(c, 1e-5);
}

// Batched with gaps between the items (stride > item size): the gaps of A and B hold NaN,
// which must never reach C, and the gaps of C must come back untouched — also on the path
// that widens 16-bit operands to fp32 (always f16; bf16 where oneDNN has no bf16 matmul, e.g.
// under ONEDNN_MAX_CPU_ISA=AVX2). Same bound as above.
template <class T>
void check_strided(DType c_dtype) {
  const int64_t m = 9, n = 6, k = 5, batch = 3, gap = 7;
  const int64_t sa = m * k + gap, sb = k * n + gap, sc = m * n + gap;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> a32(size_t((batch - 1) * sa + m * k), nan);
  std::vector<float> b32(size_t((batch - 1) * sb + k * n), nan);
  std::vector<float> av = random_vector(batch * m * k, 5), bv = random_vector(batch * k * n, 6);
  for (int64_t i = 0; i < batch; ++i) {
    std::copy_n(av.begin() + i * m * k, m * k, a32.begin() + i * sa);
    std::copy_n(bv.begin() + i * k * n, k * n, b32.begin() + i * sb);
  }
  auto a = to_storage<T>(a32);
  auto b = to_storage<T>(b32);
  std::vector<double> da = to_f64(a), db = to_f64(b);
  const float kSentinel = 96.0f;  // exact in bf16 and f16
  std::vector<float> c32(size_t((batch - 1) * sc + m * n), kSentinel);
  GemmDesc d;
  d.shape = {m, n, k, batch};
  d.ab_dtype = dtype_of<T>();
  d.c_dtype = c_dtype;
  d.stride_a = sa;
  d.stride_b = sb;
  d.stride_c = sc;
  std::vector<double> got(c32.size());
  if (c_dtype == DType::kF32) {
    gemm(d, a.data(), b.data(), c32.data());
    got.assign(c32.begin(), c32.end());
  } else {
    auto c16 = to_storage<T>(c32);
    gemm(d, a.data(), b.data(), c16.data());
    got = to_f64(c16);
  }
  const double tol = 1e-5 + (c_dtype == DType::kF32          ? 0.0
                             : dtype_of<T>() == DType::kBF16 ? 1.0 / 256
                                                             : 1.0 / 2048);
  std::vector<double> want, have;
  for (int64_t i = 0; i < batch; ++i) {
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t col = 0; col < n; ++col) {
        double acc = 0;
        for (int64_t p = 0; p < k; ++p) {
          acc += da[size_t(i * sa + r * k + p)] * db[size_t(i * sb + p * n + col)];
        }
        want.push_back(acc);
        have.push_back(got[size_t(i * sc + r * n + col)]);
      }
    }
    if (i + 1 < batch) {
      for (int64_t g = m * n; g < sc; ++g) {
        ASSERT_EQ(got[size_t(i * sc + g)], kSentinel) << "gap of C written, item " << i;
      }
    }
  }
  EXPECT_LT(max_rel_error(have, want), tol);
}

TEST(Gemm, StridedBatched) {
  check_strided<float>(DType::kF32);
  check_strided<BFloat16>(DType::kF32);
  check_strided<BFloat16>(DType::kBF16);
  check_strided<Half>(DType::kF32);
  check_strided<Half>(DType::kF16);
}

}  // namespace
}  // namespace shardtrain::kernels
