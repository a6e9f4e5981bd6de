// embedding.cu — token + position embedding on the GPU; one source for nvcc and emu.
//
// Forward is a gather: one thread per 16-byte pack of a (b,t) row when C and the pointers
// allow (8 bf16/f16 or 4 fp32 channels), else one per element. Backward has the CPU backend's
// deterministic scatter-add order: the positions are sorted by token (token_sort.h, stable)
// and one thread per (token, channel) adds its positions in (b,t) order into dwte[token]; one
// thread per (t, channel) adds the batch in order into dwpe — the same additions in the same
// order as kernels/cpu/embedding.cpp, hence the same bits, with no atomics.
#include "kernels/cuda/launch.h"
#include "kernels/cuda/token_sort.h"
#include "kernels/embedding.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

constexpr int kThreads = 256;
constexpr long long kMaxBlocks = 65535;

template <class T>
__global__ void __launch_bounds__(kThreads)
    embedding_forward_kernel(T* __restrict__ out, const int32_t* __restrict__ tokens,
                             const T* __restrict__ wte, const T* __restrict__ wpe, long long N,
                             long long seq, long long C, bool vec) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (vec) {
    constexpr int kN = Pack<T>::kN;
    const long long packs_per_row = C / kN;
    for (long long k = first; k < N * packs_per_row; k += stride) {
      const long long i = k / packs_per_row, c = (k % packs_per_row) * kN;
      const Pack<T> e = load_pack(wte + (long long)tokens[i] * C + c);
      const Pack<T> p = load_pack(wpe + (i % seq) * C + c);
      Pack<T> o;
      for (int j = 0; j < kN; ++j) o.v[j] = from_float<T>(to_float(e.v[j]) + to_float(p.v[j]));
      store_pack(out + i * C + c, o);
    }
    return;
  }
  for (long long k = first; k < N * C; k += stride) {
    const long long i = k / C, c = k % C;
    out[k] = from_float<T>(to_float(wte[(long long)tokens[i] * C + c]) +
                           to_float(wpe[(i % seq) * C + c]));
  }
}

// dwpe[t, c] += dout[b, t, c] for b ascending; one thread per (t, c).
template <class T>
__global__ void __launch_bounds__(kThreads)
    embedding_backward_wpe_kernel(float* __restrict__ dwpe, const T* __restrict__ dout,
                                  long long batch, long long seq, long long C) {
  const long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (k >= seq * C) return;
  float acc = dwpe[k];
  for (long long b = 0; b < batch; ++b) acc += to_float(dout[b * seq * C + k]);
  dwpe[k] = acc;
}

unsigned blocks_for(long long work) {
  long long b = (work + kThreads - 1) / kThreads;
  return unsigned(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

}  // namespace

template <class T>
Status embedding_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe,
                         EmbeddingShape s, Stream stream) {
  const long long N = s.batch * s.seq, C = s.channels;
  if (N == 0 || C == 0) return kOk;
  const bool vec =
      C % Pack<T>::kN == 0 && is_aligned16(out) && is_aligned16(wte) && is_aligned16(wpe);
  const long long work = vec ? N * (C / Pack<T>::kN) : N * C;
  return launch(embedding_forward_kernel<T>, dim3(blocks_for(work)), dim3(kThreads), 0, stream, out,
                tokens, wte, wpe, N, (long long)s.seq, C, vec);
}

template <class T>
Status embedding_backward(float* dwte, float* dwpe, const T* dout, const int32_t* tokens,
                          EmbeddingShape s, int32_t* workspace, Stream stream) {
  const long long N = s.batch * s.seq, C = s.channels;
  if (N == 0 || C == 0) return kOk;
  // Every token is a row (the vocabulary size is the caller's: rows is only the sort's bound).
  Status e = sorted_rows_backward<T>(dwte, dout, tokens, 0, 0x7fffffffll, N, C, workspace, stream);
  if (e != kOk) return e;
  return launch(embedding_backward_wpe_kernel<T>,
                dim3(unsigned((s.seq * C + kThreads - 1) / kThreads)), dim3(kThreads), 0, stream,
                dwpe, dout, (long long)s.batch, (long long)s.seq, C);
}

#define ST_INSTANTIATE(T)                                                                         \
  template Status embedding_forward<T>(T*, const int32_t*, const T*, const T*, EmbeddingShape,    \
                                       Stream);                                                   \
  template Status embedding_backward<T>(float*, float*, const T*, const int32_t*, EmbeddingShape, \
                                        int32_t*, Stream);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

}  // namespace shardtrain::kernels::ST_GPU_NS
