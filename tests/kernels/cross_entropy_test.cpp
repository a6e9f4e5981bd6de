// Cross-entropy against a double-precision reference: losses and lse on odd shapes for f32 /
// bf16 / f16 logits, with ignored rows and padding columns (valid_vocab < V); backward against
// central differences of sum_i w * loss_i; in-place backward (dlogits == logits) bit-identical
// to out-of-place; large logits (|x| ~ 1000) staying finite and accurate; and the vocab-parallel
// pieces (per-slice max, target logit, sum of exponentials, backward) against double references
// and, combined over the slices, against the full loss and gradient.
#include "kernels/cross_entropy.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

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

// ---- Vocab-parallel pieces -------------------------------------------------------------------

// The logits of `rows` x V (V real columns) split into `parts` slices of width ceil(Vp / parts),
// Vp = V padded up to a multiple of `parts`: the layout of a tensor-parallel group.
struct VocabSplit {
  int64_t rows, V, parts;
  int64_t width() const { return (V + parts - 1) / parts; }
  int64_t begin(int64_t p) const { return p * width(); }
  int64_t valid(int64_t p) const { return std::clamp<int64_t>(V - begin(p), 0, width()); }
};

template <class T>
std::vector<T> slice_of(const std::vector<T>& full, const VocabSplit& k, int64_t p) {
  const int64_t W = k.width();
  std::vector<T> out(usize(k.rows * W), from_float<T>(-5.0f));  // padding columns: junk
  for (int64_t i = 0; i < k.rows; ++i) {
    for (int64_t j = 0; j < k.valid(p); ++j) {
      out[usize(i * W + j)] = full[usize(i * k.V + k.begin(p) + j)];
    }
  }
  return out;
}

// Each piece against a double-precision reference on its own slice, then the Megatron
// combination (max over slices, sums rescaled to it, target logits summed) against the full
// reference loss and gradient.
template <class T>
void check_vocab_parallel(const VocabSplit& k) {
  const uint64_t seed = 700 + uint64_t(k.rows * 1000 + k.V * 10 + k.parts);
  auto logits = to_storage<T>(random_vector(k.rows * k.V, seed, 3.0f));
  auto targets = make_targets(k.rows, k.V, seed + 1);
  const float w = 0.37f;
  const int64_t N = k.rows, W = k.width();
  const std::string where = "rows=" + std::to_string(N) + " V=" + std::to_string(k.V) +
                            " parts=" + std::to_string(k.parts);
  std::vector<double> gmax(usize(N), -INFINITY), gsum(usize(N), 0.0), gtgt(usize(N), 0.0);
  std::vector<std::vector<T>> slices;
  for (int64_t p = 0; p < k.parts; ++p) {
    slices.push_back(slice_of(logits, k, p));
    const auto& sl = slices.back();
    const auto xd = to_f64(sl);
    std::vector<double> mx(usize(N)), tg(usize(N));
    cross_entropy_partial_max(mx.data(), tg.data(), sl.data(), targets.data(), k.begin(p), {N, W},
                              k.valid(p));
    for (int64_t i = 0; i < N; ++i) {
      double want_m = -INFINITY, want_t = 0.0;
      for (int64_t j = 0; j < k.valid(p); ++j) want_m = std::max(want_m, xd[usize(i * W + j)]);
      const int64_t t = targets[usize(i)] - k.begin(p);
      if (targets[usize(i)] >= 0 && t >= 0 && t < k.valid(p)) want_t = xd[usize(i * W + t)];
      EXPECT_EQ(mx[usize(i)], want_m) << where;  // the max and the logit are exact
      EXPECT_EQ(tg[usize(i)], want_t) << where;
      gmax[usize(i)] = std::max(gmax[usize(i)], mx[usize(i)]);
      gtgt[usize(i)] += tg[usize(i)];
    }
  }
  // Sums of exponentials about the global max: against double exp of the double difference.
  // The only differences: float(x - m) rounds the exponent (|x - m| < 32 here: <= 2^-20
  // absolute, so ~2^-20 relative in exp), exp and the additions (< 1e-13). Bound 2e-6.
  for (int64_t p = 0; p < k.parts; ++p) {
    const auto xd = to_f64(slices[usize(p)]);
    std::vector<double> sum(usize(N));
    cross_entropy_partial_sumexp(sum.data(), slices[usize(p)].data(), gmax.data(), {N, W},
                                 k.valid(p));
    for (int64_t i = 0; i < N; ++i) {
      double want = 0;
      for (int64_t j = 0; j < k.valid(p); ++j)
        want += std::exp(xd[usize(i * W + j)] - gmax[usize(i)]);
      EXPECT_LE(std::fabs(sum[usize(i)] - want), 2e-6 * want) << where;
      gsum[usize(i)] += sum[usize(i)];
    }
  }
  // The combination against the full reference: loss and lse to the fp32 tolerance of the
  // fused kernel's test (1e-5), here mostly the rounding of lse to float.
  Ref want = ce_ref(to_f64(logits), targets, N, k.V, k.V, w);
  std::vector<float> lse(usize(N)), loss(usize(N));
  for (int64_t i = 0; i < N; ++i) {
    lse[usize(i)] = float(gmax[usize(i)] + std::log(gsum[usize(i)]));
    loss[usize(i)] = targets[usize(i)] < 0 ? 0.0f : float(double(lse[usize(i)]) - gtgt[usize(i)]);
  }
  EXPECT_LT(max_rel_error(lse, want.lse), 1e-5) << where;
  EXPECT_LT(max_rel_error(loss, want.loss, 1.0), 1e-5) << where;
  // Backward per slice (in place, as the model runs it), reassembled: (softmax - onehot) * w;
  // padding columns and ignored rows exactly 0.
  std::vector<double> grad(usize(N * k.V));
  for (int64_t p = 0; p < k.parts; ++p) {
    std::vector<T>& sl = slices[usize(p)];
    cross_entropy_backward_slice(sl.data(), sl.data(), lse.data(), targets.data(), k.begin(p), w,
                                 {N, W}, k.valid(p));
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t j = 0; j < W; ++j) {
        const float g = to_float(sl[usize(i * W + j)]);
        if (j >= k.valid(p) || targets[usize(i)] < 0) {
          ASSERT_EQ(g, 0.0f) << where;
        } else {
          grad[usize(i * k.V + k.begin(p) + j)] = g;
        }
      }
    }
  }
  // exp(x - lse) with lse rounded to float: ~10 ulp as the fused backward's test, 1e-5.
  EXPECT_LT(max_rel_error(grad, want.grad), 1e-5 + rounding_of<T>()) << where;
}
TEST(CrossEntropyVocabParallel, MatchesFullReference) {
  for (const VocabSplit& k : {VocabSplit{1, 1, 1}, VocabSplit{3, 17, 2}, VocabSplit{5, 100, 3},
                              VocabSplit{4, 1001, 4}, VocabSplit{2, 5, 4}, VocabSplit{7, 768, 2}}) {
    check_vocab_parallel<float>(k);
    check_vocab_parallel<BFloat16>(k);
    check_vocab_parallel<Half>(k);
  }
}

// A zero maximum keeps the sign of the first maximal column, as the model's loop did (std::max
// keeps its left argument on a tie): -0 before +0 gives -0, +0 before -0 gives +0.
TEST(CrossEntropyVocabParallel, MaxKeepsTheFirstOfEqualValues) {
  const std::vector<float> logits = {-1.0f, -0.0f, 0.0f, -2.0f, 0.0f, -0.0f};  // 2 rows of 3
  const std::vector<int32_t> targets = {kIgnoreIndex, kIgnoreIndex};
  std::vector<double> mx(2), tg(2);
  cross_entropy_partial_max(mx.data(), tg.data(), logits.data(), targets.data(), 0, {2, 3}, 3);
  EXPECT_TRUE(std::signbit(mx[0]));
  EXPECT_FALSE(std::signbit(mx[1]));
  EXPECT_EQ(tg[0], 0.0);
  // No real column: -inf, and nothing is read.
  cross_entropy_partial_max(mx.data(), tg.data(), logits.data(), targets.data(), 0, {2, 3}, 0);
  EXPECT_EQ(mx[0], -INFINITY);
}

}  // namespace
}  // namespace shardtrain::kernels
