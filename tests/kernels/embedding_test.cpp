// Embedding against a double-precision reference: forward gather on odd shapes for f32 / bf16 /
// f16 tables; backward against central differences of sum(out * G); repeated tokens
// accumulating into one gradient row; and bitwise independence of the thread count.
#include "kernels/embedding.h"

#include <gtest/gtest.h>
#include <omp.h>

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

}  // namespace
}  // namespace shardtrain::kernels
