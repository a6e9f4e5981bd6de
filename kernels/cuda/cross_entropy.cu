// cross_entropy.cu — fused softmax cross-entropy on the GPU; one source for nvcc and emu.
//
// A direct port of kernels/cpu/cross_entropy.cpp: one 256-thread block per row (a GPT-2 row is
// 50,257 logits, ~200 per thread), threads striding the vocabulary so every warp load is
// coalesced. Forward is two passes over the row (max, then the max-subtracted sum of
// exponentials) with block reductions; the loss is (max - x_target) + log(sum), as on the CPU,
// so a large lse's rounding does not land in a loss of order 1. Backward rebuilds the softmax
// from the saved lse; each element is read and then written by the same thread, so dlogits
// may alias logits. The CPU backend's exp is its own polynomial (<= 1.5 ulp), the GPU's expf
// is within 2 ulp; tests allow for both.
#include "kernels/cross_entropy.h"
#include "kernels/cuda/launch.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_forward_kernel(float* __restrict__ losses, float* __restrict__ lse,
                                 const T* __restrict__ logits, const int32_t* __restrict__ targets,
                                 long long V, long long Vv) {
  ST_SHARED(float, scratch, 33);
  const long long r = blockIdx.x;
  const T* x = logits + r * V;  // (V); columns >= Vv are padding, never read
  // 1. Row max over the real vocabulary.
  float m = -INFINITY;
  for (long long c = threadIdx.x; c < Vv; c += kThreads) m = fmaxf(m, to_float(x[c]));
  m = block_reduce<true>(m, scratch);
  // 2. Max-subtracted sum of exponentials (the max term is 1, so sum >= 1).
  float sum = 0.0f;
  for (long long c = threadIdx.x; c < Vv; c += kThreads) sum += expf(to_float(x[c]) - m);
  sum = block_reduce<false>(sum, scratch);
  if (threadIdx.x == 0) {
    const float log_sum = logf(sum);
    lse[r] = m + log_sum;
    const int32_t t = targets[r];
    losses[r] = t < 0 ? 0.0f : (m - to_float(x[t])) + log_sum;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_backward_kernel(T* dlogits, const T* logits, const float* __restrict__ lse,
                                  const int32_t* __restrict__ targets, float grad_weight,
                                  long long V, long long Vv) {
  const long long r = blockIdx.x;
  const int32_t t = targets[r];
  T* d = dlogits + r * V;       // (V), may be the logits row itself
  const T* x = logits + r * V;  // (V)
  const float L = lse[r];
  for (long long c = threadIdx.x; c < V; c += kThreads) {
    float g = 0.0f;  // ignored rows and padding columns get no gradient
    if (t >= 0 && c < Vv) g = (expf(to_float(x[c]) - L) - (c == t ? 1.0f : 0.0f)) * grad_weight;
    d[c] = from_float<T>(g);
  }
}

}  // namespace

template <class T>
Status cross_entropy_forward(float* losses, float* lse, const T* logits, const int32_t* targets,
                             LogitsShape s, int64_t valid_vocab, Stream stream) {
  if (s.rows == 0) return kOk;
  return launch(cross_entropy_forward_kernel<T>, dim3(unsigned(s.rows)), dim3(kThreads), 0, stream,
                losses, lse, logits, targets, (long long)s.vocab, (long long)valid_vocab);
}

template <class T>
Status cross_entropy_backward(T* dlogits, const T* logits, const float* lse, const int32_t* targets,
                              float grad_weight, LogitsShape s, int64_t valid_vocab,
                              Stream stream) {
  if (s.rows == 0) return kOk;
  return launch(cross_entropy_backward_kernel<T>, dim3(unsigned(s.rows)), dim3(kThreads), 0, stream,
                dlogits, logits, lse, targets, grad_weight, (long long)s.vocab,
                (long long)valid_vocab);
}

#define ST_INSTANTIATE(T)                                                                         \
  template Status cross_entropy_forward<T>(float*, float*, const T*, const int32_t*, LogitsShape, \
                                           int64_t, Stream);                                      \
  template Status cross_entropy_backward<T>(T*, const T*, const float*, const int32_t*, float,    \
                                            LogitsShape, int64_t, Stream);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

}  // namespace shardtrain::kernels::ST_GPU_NS
