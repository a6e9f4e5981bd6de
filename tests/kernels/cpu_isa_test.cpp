// cpu_isa_test.cpp — the CPU kernels at every ISA level this build has and this CPU can run
// (kernels/isa.h), against the baseline copy, through the Backend interface the model uses:
// every op of the CPU backend, each storage type, sizes that leave vector remainders (odd
// channel counts, rows not a multiple of 16).
//
// Tolerances (relative to the largest reference magnitude, testing::max_rel_error). Both copies
// are the same source compiled with FMA; they differ only where the vectoriser splits a sum
// across lanes (8 fp32 lanes at the baseline, 16 with AVX-512), so:
//  - elementwise ops and sums kept in a fixed order (casts, GELU, residual and bias adds,
//    AdamW, embedding lookups and gradients, bias gradients over the fixed row partition, the
//    sum of squares in double, add_f32): bitwise, asserted.
//  - row sums (LayerNorm statistics and gradients, softmax sums, attention's dot products and
//    online softmax): 2e-5. Reassociating n fp32 terms moves a sum by at most about
//    (n/8 + 4) 2^-24 of the sum of magnitudes for 8 vs 16 lanes and their trees; n <= 784 here
//    gives < 6e-6, the outputs are at the scale of those sums, and one division or sqrt after
//    adds 2^-24. 16-bit storage adds up to one ulp of the stored value where a tiny fp32
//    difference crosses a rounding boundary: 2 * rounding_of<T>() (2^-7 bf16, 2^-10 f16).
// Measured on an AMD EPYC (Zen 4, avx512 vs x86-64-v3): fp32 row sums <= 3.1e-7; 16-bit
// outputs <= 2.5e-4 (one bf16 ulp of a value well below the maximum); the test prints each.
#include "kernels/cpu/cpu_isa.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/backend_dispatch.h"
#include "tests/kernels/test_util.h"

namespace shardtrain::kernels {
namespace {

using cpu::CpuIsa;
using testing::max_rel_error;
using testing::random_vector;

using Bytes = std::vector<uint8_t>;
using Outputs = std::vector<std::vector<double>>;

// Storage bytes of type t holding v (testing::to_storage), and back (testing::to_f64).
Bytes encode(DType t, const std::vector<float>& v) {
  Bytes b;
  with_float_type(t, [&](auto tag) {
    const auto typed = testing::to_storage<decltype(tag)>(v);
    const auto* p = reinterpret_cast<const uint8_t*>(typed.data());
    b.assign(p, p + typed.size() * sizeof(tag));
  });
  return b;
}

std::vector<double> decode(DType t, const Bytes& b) {
  std::vector<double> v;
  with_float_type(t, [&](auto tag) {
    std::vector<decltype(tag)> typed(b.size() / sizeof(tag));
    std::memcpy(typed.data(), b.data(), b.size());
    v = testing::to_f64(typed);
  });
  return v;
}

Bytes rnd(DType t, int64_t n, uint64_t seed, float scale = 1.0f) {
  return encode(t, random_vector(n, seed, scale));
}
std::vector<float> rnd32(int64_t n, uint64_t seed, float scale = 1.0f) {
  return random_vector(n, seed, scale);
}
template <class V>
std::vector<double> f64(const V& v) {
  return std::vector<double>(v.begin(), v.end());
}
std::vector<int32_t> tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  uint64_t x = seed * 2654435761u + 1;
  for (auto& v : t) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    v = int32_t((x >> 33) % uint64_t(vocab));
  }
  return t;
}

// "op size" (GCC 12 warns falsely (-Wrestrict) on a literal + std::string concatenation).
std::string named(const char* op, const std::string& size, const char* sep = " ") {
  std::string s = op;
  s += sep;
  s += size;
  return s;
}

enum class Tol { kBitwise, kRowSum };

struct OpCase {
  std::string name;
  Tol tol;
  std::function<Outputs(Backend&, DType)> run;
};

std::vector<OpCase> cases() {
  std::vector<OpCase> c;
  for (int64_t C : {77, 768}) {
    const int64_t N = 37;
    const RowsShape s{N, C};
    const std::string sz = named("C", std::to_string(C), "");
    c.push_back({named("layernorm_forward", sz), Tol::kRowSum, [=](Backend& be, DType t) {
                   Bytes x = rnd(t, N * C, 1), w = rnd(t, C, 2), b = rnd(t, C, 3);
                   Bytes out(x.size());
                   std::vector<float> mean(testing::usize(N)), rstd(testing::usize(N));
                   be.layernorm_forward(t, out.data(), mean.data(), rstd.data(), x.data(), w.data(),
                                        b.data(), s, 1e-5f);
                   return Outputs{decode(t, out), f64(mean), f64(rstd)};
                 }});
    c.push_back(
        {named("residual_layernorm_forward", sz), Tol::kRowSum, [=](Backend& be, DType t) {
           Bytes a = rnd(t, N * C, 4), b = rnd(t, N * C, 5), w = rnd(t, C, 2), bias = rnd(t, C, 3);
           Bytes res(a.size()), out(a.size());
           std::vector<float> mean(testing::usize(N)), rstd(testing::usize(N));
           be.residual_layernorm_forward(t, res.data(), out.data(), mean.data(), rstd.data(),
                                         a.data(), b.data(), w.data(), bias.data(), s, 1e-5f);
           return Outputs{decode(t, res), decode(t, out), f64(mean), f64(rstd)};
         }});
    c.push_back({named("layernorm_backward", sz), Tol::kRowSum, [=](Backend& be, DType t) {
                   Bytes x = rnd(t, N * C, 1), w = rnd(t, C, 2), dout = rnd(t, N * C, 6);
                   Bytes dx = rnd(t, N * C, 7);
                   std::vector<float> mean(testing::usize(N)), rstd(testing::usize(N));
                   Bytes tmp(x.size());
                   cpu_backend_at(CpuIsa::kBaseline)
                       .layernorm_forward(t, tmp.data(), mean.data(), rstd.data(), x.data(),
                                          w.data(), w.data(), s, 1e-5f);
                   std::vector<float> dw = rnd32(C, 8), db = rnd32(C, 9);
                   be.layernorm_backward(t, dx.data(), dw.data(), db.data(), dout.data(), x.data(),
                                         w.data(), mean.data(), rstd.data(), s);
                   return Outputs{decode(t, dx), f64(dw), f64(db)};
                 }});
  }
  for (int64_t D : {64, 80}) {
    const AttentionShape s{2, 33, 2, D};
    const int64_t nqkv = s.batch * s.seq * 3 * s.heads * D, nout = nqkv / 3;
    const std::string sz = named("D", std::to_string(D), "");
    c.push_back({named("attention_forward", sz), Tol::kRowSum, [=](Backend& be, DType t) {
                   Bytes qkv = rnd(t, nqkv, 10), out(testing::usize(nout * dtype_bytes(t)));
                   std::vector<float> lse(testing::usize(s.batch * s.heads * s.seq));
                   be.attention_forward(t, out.data(), lse.data(), qkv.data(), s);
                   return Outputs{decode(t, out), f64(lse)};
                 }});
    c.push_back({named("attention_backward", sz), Tol::kRowSum, [=](Backend& be, DType t) {
                   Bytes qkv = rnd(t, nqkv, 10), out(testing::usize(nout * dtype_bytes(t)));
                   std::vector<float> lse(testing::usize(s.batch * s.heads * s.seq));
                   cpu_backend_at(CpuIsa::kBaseline)
                       .attention_forward(t, out.data(), lse.data(), qkv.data(), s);
                   Bytes dout = rnd(t, nout, 11), dqkv(qkv.size());
                   be.attention_backward(t, dqkv.data(), dout.data(), qkv.data(), out.data(),
                                         lse.data(), s);
                   return Outputs{decode(t, dqkv)};
                 }});
  }
  const int64_t n = 4096 + 13;
  c.push_back({"gelu_forward", Tol::kBitwise, [=](Backend& be, DType t) {
                 Bytes x = rnd(t, n, 12, 3.0f), out(x.size());
                 be.gelu_forward(t, out.data(), x.data(), n);
                 return Outputs{decode(t, out)};
               }});
  c.push_back({"gelu_backward", Tol::kBitwise, [=](Backend& be, DType t) {
                 Bytes x = rnd(t, n, 12, 3.0f), dout = rnd(t, n, 13), dx(x.size());
                 be.gelu_backward(t, dx.data(), x.data(), dout.data(), n);
                 return Outputs{decode(t, dx)};
               }});
  c.push_back({"residual_add", Tol::kBitwise, [=](Backend& be, DType t) {
                 Bytes a = rnd(t, n, 14), b = rnd(t, n, 15), out(a.size());
                 be.residual_add(t, out.data(), a.data(), b.data(), n);
                 return Outputs{decode(t, out)};
               }});
  c.push_back({"bias_backward + add_bias", Tol::kBitwise, [=](Backend& be, DType t) {
                 const int64_t rows = 37, cols = 77;
                 Bytes dout = rnd(t, rows * cols, 16), x = rnd(t, rows * cols, 17),
                       bias = rnd(t, cols, 18);
                 std::vector<float> db = rnd32(cols, 19);
                 be.bias_backward(t, db.data(), dout.data(), rows, cols);
                 be.add_bias(t, x.data(), bias.data(), rows, cols);
                 return Outputs{f64(db), decode(t, x)};
               }});
  c.push_back({"embedding forward/backward", Tol::kBitwise, [=](Backend& be, DType t) {
                 const EmbeddingShape s{3, 11, 77};
                 const int64_t V = 50, rows = s.batch * s.seq;
                 auto tok = tokens(rows, V, 20);
                 Bytes wte = rnd(t, V * s.channels, 21), wpe = rnd(t, s.seq * s.channels, 22);
                 Bytes out(testing::usize(rows * s.channels * dtype_bytes(t)));
                 be.embedding_forward(t, out.data(), tok.data(), wte.data(), wpe.data(), s);
                 Bytes dout = rnd(t, rows * s.channels, 23);
                 std::vector<float> dwte = rnd32(V * s.channels, 24),
                                    dwpe = rnd32(s.seq * s.channels, 25);
                 be.embedding_backward(t, dwte.data(), dwpe.data(), dout.data(), tok.data(), s);
                 return Outputs{decode(t, out), f64(dwte), f64(dwpe)};
               }});
  c.push_back({"embedding slices (tensor parallel)", Tol::kBitwise, [=](Backend& be, DType t) {
                 const int64_t rows = 29, C = 77, T = 11, V0 = 16, VR = 20, row0 = 5;
                 auto tok = tokens(rows, 50, 26);
                 Bytes wte = rnd(t, VR * C, 27), wpe = rnd(t, T * C, 28);
                 Bytes out(testing::usize(rows * C * dtype_bytes(t)));
                 be.embedding_lookup_slice(t, out.data(), tok.data(), wte.data(), V0, VR, rows, C);
                 be.add_positions(t, out.data(), wpe.data(), rows, row0, T, C);
                 Bytes dout = rnd(t, rows * C, 29);
                 std::vector<float> dwte = rnd32(VR * C, 30), dwpe = rnd32(T * C, 31);
                 be.embedding_backward_slice(t, dwte.data(), dout.data(), tok.data(), V0, VR, rows,
                                             C);
                 be.positions_backward(t, dwpe.data(), dout.data(), rows, row0, T, C);
                 return Outputs{decode(t, out), f64(dwte), f64(dwpe)};
               }});
  const LogitsShape ls{13, 1024};
  const int64_t valid = 1000;
  c.push_back({"cross_entropy forward/backward", Tol::kRowSum, [=](Backend& be, DType t) {
                 Bytes logits = rnd(t, ls.rows * ls.vocab, 32, 2.0f);
                 auto tgt = tokens(ls.rows, valid, 33);
                 tgt[3] = kIgnoreIndex;
                 std::vector<float> losses(testing::usize(ls.rows)), lse(testing::usize(ls.rows));
                 be.cross_entropy_forward(t, losses.data(), lse.data(), logits.data(), tgt.data(),
                                          ls, valid);
                 Bytes dlogits(logits.size());
                 be.cross_entropy_backward(t, dlogits.data(), logits.data(), lse.data(), tgt.data(),
                                           0.25f, ls, valid);
                 return Outputs{f64(losses), f64(lse), decode(t, dlogits)};
               }});
  c.push_back({"cross_entropy slices (tensor parallel)", Tol::kRowSum, [=](Backend& be, DType t) {
                 Bytes logits = rnd(t, ls.rows * ls.vocab, 34, 2.0f);
                 auto tgt = tokens(ls.rows, 3000, 35);
                 const int64_t v0 = 1024;
                 std::vector<double> mx(testing::usize(ls.rows)), tl(testing::usize(ls.rows)),
                     sum(testing::usize(ls.rows));
                 be.cross_entropy_partial_max(t, mx.data(), tl.data(), logits.data(), tgt.data(),
                                              v0, ls, valid);
                 be.cross_entropy_partial_sumexp(t, sum.data(), logits.data(), mx.data(), ls,
                                                 valid);
                 std::vector<float> lse(testing::usize(ls.rows));
                 for (int64_t r = 0; r < ls.rows; ++r) lse[size_t(r)] = float(mx[size_t(r)] + 1);
                 Bytes dlogits(logits.size());
                 be.cross_entropy_backward_slice(t, dlogits.data(), logits.data(), lse.data(),
                                                 tgt.data(), v0, 0.5f, ls, valid);
                 return Outputs{mx, tl, sum, decode(t, dlogits)};
               }});
  c.push_back({"adamw_update_segments", Tol::kBitwise, [=](Backend& be, DType t) {
                 const int64_t len = 3000 + 7;
                 std::vector<float> p = rnd32(len, 36), g = rnd32(len, 37), m = rnd32(len, 38);
                 std::vector<float> v = rnd32(len, 39);
                 for (float& x : v) x = x * x;
                 Bytes cp(testing::usize(len * dtype_bytes(t)));
                 const AdamWSegment seg[] = {{0, 1000, 0.1f}, {1003, 2900, 0.0f}};
                 const AdamWParams ap{1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3};
                 be.adamw_update_segments(p.data(), g.data(), m.data(), v.data(), t, cp.data(), seg,
                                          2, ap, 0.5f);
                 return Outputs{f64(p), f64(m), f64(v), decode(t, cp)};
               }});
  c.push_back({"cast, add_f32, sum_squares", Tol::kBitwise, [=](Backend& be, DType t) {
                 std::vector<float> x = rnd32(n, 40), acc = rnd32(n, 41);
                 Bytes out(testing::usize(n * dtype_bytes(t)));
                 be.cast_from_f32(t, out.data(), x.data(), n);
                 be.add_f32(acc.data(), x.data(), n);
                 double ss = 0;
                 be.sum_squares(&ss, x.data(), n);
                 return Outputs{decode(t, out), f64(acc), {ss}};
               }});
  return c;
}

double bound(Tol tol, DType t) {
  if (tol == Tol::kBitwise) return 0.0;
  const double storage = t == DType::kBF16 ? 2.0 / 256 : t == DType::kF16 ? 2.0 / 2048 : 0.0;
  return 2e-5 + storage;
}

TEST(CpuIsa, EveryLevelMatchesTheBaseline) {
  const auto isas = cpu::runnable_isas();
  std::printf("CPU: %s; levels:", cpu::cpu_description().c_str());
  for (CpuIsa isa : isas) std::printf(" %s", cpu::isa_name(isa));
  std::printf("\n");
  if (isas.size() == 1) GTEST_SKIP() << "only the baseline level runs on this CPU / build";
  Backend& base = cpu::cpu_backend_at(CpuIsa::kBaseline);
  for (CpuIsa isa : isas) {
    if (isa == CpuIsa::kBaseline) continue;
    Backend& other = cpu::cpu_backend_at(isa);
    for (const OpCase& op : cases()) {
      for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
        Outputs want = op.run(base, t), got = op.run(other, t);
        ASSERT_EQ(want.size(), got.size());
        double worst = 0;
        for (size_t i = 0; i < want.size(); ++i) {
          if (op.tol == Tol::kBitwise) {
            EXPECT_TRUE(testing::same_bits(got[i], want[i]))
                << op.name << " " << dtype_name(t) << " output " << i << " differs at "
                << cpu::isa_name(isa) << ": " << max_rel_error(got[i], want[i]);
          } else {
            worst = std::max(worst, max_rel_error(got[i], want[i]));
          }
        }
        EXPECT_LE(worst, bound(op.tol, t)) << op.name << " " << dtype_name(t);
        if (op.tol == Tol::kRowSum) {
          std::printf("  %-40s %-4s %s vs baseline: %.2e (bound %.1e)\n", op.name.c_str(),
                      dtype_name(t), cpu::isa_name(isa), worst, bound(op.tol, t));
        }
      }
    }
  }
}

// The active level is the highest runnable one unless oneDNN's ISA is capped below AVX-512
// (ONEDNN_MAX_CPU_ISA=AVX2: ctest runs this binary that way too, see tests/CMakeLists.txt).
TEST(CpuIsa, ActiveLevelFollowsOneDnn) {
  const std::string onednn = cpu::onednn_isa_name();
  const bool onednn_avx512 = onednn.rfind("avx512_core", 0) == 0;
  const CpuIsa want = onednn_avx512 ? cpu::runnable_isas().back() : CpuIsa::kBaseline;
  EXPECT_EQ(int(cpu::active_isa()), int(want)) << "oneDNN: " << onednn;
  EXPECT_EQ(&cpu_backend(), &cpu::cpu_backend_at(cpu::active_isa()));
}

}  // namespace
}  // namespace shardtrain::kernels
