// Embedding against a double-precision reference: forward gather on odd shapes for f32 / bf16 /
// f16 tables; backward against central differences of sum(out * G); repeated tokens
// accumulating into one gradient row; bitwise independence of the thread count; and the
// vocab-parallel pieces (slice lookup, position add, the two gradients) against double
// references and, where they partition it, the full embedding.
#include "kernels/embedding.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <tuple>

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
  EmbeddingShape s;
  int64_t vocab, max_seq;
};
const Case kCases[] = {{{1, 1, 1}, 1, 1},    {{1, 3, 3}, 5, 4},     {{2, 5, 17}, 7, 8},
                       {{3, 4, 100}, 50, 4}, {{2, 7, 768}, 30, 16}, {{4, 9, 200}, 3, 9}};

std::vector<int32_t> make_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(usize(n));
  for (auto& v : t) v = int32_t(rng() % uint64_t(vocab));
  return t;
}

std::vector<double> embedding_ref(const std::vector<int32_t>& tokens,
                                  const std::vector<double>& wte, const std::vector<double>& wpe,
                                  EmbeddingShape s) {
  const int64_t C = s.channels;
  std::vector<double> out(usize(s.batch * s.seq * C));
  for (int64_t i = 0; i < s.batch * s.seq; ++i) {
    const int64_t t = i % s.seq;
    for (int64_t c = 0; c < C; ++c) {
      out[usize(i * C + c)] = wte[usize(tokens[usize(i)] * C + c)] + wpe[usize(t * C + c)];
    }
  }
  return out;
}

template <class T>
void check_forward(const Case& k) {
  const EmbeddingShape s = k.s;
  const int64_t C = s.channels, N = s.batch * s.seq;
  const uint64_t seed = 700 + uint64_t(N * 1000 + C);
  auto wte = to_storage<T>(random_vector(k.vocab * C, seed));
  auto wpe = to_storage<T>(random_vector(k.max_seq * C, seed + 1));
  auto tokens = make_tokens(N, k.vocab, seed + 2);
  auto want = embedding_ref(tokens, to_f64(wte), to_f64(wpe), s);
  std::vector<T> out(usize(N * C));
  embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), s);
  // fp32: one rounding of an exact sum, 2^-24 relative; 16-bit adds its output rounding.
  EXPECT_LT(max_rel_error(to_f64(out), want), 1e-7 + rounding_of<T>())
      << "B=" << s.batch << " T=" << s.seq << " C=" << C;
}
TEST(Embedding, ForwardF32) {
  for (const Case& k : kCases) check_forward<float>(k);
}
TEST(Embedding, ForwardBF16) {
  for (const Case& k : kCases) check_forward<BFloat16>(k);
}
TEST(Embedding, ForwardF16) {
  for (const Case& k : kCases) check_forward<Half>(k);
}

// Gradients of L = sum(out * G) with respect to both tables by central differences of the
// double reference, against the kernel's backward (dout = G) accumulated onto nonzero values.
// Small vocabularies make tokens repeat within the batch.
template <class T>
void check_backward(const Case& k) {
  const EmbeddingShape s = k.s;
  const int64_t C = s.channels, N = s.batch * s.seq;
  const uint64_t seed = 800 + uint64_t(N * 1000 + C);
  auto wte = to_f64(random_vector(k.vocab * C, seed));
  auto wpe = to_f64(random_vector(k.max_seq * C, seed + 1));
  auto tokens = make_tokens(N, k.vocab, seed + 2);
  auto g = to_storage<T>(random_vector(N * C, seed + 3));
  auto gd = to_f64(g);
  auto loss = [&](const std::vector<double>& e, const std::vector<double>& p) {
    auto out = embedding_ref(tokens, e, p, s);
    double sum = 0;
    for (size_t i = 0; i < out.size(); ++i) sum += out[i] * gd[i];
    return sum;
  };
  auto want_dwte = finite_difference([&](const auto& v) { return loss(v, wpe); }, wte);
  auto want_dwpe = finite_difference([&](const auto& v) { return loss(wte, v); }, wpe);
  std::vector<float> dwte = random_vector(k.vocab * C, seed + 4);
  std::vector<float> dwpe = random_vector(k.max_seq * C, seed + 5);
  for (size_t i = 0; i < dwte.size(); ++i) want_dwte[i] += dwte[i];
  for (size_t i = 0; i < dwpe.size(); ++i) want_dwpe[i] += dwpe[i];
  embedding_backward(dwte.data(), dwpe.data(), g.data(), tokens.data(), s);
  // fp32 sums of at most B*T + 1 = 13 terms: 13 * 2^-24 ~ 8e-7 of the largest, 3e-6 with
  // margin; central differences of this linear loss are good to ~1e-9. 16-bit dout is exact
  // in fp32.
  EXPECT_LT(max_rel_error(dwte, want_dwte), 3e-6) << "B=" << s.batch << " T=" << s.seq;
  EXPECT_LT(max_rel_error(dwpe, want_dwpe), 3e-6) << "B=" << s.batch << " T=" << s.seq;
}
TEST(Embedding, BackwardFiniteDifferences) {
  for (const Case& k : {Case{{1, 1, 1}, 1, 1}, Case{{2, 3, 5}, 4, 4}, Case{{3, 4, 70}, 3, 5}}) {
    check_backward<float>(k);
    check_backward<BFloat16>(k);
    check_backward<Half>(k);
  }
}

// Every position holds the same token: its gradient row is the sum of all of dout, in order.
TEST(Embedding, RepeatedTokensAccumulate) {
  const EmbeddingShape s{3, 5, 130};
  const int64_t C = s.channels, N = s.batch * s.seq, V = 4;
  std::vector<int32_t> tokens(usize(N), 2);
  tokens[7] = 0;  // one different token
  auto dout = random_vector(N * C, 901);
  std::vector<float> dwte(usize(V * C), 0.0f), dwpe(usize(s.seq * C), 0.0f);
  embedding_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), s);
  for (int64_t c = 0; c < C; ++c) {
    float want2 = 0.0f, want0 = 0.0f;  // fp32 in the same (b, t) order: bitwise equal
    for (int64_t i = 0; i < N; ++i) (i == 7 ? want0 : want2) += dout[usize(i * C + c)];
    ASSERT_EQ(dwte[usize(2 * C + c)], want2) << c;
    ASSERT_EQ(dwte[usize(0 * C + c)], want0) << c;
    ASSERT_EQ(dwte[usize(1 * C + c)], 0.0f) << c;
    ASSERT_EQ(dwte[usize(3 * C + c)], 0.0f) << c;
  }
}

TEST(Embedding, BitwiseIndependentOfThreadCount) {
  const EmbeddingShape s{4, 37, 200};  // 200 = 3 full 64-column chunks and a tail
  const int64_t C = s.channels, N = s.batch * s.seq, V = 11;
  auto tokens = make_tokens(N, V, 911);
  auto dout = random_vector(N * C, 912);
  auto dout16 = to_storage<BFloat16>(dout);
  auto run = [&](int threads, bool bf16) {
    int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> d(usize((V + s.seq) * C), 0.125f);
    if (bf16) {
      embedding_backward(d.data(), d.data() + V * C, dout16.data(), tokens.data(), s);
    } else {
      embedding_backward(d.data(), d.data() + V * C, dout.data(), tokens.data(), s);
    }
    omp_set_num_threads(saved);
    return d;
  };
  for (bool bf16 : {false, true}) {
    auto one = run(1, bf16);
    for (int threads : {2, 3}) {
      auto many = run(threads, bf16);
      EXPECT_EQ(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)), 0) << threads;
    }
  }
}

// ---- Vocab-parallel pieces -------------------------------------------------------------------

// A vocabulary of 3 * rows tokens in three slices [s * rows, (s + 1) * rows).
struct SliceCase {
  int64_t n, C, rows;
};
const SliceCase kSliceCases[] = {{1, 1, 1}, {5, 3, 2}, {17, 8, 4}, {40, 100, 7}, {9, 768, 3}};

// Each slice's lookup holds the wte rows of its tokens and zeros elsewhere, so the slices' outputs
// summed in double are the full table's rows: wte[token].
template <class T>
void check_lookup_slices(const SliceCase& k) {
  const int64_t n = k.n, C = k.C, rows = k.rows, V = 3 * rows;
  const uint64_t seed = 1000 + uint64_t(n * 100 + C);
  auto wte = to_storage<T>(random_vector(V * C, seed));
  auto tokens = make_tokens(n, V, seed + 1);
  auto wd = to_f64(wte);
  std::vector<double> sum(usize(n * C), 0.0);
  for (int64_t sl = 0; sl < 3; ++sl) {
    std::vector<T> out = to_storage<T>(random_vector(n * C, seed + 2));  // overwritten
    embedding_lookup_slice(out.data(), tokens.data(), wte.data() + sl * rows * C, sl * rows, rows,
                           n, C);
    auto od = to_f64(out);
    for (int64_t i = 0; i < n; ++i) {
      const bool in = tokens[usize(i)] / rows == sl;
      for (int64_t c = 0; c < C; ++c) {
        const double want = in ? wd[usize(tokens[usize(i)] * C + c)] : 0.0;
        ASSERT_EQ(od[usize(i * C + c)], want) << "slice " << sl << " row " << i;  // a copy
        sum[usize(i * C + c)] += od[usize(i * C + c)];
      }
    }
  }
  for (int64_t i = 0; i < n * C; ++i) {
    ASSERT_EQ(sum[usize(i)], wd[usize(tokens[usize(i / C)] * C + i % C)]) << i;
  }
}
TEST(EmbeddingSlice, LookupF32) {
  for (const SliceCase& k : kSliceCases) check_lookup_slices<float>(k);
}
TEST(EmbeddingSlice, LookupBF16) {
  for (const SliceCase& k : kSliceCases) check_lookup_slices<BFloat16>(k);
}
TEST(EmbeddingSlice, LookupF16) {
  for (const SliceCase& k : kSliceCases) check_lookup_slices<Half>(k);
}

// add_positions against x + wpe[(row0 + i) % seq] in double, for whole sequences (row0 = 0) and
// a sequence-parallel block starting inside a sequence and wrapping around its end.
template <class T>
void check_add_positions(int64_t rows, int64_t row0, int64_t seq, int64_t C) {
  const uint64_t seed = 1100 + uint64_t(rows * 100 + row0 * 10 + seq);
  auto x = to_storage<T>(random_vector(rows * C, seed));
  auto wpe = to_storage<T>(random_vector(seq * C, seed + 1));
  auto xd = to_f64(x), pd = to_f64(wpe);
  std::vector<double> want(usize(rows * C));
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < C; ++c) {
      want[usize(i * C + c)] = xd[usize(i * C + c)] + pd[usize(((row0 + i) % seq) * C + c)];
    }
  }
  add_positions(x.data(), wpe.data(), rows, row0, seq, C);
  // fp32: one rounding of an exact sum, 2^-24 relative; 16-bit adds its output rounding.
  EXPECT_LT(max_rel_error(to_f64(x), want), 1e-7 + rounding_of<T>())
      << "rows=" << rows << " row0=" << row0 << " seq=" << seq;
}
TEST(EmbeddingSlice, AddPositions) {
  for (auto [rows, row0, seq, C] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{1, 0, 1, 1},
                                    {6, 0, 3, 5},
                                    {4, 5, 6, 17},
                                    {10, 7, 4, 100},
                                    {16, 16, 32, 768}}) {
    check_add_positions<float>(rows, row0, seq, C);
    check_add_positions<BFloat16>(rows, row0, seq, C);
    check_add_positions<Half>(rows, row0, seq, C);
  }
}

// The wte gradient of a slice against the double sum of dout over the positions whose token it
// holds, accumulated onto nonzero values; and the three slices side by side are bitwise the full
// embedding_backward's dwte (the same additions in the same order).
template <class T>
void check_backward_slices(const SliceCase& k) {
  const int64_t n = k.n, C = k.C, rows = k.rows, V = 3 * rows;
  const uint64_t seed = 1200 + uint64_t(n * 100 + C);
  auto tokens = make_tokens(n, V, seed);
  auto g = to_storage<T>(random_vector(n * C, seed + 1));
  auto gd = to_f64(g);
  const std::vector<float> dwte0 = random_vector(V * C, seed + 2);
  std::vector<float> dwte = dwte0;
  std::vector<double> want(dwte0.begin(), dwte0.end());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < C; ++c) want[usize(tokens[usize(i)] * C + c)] += gd[usize(i * C + c)];
  }
  for (int64_t sl = 0; sl < 3; ++sl) {
    embedding_backward_slice(dwte.data() + sl * rows * C, g.data(), tokens.data(), sl * rows, rows,
                             n, C);
  }
  // fp32 sums of at most n + 1 = 41 terms: 41 * 2^-24 = 2.4e-6 of the largest, 1e-5 with margin.
  EXPECT_LT(max_rel_error(dwte, want), 1e-5) << "n=" << n << " C=" << C;
  std::vector<float> full = dwte0, dwpe(usize(n * C), 0.0f);
  embedding_backward(full.data(), dwpe.data(), g.data(), tokens.data(), {1, n, C});
  EXPECT_EQ(std::memcmp(full.data(), dwte.data(), full.size() * sizeof(float)), 0);
}
TEST(EmbeddingSlice, BackwardSlices) {
  for (const SliceCase& k : kSliceCases) {
    check_backward_slices<float>(k);
    check_backward_slices<BFloat16>(k);
    check_backward_slices<Half>(k);
  }
}

// positions_backward against the double sum of dout rows landing on each wpe row; with row0 = 0
// and rows = B * T it is bitwise the full embedding_backward's dwpe (b ascending per row).
template <class T>
void check_positions_backward(int64_t rows, int64_t row0, int64_t seq, int64_t C) {
  const uint64_t seed = 1300 + uint64_t(rows * 100 + row0 * 10 + seq);
  auto g = to_storage<T>(random_vector(rows * C, seed));
  auto gd = to_f64(g);
  const std::vector<float> dwpe0 = random_vector(seq * C, seed + 1);
  std::vector<float> dwpe = dwpe0;
  std::vector<double> want(dwpe0.begin(), dwpe0.end());
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < C; ++c) {
      want[usize(((row0 + i) % seq) * C + c)] += gd[usize(i * C + c)];
    }
  }
  positions_backward(dwpe.data(), g.data(), rows, row0, seq, C);
  // At most rows / seq + 2 = 7 fp32 terms per element: 1e-6 covers 7 * 2^-24 with margin.
  EXPECT_LT(max_rel_error(dwpe, want), 1e-6)
      << "rows=" << rows << " row0=" << row0 << " seq=" << seq;
  if (row0 == 0 && rows % seq == 0) {
    std::vector<float> full = dwpe0, dwte(usize(C), 0.0f);
    std::vector<int32_t> zeros(usize(rows), 0);
    embedding_backward(dwte.data(), full.data(), g.data(), zeros.data(), {rows / seq, seq, C});
    EXPECT_EQ(std::memcmp(full.data(), dwpe.data(), full.size() * sizeof(float)), 0);
  }
}
TEST(EmbeddingSlice, PositionsBackward) {
  for (auto [rows, row0, seq, C] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{1, 0, 1, 1},
                                    {6, 0, 3, 5},
                                    {4, 5, 6, 17},
                                    {10, 7, 4, 100},
                                    {16, 16, 32, 768},
                                    {20, 0, 4, 70}}) {
    check_positions_backward<float>(rows, row0, seq, C);
    check_positions_backward<BFloat16>(rows, row0, seq, C);
    check_positions_backward<Half>(rows, row0, seq, C);
  }
}

}  // namespace
}  // namespace shardtrain::kernels
