// attention_gpu_bench.cpp — the CUDA attention kernels (kernels/cuda/attention*.cu) on this GPU.
//
// Forward and backward at one shape (default GPT-2's: B 16, T 1024, H 12, D 64), bf16 and fp16,
// timed with CUDA events: the median of 20 calls after 3 warm-ups, on random inputs. FLOPs are
// the products the causal kernel must do (the visible half of the T x T scores, as in
// bench/attention_bench.cpp): forward 2 (Q K^T, P V), backward 5 (Q K^T again, dP, dQ, dK, dV),
// 2 * D each per visible (query, key) pair. bench/attention_gpu_bench.py runs PyTorch's
// scaled_dot_product_attention at the same shapes, counted the same way.
//
//   attention_gpu_bench [B T H D]
// Prints one JSON object per (dtype, pass), and at D = 64 one more for the forward with 16 query
// rows per warp (impl "shardtrain m_tiles=1"); exit 77 with the reason where no GPU is usable.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <tuple>
#include <vector>

#include "kernels/cuda/ops.h"
#include "runtime/dtype.h"

namespace {

namespace kernels = shardtrain::kernels;

#define BENCH_CHECK(expr)                                                                   \
  do {                                                                                      \
    const cudaError_t e_ = (expr);                                                          \
    if (e_ != cudaSuccess) {                                                                \
      std::fprintf(stderr, "attention_gpu_bench: %s: %s\n", #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

// Median milliseconds of fn over 20 event-timed calls after 3 warm-ups.
template <class F>
double median_ms(F fn) {
  for (int i = 0; i < 3; ++i) fn();
  cudaEvent_t a, b;
  BENCH_CHECK(cudaEventCreate(&a));
  BENCH_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    BENCH_CHECK(cudaEventRecord(a));
    fn();
    BENCH_CHECK(cudaEventRecord(b));
    BENCH_CHECK(cudaEventSynchronize(b));
    float t = 0;
    BENCH_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

template <class T>
T* device_random(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<T> host(n);
  for (auto& v : host) v = shardtrain::from_float<T>(dist(rng));
  void* p = nullptr;
  BENCH_CHECK(cudaMalloc(&p, n * sizeof(T)));
  BENCH_CHECK(cudaMemcpy(p, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  return static_cast<T*>(p);
}

template <class T>
void run(const char* dtype, kernels::AttentionShape s, const char* gpu) {
  std::mt19937 rng(1);
  const size_t rows = size_t(s.batch * s.seq), width = size_t(s.heads * s.head_dim);
  T* qkv = device_random<T>(rows * 3 * width, rng);
  T* dout = device_random<T>(rows * width, rng);
  T *out = nullptr, *dqkv = nullptr;
  float *lse = nullptr, *ws = nullptr;
  BENCH_CHECK(cudaMalloc(reinterpret_cast<void**>(&out), rows * width * sizeof(T)));
  BENCH_CHECK(cudaMalloc(reinterpret_cast<void**>(&dqkv), rows * 3 * width * sizeof(T)));
  BENCH_CHECK(cudaMalloc(reinterpret_cast<void**>(&lse), size_t(s.batch * s.heads * s.seq) * 4));
  BENCH_CHECK(cudaMalloc(reinterpret_cast<void**>(&ws),
                         size_t(kernels::cuda::attention_backward_workspace_numel(s)) * 4));
  const double fwd = median_ms(
      [&] { BENCH_CHECK(kernels::cuda::attention_forward<T>(out, lse, qkv, s, nullptr)); });
  const double bwd = median_ms([&] {
    BENCH_CHECK(kernels::cuda::attention_backward<T>(dqkv, dout, qkv, out, lse, ws, s, nullptr));
  });
  // At D = 64 also the other forward tile shape (16 query rows per warp, m_tiles 1; the default
  // is 32): which one the GPU prefers is what this row is for.
  const double fwd16 = s.head_dim != 64 ? 0.0 : median_ms([&] {
    BENCH_CHECK(kernels::cuda::attention_forward<T>(out, lse, qkv, s, nullptr, 1));
  });
  const double pairs = double(s.batch * s.heads) * double(s.seq) * double(s.seq + 1) / 2;
  const double product = 2.0 * double(s.head_dim) * pairs;
  for (auto [impl, pass, ms, products] :
       {std::tuple{"shardtrain", "forward", fwd, 2.0},
        std::tuple{"shardtrain", "backward", bwd, 5.0},
        std::tuple{"shardtrain m_tiles=1", "forward", fwd16, 2.0}}) {
    if (ms == 0.0) continue;
    std::printf(
        "{\"impl\": \"%s\", \"dtype\": \"%s\", \"pass\": \"%s\", \"B\": %lld, \"T\": %lld, "
        "\"H\": %lld, \"D\": %lld, \"ms\": %.4f, \"tflops\": %.2f, \"gpu\": \"%s\"}\n",
        impl, dtype, pass, (long long)s.batch, (long long)s.seq, (long long)s.heads,
        (long long)s.head_dim, ms, products * product / (ms * 1e-3) / 1e12, gpu);
  }
  for (void* p : {static_cast<void*>(qkv), static_cast<void*>(dout), static_cast<void*>(out),
                  static_cast<void*>(dqkv), static_cast<void*>(lse), static_cast<void*>(ws)}) {
    cudaFree(p);
  }
}

}  // namespace

int main(int argc, char** argv) {
  kernels::AttentionShape s{16, 1024, 12, 64};
  if (argc == 5) {
    s = {std::atoll(argv[1]), std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4])};
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: attention_gpu_bench [B T H D]\n");
    return 2;
  }
  if (s.batch < 1 || s.seq < 1 || s.heads < 1 || (s.head_dim != 64 && s.head_dim != 128)) {
    std::fprintf(stderr, "attention_gpu_bench: B, T, H must be positive and D 64 or 128\n");
    return 2;
  }
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("SKIP: no usable CUDA device (%s)\n",
                e != cudaSuccess ? cudaGetErrorName(e) : "0 devices");
    return 77;
  }
  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  run<shardtrain::BFloat16>("bf16", s, prop.name);
  run<shardtrain::Half>("f16", s, prop.name);
  return 0;
}
