// tensor_parallel.cu — the vocab-parallel embedding and cross-entropy pieces on the GPU; one
// source for nvcc and kernels/emu.
//
// Ports of the CPU functions of the same names (kernels/cpu/tensor_parallel.cpp, which are the
// model's former host loops):
//  - embedding_lookup_slice / add_positions: grid-stride gathers, one 16-byte pack of a row per
//    thread when C is a multiple of the pack and the pointers are aligned, else one element.
//    The lookup copies stored bits (zeros outside the slice); add_positions is one fp32 add and
//    one rounding. Both bitwise equal to the CPU.
//  - embedding_backward_slice: the positions sorted by their row in the slice (token_sort.h,
//    stable), then one thread per (row, channel) adds its positions in order (as embedding.cu's
//    wte backward); positions_backward: one thread per (first position, channel)
//    walks the positions that share its wpe row, in order. The same fp32 additions in the same
//    order as the CPU: bitwise equal, no atomics.
//  - cross-entropy pieces: one 256-thread block per row, threads striding the vocabulary slice
//    (coalesced). The row max is the first maximal column (value, then index), which is the CPU
//    loop's answer even for the sign of a zero maximum; the sum of exponentials is in double with
//    a fixed reduction tree (deterministic; the CPU sums sequentially, so it differs by rounding
//    only); the backward is element by element with expf (the CPU's std::exp on float).
#include <climits>
#include <cmath>

#include "kernels/cross_entropy.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/token_sort.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

constexpr int kThreads = 256;
constexpr long long kMaxBlocks = 65535;

// A loop nvcc must not unroll (the emulator needs no hint): unrolling the sum of double
// exponentials makes ptxas spill 8 bytes around exp's slow path, with 40 registers in use.
#if defined(__CUDACC__)
#define ST_NO_UNROLL _Pragma("unroll 1")
#else
#define ST_NO_UNROLL
#endif

// out row i = wte row (tokens[i] - vocab_begin) if inside the slice, else zero bits.
template <class T>
__global__ void __launch_bounds__(kThreads)
    embedding_lookup_slice_kernel(T* __restrict__ out, const int32_t* __restrict__ tokens,
                                  const T* __restrict__ wte, long long vocab_begin,
                                  long long vocab_rows, long long n, long long C, bool vec) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (vec) {
    constexpr int kN = Pack<T>::kN;
    const long long packs_per_row = C / kN;
    for (long long p = first; p < n * packs_per_row; p += stride) {
      const long long i = p / packs_per_row, c = (p % packs_per_row) * kN;
      const long long v = (long long)tokens[i] - vocab_begin;
      Pack<T> o;
      if (v >= 0 && v < vocab_rows) {
        o = load_pack(wte + v * C + c);
      } else {
        for (int j = 0; j < kN; ++j) o.v[j] = T{};
      }
      store_pack(out + i * C + c, o);
    }
    return;
  }
  for (long long k = first; k < n * C; k += stride) {
    const long long i = k / C, c = k % C;
    const long long v = (long long)tokens[i] - vocab_begin;
    out[k] = v >= 0 && v < vocab_rows ? wte[v * C + c] : T{};
  }
}

// x row i += wpe row ((row0 + i) % seq), one rounding.
template <class T>
__global__ void __launch_bounds__(kThreads)
    add_positions_kernel(T* __restrict__ x, const T* __restrict__ wpe, long long rows,
                         long long row0, long long seq, long long C, bool vec) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (vec) {
    constexpr int kN = Pack<T>::kN;
    const long long packs_per_row = C / kN;
    for (long long p = first; p < rows * packs_per_row; p += stride) {
      const long long i = p / packs_per_row, c = (p % packs_per_row) * kN;
      const Pack<T> xv = load_pack(x + i * C + c);
      const Pack<T> pv = load_pack(wpe + ((row0 + i) % seq) * C + c);
      Pack<T> o;
      for (int j = 0; j < kN; ++j) o.v[j] = from_float<T>(to_float(xv.v[j]) + to_float(pv.v[j]));
      store_pack(x + i * C + c, o);
    }
    return;
  }
  for (long long k = first; k < rows * C; k += stride) {
    const long long i = k / C, c = k % C;
    x[k] = from_float<T>(to_float(x[k]) + to_float(wpe[((row0 + i) % seq) * C + c]));
  }
}

// dwpe[(row0 + i) % seq][c] += dout[i][c], i ascending. Thread (i0, c) for i0 < min(rows, seq)
// owns wpe row (row0 + i0) % seq and adds positions i0, i0 + seq, ... (every position whose row
// it is), so each gradient element has one owner.
template <class T>
__global__ void __launch_bounds__(kThreads)
    positions_backward_kernel(float* __restrict__ dwpe, const T* __restrict__ dout, long long rows,
                              long long row0, long long seq, long long C, long long owners) {
  const long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (k >= owners * C) return;
  const long long i0 = k / C, c = k % C;
  float* g = dwpe + ((row0 + i0) % seq) * C + c;
  float acc = *g;
  for (long long i = i0; i < rows; i += seq) acc += to_float(dout[i * C + c]);
  *g = acc;
}

// (value, column) of the first maximal column: the larger value wins, a tie the lower column.
// NaN never enters (x > m is false for it), as in the CPU's std::max loop.
struct MaxAt {
  float v;
  int j;
};
ST_DEVICE MaxAt better(MaxAt a, MaxAt b) { return b.v > a.v || (b.v == a.v && b.j < a.j) ? b : a; }

template <class T>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_partial_max_kernel(double* __restrict__ row_max,
                                     double* __restrict__ target_logit,
                                     const T* __restrict__ logits,
                                     const int32_t* __restrict__ targets, long long vocab_begin,
                                     long long V, long long valid) {
  ST_SHARED(float, max_v, kThreads);
  ST_SHARED(int, max_j, kThreads);
  const long long r = blockIdx.x;
  const T* x = logits + r * V;  // (V); columns >= valid are not read
  // 1. Each thread's first maximum over its columns.
  MaxAt m{-INFINITY, INT_MAX};
  for (long long j = threadIdx.x; j < valid; j += kThreads) {
    const float v = to_float(x[j]);
    if (v > m.v) m = MaxAt{v, int(j)};
  }
  // 2. The block's: through shared memory to warp 0, whose lane l combines threads l, l + 32,
  //    ..., then a butterfly (one barrier; warp collectives in one warp only).
  max_v[threadIdx.x] = m.v;
  max_j[threadIdx.x] = m.j;
  __syncthreads();
  if (threadIdx.x >= 32) return;
  m = MaxAt{max_v[threadIdx.x], max_j[threadIdx.x]};
  for (int k = int(threadIdx.x) + 32; k < kThreads; k += 32) {
    m = better(m, MaxAt{max_v[size_t(k)], max_j[size_t(k)]});
  }
  for (int o = 16; o > 0; o >>= 1) {
    m = better(m, MaxAt{__shfl_xor_sync(kFullMask, m.v, o), __shfl_xor_sync(kFullMask, m.j, o)});
  }
  if (threadIdx.x != 0) return;
  row_max[r] = double(m.v);
  // 3. The target's logit, if this slice holds it.
  const long long tg = targets[r], t = tg - vocab_begin;
  target_logit[r] = tg >= 0 && t >= 0 && t < valid ? double(to_float(x[t])) : 0.0;
}

// sum[r] = sum over j < valid of exp(double(x_j - float(row_max[r]))): per-thread sums in column
// order, then a fixed tree (shared memory to warp 0, lane l adding threads l, l + 32, ..., then
// a butterfly).
template <class T>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_partial_sumexp_kernel(double* __restrict__ sum, const T* __restrict__ logits,
                                        const double* __restrict__ row_max, long long V,
                                        long long valid) {
  ST_SHARED(double, sums, kThreads);
  const long long r = blockIdx.x;
  const T* x = logits + r * V;
  const float m = float(row_max[r]);
  double acc = 0.0;
  ST_NO_UNROLL
  for (long long j = threadIdx.x; j < valid; j += kThreads) acc += exp(double(to_float(x[j]) - m));
  sums[threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.x >= 32) return;
  acc = sums[threadIdx.x];
  for (int k = int(threadIdx.x) + 32; k < kThreads; k += 32) acc += sums[size_t(k)];
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(kFullMask, acc, o);
  if (threadIdx.x == 0) sum[r] = acc;
}

// dlogits = (expf(x - lse) - onehot) * grad_weight over the real columns of kept rows, else
// 0 * grad_weight. Each element is read, then written, by one thread: dlogits may be logits.
template <class T>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_backward_slice_kernel(T* dlogits, const T* logits, const float* __restrict__ lse,
                                        const int32_t* __restrict__ targets, long long vocab_begin,
                                        float grad_weight, long long V, long long valid) {
  const long long r = blockIdx.x;
  const long long tg = targets[r], t = tg - vocab_begin;
  T* d = dlogits + r * V;
  const T* x = logits + r * V;
  const float L = lse[r];
  for (long long j = threadIdx.x; j < V; j += kThreads) {
    float g = 0.0f;
    if (tg >= 0 && j < valid) g = expf(to_float(x[j]) - L) - (j == t ? 1.0f : 0.0f);
    d[j] = from_float<T>(g * grad_weight);
  }
}

unsigned blocks_for(long long work) {
  long long b = (work + kThreads - 1) / kThreads;
  return unsigned(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

__global__ void __launch_bounds__(kThreads)
    cross_entropy_from_partials_kernel(float* __restrict__ losses, float* __restrict__ lse,
                                       const double* __restrict__ row_max,
                                       const double* __restrict__ sum,
                                       const double* __restrict__ target_logit,
                                       const int32_t* __restrict__ targets, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
    const float l = float(row_max[i] + log(sum[i]));
    lse[i] = l;
    losses[i] = targets[i] < 0 ? 0.0f : float(double(l) - target_logit[i]);
  }
}

}  // namespace

template <class T>
Status embedding_lookup_slice(T* out, const int32_t* tokens, const T* wte, int64_t vocab_begin,
                              int64_t vocab_rows, int64_t n, int64_t C, Stream stream) {
  if (n == 0 || C == 0) return kOk;
  const bool vec = C % Pack<T>::kN == 0 && is_aligned16(out) && is_aligned16(wte);
  const long long work = vec ? n * (C / Pack<T>::kN) : n * C;
  return launch(embedding_lookup_slice_kernel<T>, dim3(blocks_for(work)), dim3(kThreads), 0, stream,
                out, tokens, wte, (long long)vocab_begin, (long long)vocab_rows, (long long)n,
                (long long)C, vec);
}

template <class T>
Status add_positions(T* x, const T* wpe, int64_t rows, int64_t row0, int64_t seq, int64_t C,
                     Stream stream) {
  if (rows == 0 || C == 0) return kOk;
  const bool vec = C % Pack<T>::kN == 0 && is_aligned16(x) && is_aligned16(wpe);
  const long long work = vec ? rows * (C / Pack<T>::kN) : rows * C;
  return launch(add_positions_kernel<T>, dim3(blocks_for(work)), dim3(kThreads), 0, stream, x, wpe,
                (long long)rows, (long long)row0, (long long)seq, (long long)C, vec);
}

template <class T>
Status embedding_backward_slice(float* dwte, const T* dout, const int32_t* tokens,
                                int64_t vocab_begin, int64_t vocab_rows, int64_t n, int64_t C,
                                int32_t* workspace, Stream stream) {
  if (n == 0 || C == 0 || vocab_rows == 0) return kOk;
  return sorted_rows_backward<T>(dwte, dout, tokens, (long long)vocab_begin, (long long)vocab_rows,
                                 (long long)n, (long long)C, workspace, stream);
}

template <class T>
Status positions_backward(float* dwpe, const T* dout, int64_t rows, int64_t row0, int64_t seq,
                          int64_t C, Stream stream) {
  if (rows == 0 || C == 0) return kOk;
  const long long owners = rows < seq ? rows : seq;
  return launch(positions_backward_kernel<T>,
                dim3(unsigned((owners * C + kThreads - 1) / kThreads)), dim3(kThreads), 0, stream,
                dwpe, dout, (long long)rows, (long long)row0, (long long)seq, (long long)C, owners);
}

template <class T>
Status cross_entropy_partial_max(double* row_max, double* target_logit, const T* logits,
                                 const int32_t* targets, int64_t vocab_begin, LogitsShape s,
                                 int64_t valid, Stream stream) {
  if (s.rows == 0) return kOk;
  return launch(cross_entropy_partial_max_kernel<T>, dim3(unsigned(s.rows)), dim3(kThreads), 0,
                stream, row_max, target_logit, logits, targets, (long long)vocab_begin,
                (long long)s.vocab, (long long)valid);
}

template <class T>
Status cross_entropy_partial_sumexp(double* sum, const T* logits, const double* row_max,
                                    LogitsShape s, int64_t valid, Stream stream) {
  if (s.rows == 0) return kOk;
  return launch(cross_entropy_partial_sumexp_kernel<T>, dim3(unsigned(s.rows)), dim3(kThreads), 0,
                stream, sum, logits, row_max, (long long)s.vocab, (long long)valid);
}

template <class T>
Status cross_entropy_backward_slice(T* dlogits, const T* logits, const float* lse,
                                    const int32_t* targets, int64_t vocab_begin, float grad_weight,
                                    LogitsShape s, int64_t valid, Stream stream) {
  if (s.rows == 0 || s.vocab == 0) return kOk;
  return launch(cross_entropy_backward_slice_kernel<T>, dim3(unsigned(s.rows)), dim3(kThreads), 0,
                stream, dlogits, logits, lse, targets, (long long)vocab_begin, grad_weight,
                (long long)s.vocab, (long long)valid);
}

Status cross_entropy_from_partials(float* losses, float* lse, const double* row_max,
                                   const double* sum, const double* target_logit,
                                   const int32_t* targets, int64_t n, Stream stream) {
  if (n == 0) return kOk;
  long long blocks = (n + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return launch(cross_entropy_from_partials_kernel, dim3(unsigned(blocks)), dim3(kThreads), 0,
                stream, losses, lse, row_max, sum, target_logit, targets, (long long)n);
}

#define ST_INSTANTIATE(T)                                                                         \
  template Status embedding_lookup_slice<T>(T*, const int32_t*, const T*, int64_t, int64_t,       \
                                            int64_t, int64_t, Stream);                            \
  template Status add_positions<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t, Stream);     \
  template Status embedding_backward_slice<T>(float*, const T*, const int32_t*, int64_t, int64_t, \
                                              int64_t, int64_t, int32_t*, Stream);                \
  template Status positions_backward<T>(float*, const T*, int64_t, int64_t, int64_t, int64_t,     \
                                        Stream);                                                  \
  template Status cross_entropy_partial_max<T>(double*, double*, const T*, const int32_t*,        \
                                               int64_t, LogitsShape, int64_t, Stream);            \
  template Status cross_entropy_partial_sumexp<T>(double*, const T*, const double*, LogitsShape,  \
                                                  int64_t, Stream);                               \
  template Status cross_entropy_backward_slice<T>(T*, const T*, const float*, const int32_t*,     \
                                                  int64_t, float, LogitsShape, int64_t, Stream);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE
#undef ST_NO_UNROLL

}  // namespace shardtrain::kernels::ST_GPU_NS
