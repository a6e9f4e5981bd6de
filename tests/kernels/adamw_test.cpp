// AdamW against two references: the formula of REFERENCE.md in double precision over several
// steps (weight decay on and off, grad_scale != 1), and an op-by-op fp32 emulation of torch
// 1.13's single-tensor AdamW, which the kernel must match bit for bit. Also checks the
// compute-dtype copy (f32 / bf16 / f16) and a null compute_param, and that the segmented update
// is one adamw_update per segment, bit for bit.
#include "kernels/adamw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "tests/kernels/test_util.h"

namespace shardtrain::kernels {
namespace {

using shardtrain::testing::max_rel_error;
using shardtrain::testing::random_vector;

using shardtrain::testing::usize;

// Sizes around the kernel's 1024-element block and the vector widths.
const int64_t kSizes[] = {1, 3, 17, 100, 1023, 1025, 3001};

struct State {
  std::vector<float> p, m, v;
};

State initial_state(int64_t n, uint64_t seed) {
  return {random_vector(n, seed), std::vector<float>(usize(n), 0.0f),
          std::vector<float>(usize(n), 0.0f)};
}

// ---- Reference 1: REFERENCE.md's formula in double --------------------------------------------
//   t += 1; p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   m_hat = m/(1-b1^t); v_hat = v/(1-b2^t); p -= lr * m_hat / (sqrt(v_hat) + eps)
struct StateF64 {
  std::vector<double> p, m, v;
};

void adamw_ref(StateF64& s, const std::vector<float>& grad, const AdamWParams& hp, double scale) {
  const double lr = hp.lr, b1 = hp.beta1, b2 = hp.beta2, eps = hp.eps, wd = hp.weight_decay;
  const double t = double(hp.step);
  for (size_t i = 0; i < s.p.size(); ++i) {
    const double g = double(grad[i]) * scale;
    s.p[i] -= lr * wd * s.p[i];
    s.m[i] = b1 * s.m[i] + (1 - b1) * g;
    s.v[i] = b2 * s.v[i] + (1 - b2) * g * g;
    const double m_hat = s.m[i] / (1 - std::pow(b1, t));
    const double v_hat = s.v[i] / (1 - std::pow(b2, t));
    s.p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
  }
}

std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

void check_against_formula(int64_t n, float weight_decay, float grad_scale) {
  const uint64_t seed = 1000 + uint64_t(n);
  State s = initial_state(n, seed);
  StateF64 ref{widen(s.p), widen(s.m), widen(s.v)};
  // A large lr makes the update visible against the parameter itself (|p| ~ 1).
  AdamWParams hp{1e-2f, 0.9f, 0.95f, 1e-8f, weight_decay, 0};
  for (int step = 1; step <= 5; ++step) {
    hp.step = step;
    auto grad = random_vector(n, seed + uint64_t(step), 0.1f);
    adamw_update<float>(s.p.data(), grad.data(), s.m.data(), s.v.data(), nullptr, n, hp,
                        grad_scale);
    adamw_ref(ref, grad, hp, grad_scale);
  }
  // fp32 state rounds every op once: the moments are good to a few ulp (~3e-7 relative), and p
  // collects ~2 roundings of ulp(|p|) per step plus the update's few-ulp error (the update is
  // ~lr, 1% of p): 5 steps stay under 1e-6 of max|p|. A wrong formula (bias correction, eps
  // placement, decay order) moves p by ~1e-4 or more and fails.
  const std::string where = "n=" + std::to_string(n) + " wd=" + std::to_string(weight_decay) +
                            " scale=" + std::to_string(grad_scale);
  EXPECT_LT(max_rel_error(s.p, ref.p), 1e-6) << where;
  EXPECT_LT(max_rel_error(s.m, ref.m), 1e-6) << where;
  EXPECT_LT(max_rel_error(s.v, ref.v), 1e-6) << where;
}

TEST(AdamW, MatchesFormulaOverSteps) {
  for (int64_t n : kSizes) {
    check_against_formula(n, 0.0f, 1.0f);
    check_against_formula(n, 0.1f, 1.0f);
    check_against_formula(n, 0.1f, 0.3f);  // unscaling / clipping folded into the update
  }
}

// ---- Reference 2: torch 1.13, op by op, in fp32 -------------------------------------------------
// Each helper is one correctly rounded fp32 operation whose result passes through a volatile,
// so the compiler cannot fuse a multiply into a following add (GCC contracts a*b+c into an fma
// by default in C++) or otherwise rearrange across them.
float f_mul(float a, float b) {
  volatile float r = a * b;
  return r;
}
float f_add(float a, float b) {
  volatile float r = a + b;
  return r;
}
float f_div(float a, float b) {
  volatile float r = a / b;
  return r;
}
float f_sqrt(float a) {
  volatile float r = std::sqrt(a);
  return r;
}

void torch_adamw(State& s, const std::vector<float>& grad, const AdamWParams& hp, float scale) {
  // Python scalars (double), converted to float where ATen takes a Scalar for a float tensor.
  const double lr = hp.lr, wd = hp.weight_decay, b1 = hp.beta1, b2 = hp.beta2;
  const double step = double(hp.step);
  const double bias_correction1 = 1 - std::pow(b1, step);
  const double bias_correction2 = 1 - std::pow(b2, step);
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  volatile double lr_wd = lr * wd;  // Python rounds the product; no fused 1 - lr*wd here
  const double decay = 1 - lr_wd;
  for (size_t i = 0; i < s.p.size(); ++i) {
    const float g = f_mul(grad[i], scale);
    s.p[i] = f_mul(s.p[i], float(decay));                                         // param.mul_
    s.m[i] = std::fma(g, float(1 - b1), f_mul(s.m[i], float(b1)));                // mul_, add_
    s.v[i] = f_add(f_mul(s.v[i], float(b2)), f_mul(f_mul(float(1 - b2), g), g));  // addcmul_
    const float denom = f_add(f_div(f_sqrt(s.v[i]), float(bias_correction2_sqrt)), hp.eps);
    s.p[i] = f_add(s.p[i], f_div(f_mul(float(-step_size), s.m[i]), denom));  // addcdiv_
  }
}

template <class T>
void check_torch_order(int64_t n, const AdamWParams& base, float grad_scale, int64_t first_step,
                       bool warm_moments) {
  const uint64_t seed = 2000 + uint64_t(n);
  State s = initial_state(n, seed);
  if (warm_moments) {  // a run resumed late: nonzero moments, v >= 0
    s.m = random_vector(n, seed + 100, 0.01f);
    s.v = random_vector(n, seed + 101, 1e-4f);
    for (float& x : s.v) x = x * x;
  }
  State want = s;
  std::vector<T> compute(usize(n));
  AdamWParams hp = base;
  for (int64_t step = first_step; step < first_step + 3; ++step) {
    hp.step = step;
    auto grad = random_vector(n, seed + uint64_t(step), 0.05f);
    adamw_update<T>(s.p.data(), grad.data(), s.m.data(), s.v.data(), compute.data(), n, hp,
                    grad_scale);
    torch_adamw(want, grad, hp, grad_scale);
  }
  EXPECT_EQ(std::memcmp(s.p.data(), want.p.data(), usize(n) * 4), 0) << "p, n=" << n;
  EXPECT_EQ(std::memcmp(s.m.data(), want.m.data(), usize(n) * 4), 0) << "m, n=" << n;
  EXPECT_EQ(std::memcmp(s.v.data(), want.v.data(), usize(n) * 4), 0) << "v, n=" << n;
  // The compute-dtype copy is the updated master weight, rounded once.
  for (int64_t i = 0; i < n; ++i) {
    T want_c = from_float<T>(s.p[usize(i)]);
    ASSERT_EQ(std::memcmp(&compute[usize(i)], &want_c, sizeof(T)), 0) << "compute, i=" << i;
  }
}

TEST(AdamW, BitExactTorchOrder) {
  const AdamWParams gpt2{6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0};
  const AdamWParams no_decay{6e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, 0};
  for (int64_t n : kSizes) {
    check_torch_order<float>(n, gpt2, 1.0f, 1, false);
    check_torch_order<BFloat16>(n, gpt2, 0.3f, 1, false);
    check_torch_order<Half>(n, no_decay, 1.0f, 1, false);
    check_torch_order<float>(n, no_decay, 0.7f, 1000, true);
    check_torch_order<BFloat16>(n, gpt2, 1.0f, 5000, true);
  }
}

TEST(AdamW, NullComputeParam) {
  const int64_t n = 1500;
  State a = initial_state(n, 3000), b = a;
  auto grad = random_vector(n, 3001);
  const AdamWParams hp{1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1};
  std::vector<Half> compute(usize(n));
  adamw_update<Half>(a.p.data(), grad.data(), a.m.data(), a.v.data(), nullptr, n, hp, 1.0f);
  adamw_update<Half>(b.p.data(), grad.data(), b.m.data(), b.v.data(), compute.data(), n, hp, 1.0f);
  EXPECT_EQ(a.p, b.p);  // the same update with or without the copy
  EXPECT_EQ(a.m, b.m);
  EXPECT_EQ(a.v, b.v);
}

// adamw_update_segments: bitwise one adamw_update per segment (each with its own weight decay),
// over steps; elements in gaps and after the last segment are untouched, in param, m, v and
// the compute copy. Segments: contiguous ones, a gap, length-1 ones, an empty one.
template <class T>
void check_segments(bool with_copy) {
  const int64_t n = 3001;
  const std::vector<AdamWSegment> segs = {
      {0, 700, 0.1f},     {700, 701, 0.0f},   {701, 1500, 0.01f}, {1503, 1504, 0.1f},
      {1505, 1505, 0.1f}, {1506, 1507, 0.0f}, {1600, 2999, 0.05f}};
  State a = initial_state(n, 4000);
  a.m = random_vector(n, 4001, 0.01f);
  State b = a;
  const T sentinel = from_float<T>(-3.0f);
  std::vector<T> ca(usize(n), sentinel), cb(usize(n), sentinel);
  AdamWParams hp{1e-3f, 0.9f, 0.95f, 1e-8f, 0.7f, 0};  // weight_decay 0.7: replaced
  for (int64_t step = 1; step <= 3; ++step) {
    hp.step = step;
    const auto grad = random_vector(n, 4010 + uint64_t(step), 0.05f);
    adamw_update_segments<T>(a.p.data(), grad.data(), a.m.data(), a.v.data(),
                             with_copy ? ca.data() : nullptr, segs.data(), int64_t(segs.size()), hp,
                             0.8f);
    for (const AdamWSegment& sg : segs) {
      AdamWParams hs = hp;
      hs.weight_decay = sg.weight_decay;
      adamw_update<T>(b.p.data() + sg.begin, grad.data() + sg.begin, b.m.data() + sg.begin,
                      b.v.data() + sg.begin, with_copy ? cb.data() + sg.begin : nullptr,
                      sg.end - sg.begin, hs, 0.8f);
    }
  }
  EXPECT_EQ(std::memcmp(a.p.data(), b.p.data(), usize(n) * 4), 0);
  EXPECT_EQ(std::memcmp(a.m.data(), b.m.data(), usize(n) * 4), 0);
  EXPECT_EQ(std::memcmp(a.v.data(), b.v.data(), usize(n) * 4), 0);
  EXPECT_EQ(std::memcmp(ca.data(), cb.data(), usize(n) * sizeof(T)), 0);
  const State init = initial_state(n, 4000);
  for (int64_t i : {int64_t(1500), int64_t(1502), int64_t(1504), int64_t(1599), int64_t(3000)}) {
    EXPECT_EQ(a.p[usize(i)], init.p[usize(i)]) << i;
    EXPECT_EQ(a.v[usize(i)], 0.0f) << i;
    EXPECT_EQ(std::memcmp(&ca[usize(i)], &sentinel, sizeof(T)), 0) << i;
  }
}

TEST(AdamW, SegmentsEqualPerSegmentCallsBitwise) {
  check_segments<float>(false);
  check_segments<float>(true);
  check_segments<BFloat16>(true);
  check_segments<Half>(true);
  check_segments<Half>(false);
}

}  // namespace
}  // namespace shardtrain::kernels
