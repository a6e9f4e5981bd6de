// Cross-entropy against a double-precision reference: losses and lse on odd shapes for f32 /
// bf16 / f16 logits, with ignored rows and padding columns (valid_vocab < V); backward against
// central differences of sum_i w * loss_i; in-place backward (dlogits == logits) bit-identical
// to out-of-place; large logits (|x| ~ 1000) staying finite and accurate.
#include "kernels/cross_entropy.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "tests/kernels/test_util.h"

namespace shardtrain::kernels {
namespace {

using shardtrain::testing::finite_difference;
using shardtrain::testing::max_rel_error;
using shardtrain::testing::random_vector;
using shardtrain::testing::to_f64;
using shardtrain::testing::to_storage;

using shardtrain::testing::usize;

using shardtrain::testing::rounding_of;

struct Case {
  int64_t rows, vocab, valid;
};
const Case kCases[] = {{1, 1, 1},     {1, 3, 3},       {2, 17, 17},    {5, 100, 97},
                       {3, 768, 760}, {4, 1000, 1000}, {2, 5000, 4993}};

// Targets in [0, valid), every third row ignored (when there is more than one row).
std::vector<int32_t> make_targets(int64_t rows, int64_t valid, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(usize(rows));
  for (int64_t i = 0; i < rows; ++i) {
    t[usize(i)] = (rows > 1 && i % 3 == 1) ? kIgnoreIndex : int32_t(rng() % uint64_t(valid));
  }
  return t;
}

struct Ref {
  std::vector<double> loss, lse, grad;  // grad: (softmax - onehot) * w, zero where excluded
};

Ref ce_ref(const std::vector<double>& x, const std::vector<int32_t>& targets, int64_t rows,
           int64_t V, int64_t valid, double w) {
  Ref r{std::vector<double>(usize(rows)), std::vector<double>(usize(rows)),
        std::vector<double>(x.size(), 0.0)};
  for (int64_t i = 0; i < rows; ++i) {
    const double* xr = x.data() + i * V;
    double m = -INFINITY;
    for (int64_t c = 0; c < valid; ++c) m = std::max(m, xr[c]);
    double sum = 0;
    for (int64_t c = 0; c < valid; ++c) sum += std::exp(xr[c] - m);
    double lse = m + std::log(sum);
    r.lse[usize(i)] = lse;
    int32_t t = targets[usize(i)];
    if (t < 0) continue;
    r.loss[usize(i)] = lse - xr[t];
    for (int64_t c = 0; c < valid; ++c) {
      r.grad[usize(i * V + c)] = (std::exp(xr[c] - lse) - (c == t ? 1.0 : 0.0)) * w;
    }
  }
  return r;
}

template <class T>
void check_forward_backward(const Case& k, float scale, double tol) {
  const uint64_t seed = 500 + uint64_t(k.rows * 10000 + k.vocab);
  auto logits = to_storage<T>(random_vector(k.rows * k.vocab, seed, scale));
  auto targets = make_targets(k.rows, k.valid, seed + 1);
  const float w = 0.37f;
  Ref want = ce_ref(to_f64(logits), targets, k.rows, k.vocab, k.valid, w);
  std::vector<float> loss(usize(k.rows)), lse(usize(k.rows));
  cross_entropy_forward(loss.data(), lse.data(), logits.data(), targets.data(), {k.rows, k.vocab},
                        k.valid);
  std::vector<T> dlogits(logits.size());
  cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), w,
                         {k.rows, k.vocab}, k.valid);
  const std::string where = "rows=" + std::to_string(k.rows) + " V=" + std::to_string(k.vocab) +
                            " valid=" + std::to_string(k.valid);
  EXPECT_LT(max_rel_error(loss, want.loss), tol) << where;
  EXPECT_LT(max_rel_error(lse, want.lse), tol) << where;
  EXPECT_LT(max_rel_error(to_f64(dlogits), want.grad), tol + rounding_of<T>()) << where;
  for (int64_t i = 0; i < k.rows; ++i) {
    if (targets[usize(i)] < 0) {
      EXPECT_EQ(loss[usize(i)], 0.0f) << where << " row " << i;
    }
    for (int64_t c = 0; c < k.vocab; ++c) {  // ignored rows and padding: exactly zero
      if (targets[usize(i)] < 0 || c >= k.valid) {
        ASSERT_EQ(to_float(dlogits[usize(i * k.vocab + c)]), 0.0f) << where;
      }
    }
  }
}

// fp32: sums of <= 5000 exponentials (exp_f32 3 ulp each) in 8-16 lane partial sums are good
// to ~1e-6 relative, which log(sum) turns into ~1e-6 absolute on losses of order log V; the
// gradient is exp(x - lse) * w with lse's rounding, ~10 ulp. 1e-5 relative to the largest
// value bounds all three. The 16-bit cases see the same rounded logits as the reference and
// add only the gradient's output rounding.
TEST(CrossEntropy, F32) {
  for (const Case& k : kCases) check_forward_backward<float>(k, 3.0f, 1e-5);
}
TEST(CrossEntropy, BF16) {
  for (const Case& k : kCases) check_forward_backward<BFloat16>(k, 3.0f, 1e-5);
}
TEST(CrossEntropy, F16) {
  for (const Case& k : kCases) check_forward_backward<Half>(k, 3.0f, 1e-5);
}

// Large logits, two kinds of row: N(0, 1000) (overflows any unshifted exp; softmax near
// one-hot) and 1000 + N(0, 2) (a spread softmax around a large offset). The gradient
// exp(x - lse) inherits lse's rounding, half an ulp of ~1000 = 3.1e-5 absolute in the
// exponent, so 1e-4 relative; losses stay at the fp32 tolerance since (max - x_t) + log(sum)
// is formed from well-conditioned parts, and lse is relative to its own large size.
TEST(CrossEntropy, LargeLogitsStayFinite) {
  const Case k{4, 300, 290};
  auto logits = random_vector(k.rows * k.vocab, 77, 1000.0f);
  auto shifted = random_vector(2 * k.vocab, 79, 2.0f);
  for (size_t i = 0; i < shifted.size(); ++i) logits[usize(2 * k.vocab) + i] = 1000.0f + shifted[i];
  logits[5] = 1000.0f;  // row 0 also has a single dominant logit
  auto targets = make_targets(k.rows, k.valid, 78);
  targets[0] = 5;
  targets[2] = 17;
  Ref want = ce_ref(to_f64(logits), targets, k.rows, k.vocab, k.valid, 1.0);
  std::vector<float> loss(usize(k.rows)), lse(usize(k.rows)), d(logits.size());
  cross_entropy_forward(loss.data(), lse.data(), logits.data(), targets.data(), {k.rows, k.vocab},
                        k.valid);
  cross_entropy_backward(d.data(), logits.data(), lse.data(), targets.data(), 1.0f,
                         {k.rows, k.vocab}, k.valid);
  for (float v : loss) EXPECT_TRUE(std::isfinite(v));
  for (float v : d) ASSERT_TRUE(std::isfinite(v));
  EXPECT_LT(max_rel_error(loss, want.loss), 1e-5);
  EXPECT_LT(max_rel_error(lse, want.lse), 1e-6);
  EXPECT_LT(max_rel_error(d, want.grad), 1e-4);
}

// Backward against central differences of the double reference's sum_i w * loss_i: checks the
// softmax gradient, the target term, ignored rows and padding columns (both have zero
// derivative) all at once.
template <class T>
void check_finite_differences(const Case& k) {
  const uint64_t seed = 600 + uint64_t(k.rows * 100 + k.vocab);
  auto logits = to_storage<T>(random_vector(k.rows * k.vocab, seed, 2.0f));
  auto targets = make_targets(k.rows, k.valid, seed + 1);
  const float w = 0.25f;
  auto loss = [&](const std::vector<double>& x) {
    Ref r = ce_ref(x, targets, k.rows, k.vocab, k.valid, w);
    double s = 0;
    for (double l : r.loss) s += w * l;
    return s;
  };
  auto want = finite_difference(loss, to_f64(logits));
  std::vector<float> l(usize(k.rows)), lse(usize(k.rows));
  cross_entropy_forward(l.data(), lse.data(), logits.data(), targets.data(), {k.rows, k.vocab},
                        k.valid);
  std::vector<T> d(logits.size());
  cross_entropy_backward(d.data(), logits.data(), lse.data(), targets.data(), w, {k.rows, k.vocab},
                         k.valid);
  // fp32 gradient ~10 ulp (see above); central differences ~1e-9.
  EXPECT_LT(max_rel_error(to_f64(d), want), 1e-5 + rounding_of<T>())
      << "rows=" << k.rows << " V=" << k.vocab;
}
TEST(CrossEntropy, BackwardFiniteDifferences) {
  for (const Case& k : {Case{1, 1, 1}, Case{2, 17, 17}, Case{4, 9, 6}}) {
    check_finite_differences<float>(k);
    check_finite_differences<BFloat16>(k);
    check_finite_differences<Half>(k);
  }
}

// dlogits aliasing logits must give exactly the out-of-place result.
template <class T>
void check_in_place() {
  const Case k{7, 1030, 1027};
  auto logits = to_storage<T>(random_vector(k.rows * k.vocab, 88, 4.0f));
  auto targets = make_targets(k.rows, k.valid, 89);
  std::vector<float> loss(usize(k.rows)), lse(usize(k.rows));
  cross_entropy_forward(loss.data(), lse.data(), logits.data(), targets.data(), {k.rows, k.vocab},
                        k.valid);
  std::vector<T> separate(logits.size());
  cross_entropy_backward(separate.data(), logits.data(), lse.data(), targets.data(), 0.5f,
                         {k.rows, k.vocab}, k.valid);
  std::vector<T> in_place = logits;
  cross_entropy_backward(in_place.data(), in_place.data(), lse.data(), targets.data(), 0.5f,
                         {k.rows, k.vocab}, k.valid);
  EXPECT_EQ(std::memcmp(separate.data(), in_place.data(), sizeof(T) * separate.size()), 0);
}
TEST(CrossEntropy, InPlace) {
  check_in_place<float>();
  check_in_place<BFloat16>();
  check_in_place<Half>();
}

TEST(CrossEntropy, BitwiseIndependentOfThreadCount) {
  const Case k{37, 257, 250};
  auto logits = random_vector(k.rows * k.vocab, 91, 3.0f);
  auto targets = make_targets(k.rows, k.valid, 92);
  auto run = [&](int threads) {
    int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> out(usize(2 * k.rows) + logits.size());
    cross_entropy_forward(out.data(), out.data() + k.rows, logits.data(), targets.data(),
                          {k.rows, k.vocab}, k.valid);
    cross_entropy_backward(out.data() + 2 * k.rows, logits.data(), out.data() + k.rows,
                           targets.data(), 1.0f, {k.rows, k.vocab}, k.valid);
    omp_set_num_threads(saved);
    return out;
  };
  auto one = run(1);
  for (int threads : {2, 3}) {
    auto many = run(threads);
    EXPECT_EQ(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)), 0) << threads;
  }
}

}  // namespace
}  // namespace shardtrain::kernels
