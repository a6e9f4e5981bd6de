// Llama's CPU ops against double-precision references: RMSNorm (forward, backward against
// central differences, thread-count independence, the fused residual form equal to the two
// calls bit for bit), RoPE (Hugging Face's rotate_half rotation and inv_freq, Llama 3.1's
// frequency rescaling by hand, backward as the exact transpose) and SwiGLU (forward, backward
// against central differences, the tails).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "kernels/elementwise.h"
#include "kernels/layernorm.h"
#include "kernels/rope.h"
#include "tests/kernels/test_util.h"

namespace shardtrain::kernels {
namespace {

using shardtrain::testing::finite_difference;
using shardtrain::testing::max_rel_error;
using shardtrain::testing::random_vector;
using shardtrain::testing::rounding_of;
using shardtrain::testing::same_bits;
using shardtrain::testing::to_f64;
using shardtrain::testing::to_storage;
using shardtrain::testing::usize;

constexpr float kEps = 1e-5f;  // Llama's rms_norm_eps

// ---- RMSNorm ----------------------------------------------------------------------------------

struct RmsRef {
  std::vector<double> out, rstd;
};

RmsRef rmsnorm_ref(const std::vector<double>& x, const std::vector<double>& w, int64_t rows,
                   int64_t C) {
  RmsRef r{std::vector<double>(x.size()), std::vector<double>(usize(rows))};
  for (int64_t i = 0; i < rows; ++i) {
    double sq = 0;
    for (int64_t c = 0; c < C; ++c) sq += x[usize(i * C + c)] * x[usize(i * C + c)];
    const double rs = 1.0 / std::sqrt(sq / double(C) + double(kEps));
    for (int64_t c = 0; c < C; ++c)
      r.out[usize(i * C + c)] = x[usize(i * C + c)] * rs * w[usize(c)];
    r.rstd[usize(i)] = rs;
  }
  return r;
}

template <class T>
void check_rmsnorm_forward(int64_t rows, int64_t C) {
  const uint64_t seed = 500 + uint64_t(rows * 1000 + C);
  auto x = to_storage<T>(random_vector(rows * C, seed, 2.0f));
  auto wf = random_vector(C, seed + 1, 0.3f);
  for (float& v : wf) v += 1.0f;
  auto w = to_storage<T>(wf);
  const RmsRef want = rmsnorm_ref(to_f64(x), to_f64(w), rows, C);
  std::vector<T> out(usize(rows * C));
  std::vector<float> rstd(usize(rows));
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), {rows, C}, kEps);
  // fp32 sum of C <= 1000 squares in lane partials: < 100 * 2^-24 relative (as LayerNorm's
  // bound, layernorm_test.cpp); 16-bit storage adds the output rounding.
  const std::string where = "rows=" + std::to_string(rows) + " C=" + std::to_string(C);
  EXPECT_LT(max_rel_error(to_f64(out), want.out), 1e-5 + rounding_of<T>()) << where;
  EXPECT_LT(max_rel_error(rstd, want.rstd), 1e-5) << where;
}

TEST(RMSNorm, Forward) {
  for (auto [r, c] : {std::pair<int64_t, int64_t>{1, 1},
                      {1, 3},
                      {2, 17},
                      {5, 100},
                      {3, 768},
                      {33, 64},
                      {4, 1000}}) {
    check_rmsnorm_forward<float>(r, c);
    check_rmsnorm_forward<BFloat16>(r, c);
    check_rmsnorm_forward<Half>(r, c);
  }
}

// dx (accumulated onto random values) and dweight against central differences of
// sum(out * G) in the double reference.
template <class T>
void check_rmsnorm_backward(int64_t rows, int64_t C) {
  const uint64_t seed = 600 + uint64_t(rows * 1000 + C);
  auto x = to_storage<T>(random_vector(rows * C, seed, 2.0f));
  auto wf = random_vector(C, seed + 1, 0.3f);
  for (float& v : wf) v += 1.0f;
  auto w = to_storage<T>(wf);
  auto g = to_storage<T>(random_vector(rows * C, seed + 2));
  const auto xd = to_f64(x), wd = to_f64(w), gd = to_f64(g);
  auto loss = [&](const std::vector<double>& xv, const std::vector<double>& wv) {
    const RmsRef r = rmsnorm_ref(xv, wv, rows, C);
    double s = 0;
    for (size_t i = 0; i < r.out.size(); ++i) s += r.out[i] * gd[i];
    return s;
  };
  auto want_dx = finite_difference([&](const auto& v) { return loss(v, wd); }, xd);
  auto want_dw = finite_difference([&](const auto& v) { return loss(xd, v); }, wd);
  std::vector<T> out(usize(rows * C));
  std::vector<float> rstd(usize(rows));
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), {rows, C}, kEps);
  auto dx = to_storage<T>(random_vector(rows * C, seed + 3));
  std::vector<float> dw = random_vector(C, seed + 4);
  const auto dx0 = to_f64(dx);
  for (size_t i = 0; i < dx0.size(); ++i) want_dx[i] += dx0[i];
  for (size_t i = 0; i < dw.size(); ++i) want_dw[i] += dw[i];
  rmsnorm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), {rows, C});
  // As LayerNorm's backward (layernorm_test.cpp): fp32 row sums ~1e-6, dx relative to the
  // scale of |g w rstd| and the N(0,1) initial values: 2e-5; 16-bit dx rounded once.
  const std::string where = "rows=" + std::to_string(rows) + " C=" + std::to_string(C);
  EXPECT_LT(max_rel_error(to_f64(dx), want_dx), 2e-5 + rounding_of<T>()) << where;
  EXPECT_LT(max_rel_error(dw, want_dw), 2e-5) << where;
}

TEST(RMSNorm, Backward) {
  for (auto [r, c] : {std::pair<int64_t, int64_t>{1, 1}, {1, 3}, {2, 17}, {5, 8}, {3, 33}}) {
    check_rmsnorm_backward<float>(r, c);
  }
  for (auto [r, c] : {std::pair<int64_t, int64_t>{1, 3}, {2, 17}, {3, 33}}) {
    check_rmsnorm_backward<BFloat16>(r, c);
    check_rmsnorm_backward<Half>(r, c);
  }
}

TEST(RMSNorm, BitwiseIndependentOfThreadCountAndFusedEqualsUnfused) {
  const int64_t rows = 517, C = 100;  // rows not a multiple of the partition count
  const auto a = to_storage<BFloat16>(random_vector(rows * C, 700)),
             b = to_storage<BFloat16>(random_vector(rows * C, 701)),
             w = to_storage<BFloat16>(random_vector(C, 702)),
             g = to_storage<BFloat16>(random_vector(rows * C, 703));
  struct Out {
    std::vector<BFloat16> res, out, dx;
    std::vector<float> rstd, dw;
  };
  auto run = [&](int threads) {
    return shardtrain::testing::with_threads(threads, [&] {
      Out o{std::vector<BFloat16>(a.size()), std::vector<BFloat16>(a.size()),
            to_storage<BFloat16>(random_vector(rows * C, 704)), std::vector<float>(usize(rows)),
            std::vector<float>(usize(C), 0.25f)};
      residual_rmsnorm_forward(o.res.data(), o.out.data(), o.rstd.data(), a.data(), b.data(),
                               w.data(), {rows, C}, kEps);
      rmsnorm_backward(o.dx.data(), o.dw.data(), g.data(), o.res.data(), w.data(), o.rstd.data(),
                       {rows, C});
      return o;
    });
  };
  const Out one = run(1);
  for (int threads : {2, 3}) {
    const Out many = run(threads);
    EXPECT_TRUE(same_bits(one.out, many.out) && same_bits(one.rstd, many.rstd)) << threads;
    EXPECT_TRUE(same_bits(one.dx, many.dx) && same_bits(one.dw, many.dw)) << threads;
  }
  // The fused call is residual_add then rmsnorm_forward, bit for bit.
  std::vector<BFloat16> res(a.size()), out(a.size());
  std::vector<float> rstd(usize(rows));
  residual_add(res.data(), a.data(), b.data(), rows * C);
  rmsnorm_forward(out.data(), rstd.data(), res.data(), w.data(), {rows, C}, kEps);
  EXPECT_TRUE(same_bits(res, one.res));
  EXPECT_TRUE(same_bits(out, one.out));
  EXPECT_TRUE(same_bits(rstd, one.rstd));
}

// ---- RoPE -------------------------------------------------------------------------------------

// HF's rule in double: inv_freq_i = theta^(-2i/D); Llama 3.1 scaling applied by hand below.
double inv_freq_ref(int64_t i, int64_t D, double theta) {
  return 1.0 / std::pow(theta, double(2 * i) / double(D));
}

TEST(Rope, InverseFrequenciesFollowHuggingFace) {
  const RopeScaling none;
  const auto f = rope_inv_freq(64, 10000.0f, none);
  ASSERT_EQ(f.size(), 32u);
  for (int64_t i = 0; i < 32; ++i) {
    // fp32 pow and division: a few ulps.
    EXPECT_NEAR(f[usize(i)], inv_freq_ref(i, 64, 10000.0), 4e-7 * inv_freq_ref(i, 64, 10000.0));
  }
  // Llama 3.1 (factor 8, low 1, high 4, original 8192), theta 500000, D = 128: wavelength
  // 2 pi 500000^(2i/128) is 6.28 at i = 0 and 1298 at i = 26 (< 8192 / 4 = 2048: kept), 22911
  // at i = 40 and 2.56e6 at i = 63 (> 8192: divided by 8), 2948 at i = 30 (between: smooth =
  // (8192 / 2948 - 1) / 3 = 0.593, f (1 - smooth) / 8 + f smooth).
  RopeScaling l31;
  l31.factor = 8.0f;
  l31.low_freq_factor = 1.0f;
  l31.high_freq_factor = 4.0f;
  l31.original_max_position = 8192.0f;
  const auto g = rope_inv_freq(128, 500000.0f, l31);
  auto want = [&](int64_t i) {
    const double fi = inv_freq_ref(i, 128, 500000.0), wl = 2 * M_PI / fi;
    if (wl < 8192.0 / 4.0) return fi;
    if (wl > 8192.0 / 1.0) return fi / 8.0;
    const double smooth = (8192.0 / wl - 1.0) / (4.0 - 1.0);
    return (1 - smooth) * fi / 8.0 + smooth * fi;
  };
  for (int64_t i : {0, 26, 30, 40, 63}) {
    EXPECT_NEAR(g[usize(i)], want(i), 2e-6 * want(i)) << i;
  }
  EXPECT_NEAR(g[40], inv_freq_ref(40, 128, 500000.0) / 8.0, 1e-6 * g[40]);  // the low band
  EXPECT_NEAR(g[0], 1.0, 1e-7);                                             // the high band
}

// x (rows, stride) with `heads` rotated heads: double reference of the rotation.
std::vector<double> rope_ref(const std::vector<double>& x, const std::vector<float>& table,
                             RopeShape s) {
  std::vector<double> y = x;
  const int64_t half = s.head_dim / 2;
  for (int64_t r = 0; r < s.rows; ++r) {
    const int64_t p = s.pos_offset + r % s.seq;
    for (int64_t h = 0; h < s.heads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const double c = table[usize((p * half + i) * 2)],
                     sn = table[usize((p * half + i) * 2 + 1)];
        const size_t lo = usize(r * s.row_stride + h * s.head_dim + i), hi = lo + usize(half);
        y[lo] = x[lo] * c - x[hi] * sn;
        y[hi] = x[hi] * c + x[lo] * sn;
      }
    }
  }
  return y;
}

template <class T>
void check_rope(RopeShape s) {
  const std::vector<float> table = rope_table(s.pos_offset + s.seq, s.head_dim, 10000.0f, {});
  // The table itself: cos/sin of the fp32 angle p * inv_freq.
  const auto f = rope_inv_freq(s.head_dim, 10000.0f, {});
  const int64_t p_last = s.pos_offset + s.seq - 1, half = s.head_dim / 2;
  const double angle = double(float(p_last) * f[usize(half - 1)]);
  EXPECT_NEAR(table[usize((p_last * half + half - 1) * 2)], std::cos(angle), 1e-7);
  EXPECT_NEAR(table[usize((p_last * half + half - 1) * 2 + 1)], std::sin(angle), 1e-7);

  const auto x = to_storage<T>(random_vector(s.rows * s.row_stride, uint64_t(s.rows * 7 + s.seq)));
  const auto want = rope_ref(to_f64(x), table, s);
  auto y = x;
  rope_forward(y.data(), table.data(), s);
  // Two products and a sum in fp32 per element (|c|, |s| <= 1): < 3 * 2^-24 of max |x|, plus
  // the storage rounding. Elements outside the rotated heads (v) are untouched: exact.
  const std::string where = "rows=" + std::to_string(s.rows) + " heads=" + std::to_string(s.heads);
  EXPECT_LT(max_rel_error(to_f64(y), want), 3e-7 + rounding_of<T>()) << where;
  // Backward: the transpose. Since the rotation is orthogonal, rotating y back gives x (up to
  // the same rounding twice); and <R x, g> = <x, R^T g> in double for the kernel's R^T.
  auto g = to_storage<T>(random_vector(s.rows * s.row_stride, 17));
  auto rtg = g;
  rope_backward(rtg.data(), table.data(), s);
  const auto gd = to_f64(g), rtgd = to_f64(rtg), xd = to_f64(x), rxd = rope_ref(xd, table, s);
  double lhs = 0, rhs = 0, mag = 0;
  for (size_t i = 0; i < gd.size(); ++i) {
    lhs += rxd[i] * gd[i];
    rhs += xd[i] * rtgd[i];
    mag += std::fabs(xd[i] * gd[i]);
  }
  EXPECT_NEAR(lhs, rhs, (3e-7 + 2 * rounding_of<T>()) * mag) << where;
  auto back = y;
  rope_backward(back.data(), table.data(), s);
  EXPECT_LT(max_rel_error(to_f64(back), to_f64(x)), 6e-7 + 3 * rounding_of<T>()) << where;
}

TEST(Rope, RotatesLikeHuggingFaceAndBackwardIsTheTranspose) {
  // Llama's q | k | v row: 4 q heads + 2 k heads rotate, 2 v heads do not (stride 8 heads).
  check_rope<float>({6, 3, 8 * 16, 6, 16, 0});
  check_rope<BFloat16>({6, 3, 8 * 16, 6, 16, 0});
  check_rope<Half>({6, 3, 8 * 16, 6, 16, 0});
  check_rope<float>({5, 5, 64, 1, 64, 0});         // one head, D = 64
  check_rope<float>({2, 1, 3 * 128, 2, 128, 37});  // one new token at position 37 (KV cache)
  check_rope<BFloat16>({130, 65, 3 * 4 * 64, 8, 64, 0});
}

// ---- SwiGLU -----------------------------------------------------------------------------------

double silu(double g) { return g / (1.0 + std::exp(-g)); }

template <class T>
void check_swiglu(int64_t rows, int64_t F) {
  const uint64_t seed = 800 + uint64_t(rows * 100 + F);
  auto guf = random_vector(rows * 2 * F, seed, 4.0f);
  if (guf.size() >= 4) {  // the tails: silu saturates and its exp overflows
    guf[0] = -100.0f;
    guf[1] = 95.0f;
  }
  const auto gu = to_storage<T>(guf);
  const auto gud = to_f64(gu);
  std::vector<double> want(usize(rows * F));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t f = 0; f < F; ++f) {
      want[usize(r * F + f)] = silu(gud[usize(r * 2 * F + f)]) * gud[usize(r * 2 * F + F + f)];
    }
  }
  std::vector<T> out(usize(rows * F));
  swiglu_forward(out.data(), gu.data(), rows, F);
  // exp_f32 (< 3 * 2^-24), one division, one product: 6e-7 of max |out|, plus storage rounding.
  const std::string where = "rows=" + std::to_string(rows) + " F=" + std::to_string(F);
  EXPECT_LT(max_rel_error(to_f64(out), want), 6e-7 + rounding_of<T>()) << where;

  const auto dout = to_storage<T>(random_vector(rows * F, seed + 1));
  const auto dd = to_f64(dout);
  auto loss = [&](const std::vector<double>& v) {
    double s = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t f = 0; f < F; ++f) {
        s += silu(v[usize(r * 2 * F + f)]) * v[usize(r * 2 * F + F + f)] * dd[usize(r * F + f)];
      }
    }
    return s;
  };
  const auto want_d = finite_difference(loss, gud);
  std::vector<T> dgu(gu.size());
  swiglu_backward(dgu.data(), gu.data(), dout.data(), rows, F);
  // silu' in fp32 from s and e (each a few ulps): 1e-6 of the largest gradient; central
  // differences ~1e-9 (h = 1e-6 against |g| <= 100: the tails' curvature is tiny).
  EXPECT_LT(max_rel_error(to_f64(dgu), want_d), 1e-6 + rounding_of<T>()) << where;
}

TEST(SwiGlu, ForwardAndBackward) {
  for (auto [r, f] : {std::pair<int64_t, int64_t>{1, 1}, {1, 3}, {2, 17}, {5, 64}, {3, 172}}) {
    check_swiglu<float>(r, f);
    check_swiglu<BFloat16>(r, f);
    check_swiglu<Half>(r, f);
  }
}

}  // namespace
}  // namespace shardtrain::kernels
