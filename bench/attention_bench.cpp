// attention_bench.cpp — the CPU attention kernels against this CPU's GEMM, side by side.
//
// For each kernel level this CPU runs (kernels/cpu/cpu_isa.h) and each storage type: the
// forward and the backward at the shape of bench/step_bench.py's step (B 8, T 256, H 4, D 64)
// by default, best of several timed calls after a warm-up, on the OpenMP threads the environment
// gives. FLOPs are the products the causal kernel must do (the visible half of the T x T
// scores): forward 2 products (S = Q K^T, O = P V), backward 5 (S again, dP, dQ, dK, dV), each
// 2 * D per visible (query, key) pair. Printed next to oneDNN's fp32 GEMM at 2048^3 measured
// in the same run, with the CPU named: the attention products are GEMM-shaped, so that is the
// ceiling they are read against.
//
//   attention_bench [B T H D]
// Prints one JSON object per (level, dtype, pass).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_isa.h"
#include "kernels/gemm.h"
#include "runtime/dtype.h"

namespace {

using shardtrain::DType;
namespace kernels = shardtrain::kernels;
namespace cpu = shardtrain::kernels::cpu;

// Best wall time of fn over enough calls for ~0.5 s (at least 3), after one warm-up call.
template <class F>
double best_seconds(F fn) {
  fn();
  auto t0 = std::chrono::steady_clock::now();
  fn();
  double best = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int reps = std::max(3, int(0.5 / std::max(best, 1e-6)));
  for (int r = 0; r < reps; ++r) {
    t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

double gemm_peak_gflops() {
  const int64_t n = 2048;
  std::vector<float> a(size_t(n * n), 0.5f), b(size_t(n * n), 0.25f), c(size_t(n * n));
  kernels::GemmDesc d;
  d.shape = {n, n, n, 1};
  const double s = best_seconds([&] { kernels::gemm(d, a.data(), b.data(), c.data()); });
  return 2.0 * double(n) * double(n) * double(n) / s / 1e9;
}

// Storage of `count` values drawn from N(0, 1) in dtype t.
std::vector<char> random_values(DType t, int64_t count, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<char> v(size_t(count) * size_t(shardtrain::dtype_bytes(t)));
  for (int64_t i = 0; i < count; ++i) {
    const float x = dist(rng);
    if (t == DType::kF32) {
      reinterpret_cast<float*>(v.data())[i] = x;
    } else {
      reinterpret_cast<shardtrain::BFloat16*>(v.data())[i] =
          shardtrain::from_float<shardtrain::BFloat16>(x);
    }
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  kernels::AttentionShape s{8, 256, 4, 64};
  if (argc == 5) {
    s = {std::atoll(argv[1]), std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4])};
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: attention_bench [B T H D]\n");
    return 2;
  }
  if (s.batch < 1 || s.seq < 1 || s.heads < 1 || s.head_dim < 1) {
    std::fprintf(stderr, "attention_bench: B, T, H and D must be positive\n");
    return 2;
  }
  const double pairs = double(s.batch * s.heads) * double(s.seq) * double(s.seq + 1) / 2;
  const double product = 2.0 * double(s.head_dim) * pairs;  // one causal product's FLOPs
  const double peak = gemm_peak_gflops();
  const int64_t rows = s.batch * s.seq, width = s.heads * s.head_dim;
  for (cpu::CpuIsa isa : cpu::runnable_isas()) {
    kernels::Backend& be = cpu::cpu_backend_at(isa);
    for (DType t : {DType::kF32, DType::kBF16}) {
      std::mt19937 rng(1);
      std::vector<char> qkv = random_values(t, rows * 3 * width, rng);
      std::vector<char> dout = random_values(t, rows * width, rng);
      std::vector<char> out(dout.size()), dqkv(qkv.size());
      std::vector<float> lse(size_t(s.batch * s.heads * s.seq));
      const double fwd =
          best_seconds([&] { be.attention_forward(t, out.data(), lse.data(), qkv.data(), s); });
      const double bwd = best_seconds([&] {
        be.attention_backward(t, dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s);
      });
      for (auto [pass, sec, products] :
           {std::tuple{"forward", fwd, 2.0}, std::tuple{"backward", bwd, 5.0}}) {
        const double gflops = products * product / sec / 1e9;
        std::printf(
            "{\"level\": \"%s\", \"dtype\": \"%s\", \"pass\": \"%s\", \"B\": %lld, \"T\": %lld, "
            "\"H\": %lld, \"D\": %lld, \"threads\": %d, \"ms\": %.3f, \"gflops\": %.1f, "
            "\"gemm_peak_f32_2048\": %.1f, \"of_peak\": %.2f, \"cpu\": \"%s\"}\n",
            cpu::isa_name(isa), shardtrain::dtype_name(t), pass, (long long)s.batch,
            (long long)s.seq, (long long)s.heads, (long long)s.head_dim, omp_get_max_threads(),
            sec * 1e3, gflops, peak, gflops / peak, cpu::cpu_description().c_str());
      }
    }
  }
  return 0;
}
