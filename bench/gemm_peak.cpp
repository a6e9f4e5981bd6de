// gemm_peak.cpp — what this CPU's GEMM reaches: kernels::gemm (oneDNN, and the widened path
// for bf16 where oneDNN has none) at given shapes and storage types, on the OpenMP threads the
// environment gives (OMP_NUM_THREADS). bench/step_bench.py runs it beside the training step,
// so the step's achieved GFLOP/s is read against the peak measured in the same run.
//
//   gemm_peak DTYPE[:LAYOUT] M N K [M N K ...]   DTYPE: f32 | bf16; LAYOUT: NN TN NT TT, + = beta 1
// Prints one JSON object per shape: {"dtype", "m", "n", "k", "gflops", "cpu"} — the best of
// several timed repetitions after a warm-up (primitive creation and first touch excluded).
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_isa.h"
#include "kernels/gemm.h"
#include "runtime/dtype.h"

namespace {

using shardtrain::BFloat16;
using shardtrain::DType;
namespace kernels = shardtrain::kernels;

double best_gflops(DType t, bool trans_a, bool trans_b, float beta, int64_t m, int64_t n,
                   int64_t k) {
  const size_t es = t == DType::kF32 ? 4 : 2;
  std::vector<char> a(size_t(m * k) * es), b(size_t(k * n) * es);
  std::vector<float> c(size_t(m * n));
  // Values of order 1 (the bits of 0.5 in the type) so no denormal slows anything down.
  for (size_t i = 0; i < size_t(m * k); ++i) {
    if (t == DType::kF32)
      reinterpret_cast<float*>(a.data())[i] = 0.5f;
    else
      reinterpret_cast<BFloat16*>(a.data())[i] = shardtrain::from_float<BFloat16>(0.5f);
  }
  for (size_t i = 0; i < size_t(k * n); ++i) {
    if (t == DType::kF32)
      reinterpret_cast<float*>(b.data())[i] = 0.25f;
    else
      reinterpret_cast<BFloat16*>(b.data())[i] = shardtrain::from_float<BFloat16>(0.25f);
  }
  kernels::GemmDesc d;
  d.shape = {m, n, k, 1};
  d.ab_dtype = t;
  d.c_dtype = DType::kF32;
  d.trans_a = trans_a;
  d.trans_b = trans_b;
  d.beta = beta;
  kernels::gemm(d, a.data(), b.data(), c.data());  // warm-up: primitive, pages
  const double flops = 2.0 * double(m) * double(n) * double(k);
  // Enough repetitions for ~0.3 s per shape, at least 3.
  auto t0 = std::chrono::steady_clock::now();
  kernels::gemm(d, a.data(), b.data(), c.data());
  double once = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int reps = std::max(3, int(0.3 / std::max(once, 1e-6)));
  double best = once;
  for (int r = 0; r < reps; ++r) {
    t0 = std::chrono::steady_clock::now();
    kernels::gemm(d, a.data(), b.data(), c.data());
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return flops / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5 || (argc - 2) % 3 != 0) {
    std::fprintf(stderr, "usage: gemm_peak f32|bf16[:NN|TN|NT|TT[+]] M N K [M N K ...]\n");
    return 2;
  }
  // DTYPE[:LAYOUT]: LAYOUT names op(A) and op(B) as stored (T = transposed), a trailing +
  // accumulates into C (beta 1), as the weight gradients do; default NN, beta 0.
  const std::string arg = argv[1];
  const size_t colon = arg.find(':');
  const std::string dtype = arg.substr(0, colon);
  const std::string layout = colon == std::string::npos ? "NN" : arg.substr(colon + 1);
  const bool layout_ok = (layout.size() == 2 || (layout.size() == 3 && layout[2] == '+')) &&
                         (layout[0] == 'N' || layout[0] == 'T') &&
                         (layout[1] == 'N' || layout[1] == 'T');
  if ((dtype != "f32" && dtype != "bf16") || !layout_ok) {
    std::fprintf(stderr, "gemm_peak: expected f32|bf16[:NN|TN|NT|TT[+]], got %s\n", arg.c_str());
    return 2;
  }
  const DType t = dtype == "f32" ? DType::kF32 : DType::kBF16;
  const bool trans_a = layout[0] == 'T', trans_b = layout[1] == 'T';
  const float beta = layout.size() == 3 ? 1.0f : 0.0f;
  const std::string cpu = kernels::cpu::cpu_description();
  for (int i = 2; i + 2 < argc; i += 3) {
    const int64_t m = std::atoll(argv[i]), n = std::atoll(argv[i + 1]), k = std::atoll(argv[i + 2]);
    std::printf(
        "{\"dtype\": \"%s\", \"layout\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, "
        "\"threads\": %d, \"gflops\": %.1f, \"cpu\": \"%s\"}\n",
        dtype.c_str(), layout.c_str(), (long long)m, (long long)n, (long long)k,
        omp_get_max_threads(), best_gflops(t, trans_a, trans_b, beta, m, n, k), cpu.c_str());
  }
  return 0;
}
