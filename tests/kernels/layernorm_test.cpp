// LayerNorm against a double-precision reference: forward (out, mean, rstd) on odd and GPT-2
// shapes for f32 / bf16 / f16 storage; backward (dx accumulated, dweight, dbias accumulated)
// against central differences of sum(out * G); bitwise independence of the thread count; and
// the fused residual add + forward equal to the two calls bit for bit.
#include "kernels/layernorm.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "kernels/elementwise.h"
#include "tests/kernels/test_util.h"

namespace shardtrain::kernels {
namespace {

using shardtrain::testing::finite_difference;
using shardtrain::testing::max_rel_error;
using shardtrain::testing::random_vector;
using shardtrain::testing::to_f64;
using shardtrain::testing::to_storage;

constexpr float kEps = 1e-5f;  // GPT-2's LayerNorm eps

using shardtrain::testing::usize;

using shardtrain::testing::rounding_of;

struct Ref {
  std::vector<double> out, mean, rstd;
};

Ref layernorm_ref(const std::vector<double>& x, const std::vector<double>& w,
                  const std::vector<double>& b, int64_t rows, int64_t C) {
  Ref r{std::vector<double>(x.size()), std::vector<double>(usize(rows)),
        std::vector<double>(usize(rows))};
  for (int64_t i = 0; i < rows; ++i) {
    const double* xr = x.data() + i * C;
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += xr[c];
    m /= double(C);
    for (int64_t c = 0; c < C; ++c) v += (xr[c] - m) * (xr[c] - m);
    double rs = 1.0 / std::sqrt(v / double(C) + double(kEps));
    for (int64_t c = 0; c < C; ++c) {
      r.out[usize(i * C + c)] = (xr[c] - m) * rs * w[usize(c)] + b[usize(c)];
    }
    r.mean[usize(i)] = m;
    r.rstd[usize(i)] = rs;
  }
  return r;
}

struct Inputs {
  std::vector<float> x, w, b;
};

// x with a nonzero mean (the two-pass variance must not lose it), gains around 1.
Inputs make_inputs(int64_t rows, int64_t C, uint64_t seed) {
  Inputs in{random_vector(rows * C, seed, 2.0f), random_vector(C, seed + 1, 0.3f),
            random_vector(C, seed + 2, 0.5f)};
  for (float& v : in.x) v += 0.7f;
  for (float& v : in.w) v += 1.0f;
  return in;
}

const std::pair<int64_t, int64_t> kShapes[] = {{1, 1},   {1, 3},   {2, 17},  {5, 100},
                                               {3, 768}, {33, 64}, {4, 1000}};

template <class T>
void check_forward(int64_t rows, int64_t C) {
  Inputs in = make_inputs(rows, C, 100 + uint64_t(rows * 1000 + C));
  auto x = to_storage<T>(in.x), w = to_storage<T>(in.w), b = to_storage<T>(in.b);
  Ref want = layernorm_ref(to_f64(x), to_f64(w), to_f64(b), rows, C);
  std::vector<T> out(usize(rows * C));
  std::vector<float> mean(usize(rows)), rstd(usize(rows));
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), {rows, C},
                    kEps);
  // fp32 statistics: sums of C <= 1000 terms in 8-16 lane partial sums carry < 100 * 2^-24
  // ~ 6e-6 relative error in the worst case (typically far less); rstd inherits half of the
  // variance's. 1e-5 bounds mean, rstd and the normalised output. The inputs are the same
  // rounded values in both, so 16-bit storage only adds its output rounding.
  const std::string where = "rows=" + std::to_string(rows) + " C=" + std::to_string(C);
  EXPECT_LT(max_rel_error(to_f64(out), want.out), 1e-5 + rounding_of<T>()) << where;
  EXPECT_LT(max_rel_error(mean, want.mean), 1e-5) << where;
  EXPECT_LT(max_rel_error(rstd, want.rstd), 1e-5) << where;
}
TEST(LayerNorm, ForwardF32) {
  for (auto [r, c] : kShapes) check_forward<float>(r, c);
}
TEST(LayerNorm, ForwardBF16) {
  for (auto [r, c] : kShapes) check_forward<BFloat16>(r, c);
}
TEST(LayerNorm, ForwardF16) {
  for (auto [r, c] : kShapes) check_forward<Half>(r, c);
}

// Gradients of L = sum(out * G) with respect to x, w and b by central differences of the double
// reference, against the kernel's backward (dout = G) accumulated onto nonzero initial values.
template <class T>
void check_backward(int64_t rows, int64_t C) {
  const uint64_t seed = 200 + uint64_t(rows * 1000 + C);
  Inputs in = make_inputs(rows, C, seed);
  auto x = to_storage<T>(in.x), w = to_storage<T>(in.w), b = to_storage<T>(in.b);
  auto g = to_storage<T>(random_vector(rows * C, seed + 3));
  auto xd = to_f64(x), wd = to_f64(w), bd = to_f64(b), gd = to_f64(g);
  auto loss = [&](const std::vector<double>& xv, const std::vector<double>& wv,
                  const std::vector<double>& bv) {
    Ref r = layernorm_ref(xv, wv, bv, rows, C);
    double s = 0;
    for (size_t i = 0; i < r.out.size(); ++i) s += r.out[i] * gd[i];
    return s;
  };
  auto want_dx = finite_difference([&](const auto& v) { return loss(v, wd, bd); }, xd);
  auto want_dw = finite_difference([&](const auto& v) { return loss(xd, v, bd); }, wd);
  auto want_db = finite_difference([&](const auto& v) { return loss(xd, wd, v); }, bd);

  std::vector<T> out(usize(rows * C));
  std::vector<float> mean(usize(rows)), rstd(usize(rows));
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), {rows, C},
                    kEps);
  auto dx = to_storage<T>(random_vector(rows * C, seed + 4));  // accumulated onto
  std::vector<float> dw = random_vector(C, seed + 5), db = random_vector(C, seed + 6);
  auto dx0 = to_f64(dx);
  for (size_t i = 0; i < dx0.size(); ++i) want_dx[i] += dx0[i];
  for (size_t i = 0; i < dw.size(); ++i) {
    want_dw[i] += dw[i];
    want_db[i] += db[i];
  }
  layernorm_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), mean.data(),
                     rstd.data(), {rows, C});
  // fp32: the saved statistics and the row means are good to ~1e-6 relative (see forward); dx
  // subtracts terms of the size of |g w rstd|, so its error is relative to that scale, which
  // the initial N(0,1) values do not exceed by much: 2e-5. Central differences are good to
  // ~1e-9. 16-bit: dx is rounded once into T; dweight and dbias stay fp32.
  const std::string where = "rows=" + std::to_string(rows) + " C=" + std::to_string(C);
  EXPECT_LT(max_rel_error(to_f64(dx), want_dx), 2e-5 + rounding_of<T>()) << where;
  EXPECT_LT(max_rel_error(dw, want_dw), 2e-5) << where;
  EXPECT_LT(max_rel_error(db, want_db), 2e-5) << where;
}
TEST(LayerNorm, BackwardF32) {
  for (auto [r, c] : {std::pair<int64_t, int64_t>{1, 1}, {1, 3}, {2, 17}, {5, 8}, {3, 33}}) {
    check_backward<float>(r, c);
  }
}
TEST(LayerNorm, BackwardBF16) {
  for (auto [r, c] : {std::pair<int64_t, int64_t>{1, 3}, {2, 17}, {3, 33}}) {
    check_backward<BFloat16>(r, c);
  }
}
TEST(LayerNorm, BackwardF16) {
  for (auto [r, c] : {std::pair<int64_t, int64_t>{1, 3}, {2, 17}, {3, 33}}) {
    check_backward<Half>(r, c);
  }
}

template <class T>
struct Run {
  std::vector<T> out, dx;
  std::vector<float> mean, rstd, dw, db;
};

template <class T>
Run<T> run_with_threads(int threads, int64_t rows, int64_t C) {
  return shardtrain::testing::with_threads(threads, [&] {
    Inputs in = make_inputs(rows, C, 300);
    auto x = to_storage<T>(in.x), w = to_storage<T>(in.w), b = to_storage<T>(in.b);
    auto g = to_storage<T>(random_vector(rows * C, 301));
    Run<T> r{std::vector<T>(usize(rows * C)),     to_storage<T>(random_vector(rows * C, 302)),
             std::vector<float>(usize(rows)),     std::vector<float>(usize(rows)),
             std::vector<float>(usize(C), 0.25f), std::vector<float>(usize(C), -0.5f)};
    layernorm_forward(r.out.data(), r.mean.data(), r.rstd.data(), x.data(), w.data(), b.data(),
                      {rows, C}, kEps);
    layernorm_backward(r.dx.data(), r.dw.data(), r.db.data(), g.data(), x.data(), w.data(),
                       r.mean.data(), r.rstd.data(), {rows, C});
    return r;
  });
}

using shardtrain::testing::same_bits;

template <class T>
void check_thread_independence() {
  const int64_t rows = 517, C = 100;  // rows not a multiple of the partition count
  Run<T> one = run_with_threads<T>(1, rows, C);
  for (int threads : {2, 3}) {
    Run<T> many = run_with_threads<T>(threads, rows, C);
    EXPECT_TRUE(same_bits(one.out, many.out)) << threads;
    EXPECT_TRUE(same_bits(one.mean, many.mean)) << threads;
    EXPECT_TRUE(same_bits(one.rstd, many.rstd)) << threads;
    EXPECT_TRUE(same_bits(one.dx, many.dx)) << threads;
    EXPECT_TRUE(same_bits(one.dw, many.dw)) << threads;
    EXPECT_TRUE(same_bits(one.db, many.db)) << threads;
  }
}
TEST(LayerNorm, BitwiseIndependentOfThreadCount) {
  check_thread_independence<float>();
  check_thread_independence<BFloat16>();
}

// residual_layernorm_forward is bitwise residual_add followed by layernorm_forward of the
// stored res, also when res overwrites a (alias 1) or b (alias 2).
template <class T>
void check_residual_fused(int64_t rows, int64_t C, int alias) {
  const uint64_t seed = 400 + uint64_t(rows * 1000 + C);
  Inputs in = make_inputs(rows, C, seed);
  const auto a = to_storage<T>(in.x), b = to_storage<T>(random_vector(rows * C, seed + 3, 0.5f));
  const auto w = to_storage<T>(in.w), bias = to_storage<T>(in.b);
  std::vector<T> res_want(a.size()), out_want(a.size());
  std::vector<float> mean_want(usize(rows)), rstd_want(usize(rows));
  residual_add(res_want.data(), a.data(), b.data(), rows * C);
  layernorm_forward(out_want.data(), mean_want.data(), rstd_want.data(), res_want.data(), w.data(),
                    bias.data(), {rows, C}, kEps);
  std::vector<T> a2 = a, b2 = b, res(a.size()), out(a.size());
  std::vector<float> mean(usize(rows)), rstd(usize(rows));
  T* r = alias == 1 ? a2.data() : (alias == 2 ? b2.data() : res.data());
  residual_layernorm_forward(r, out.data(), mean.data(), rstd.data(), a2.data(), b2.data(),
                             w.data(), bias.data(), {rows, C}, kEps);
  const std::vector<T>& got_res = alias == 1 ? a2 : (alias == 2 ? b2 : res);
  const std::string where = "rows=" + std::to_string(rows) + " C=" + std::to_string(C) +
                            " alias=" + std::to_string(alias);
  EXPECT_TRUE(same_bits(got_res, res_want)) << where;
  EXPECT_TRUE(same_bits(out, out_want)) << where;
  EXPECT_TRUE(same_bits(mean, mean_want)) << where;
  EXPECT_TRUE(same_bits(rstd, rstd_want)) << where;
}
TEST(LayerNorm, ResidualFusedEqualsUnfusedBitwise) {
  int alias = 0;
  for (auto [r, c] : kShapes) {
    check_residual_fused<float>(r, c, alias);
    check_residual_fused<BFloat16>(r, c, (alias + 1) % 3);
    check_residual_fused<Half>(r, c, (alias + 2) % 3);
    alias = (alias + 1) % 3;
  }
}

}  // namespace
}  // namespace shardtrain::kernels
