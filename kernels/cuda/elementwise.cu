// elementwise.cu — GELU, SwiGLU, residual add, bias add / gradient, fp32 accumulate and the sum of
// squares on the GPU; one source for nvcc and kernels/emu.
//
// The maps (GELU forward/backward, residual add, add_f32, add_bias) are grid-stride loops in
// which each thread moves one 16-byte pack (4 fp32 or 8 bf16/f16) per step when every pointer
// is 16-byte aligned (and, for add_bias, the row width a multiple of the pack), else one
// element; every element is read and then written by the same thread, so outputs may alias
// inputs. Residual add, add_f32 and add_bias are one fp32 add and one rounding per element, as
// the CPU backend does: bitwise equal to it. GELU is GPT-2's tanh form with tanhf (the CPU
// backend uses the equivalent sigmoid form with its own exp; tests bound the difference).
// bias_backward and sum_squares are deterministic reductions without float atomics: bias_backward
// sums fixed row groups (a function of the row count only) in row order into a workspace, then
// the groups in a fixed order (column_sum.h), like layernorm.cu's parameter gradients;
// sum_squares uses a grid of
// sum_squares_blocks(n) blocks (a function of n only), double accumulation, and one thread
// adding the block sums in order; accumulate_sum (a micro-step's loss) is the same without the
// squares, and sum_f64_in_order one thread adding a few hundred doubles in index order.
#include <cmath>

#include "kernels/cuda/column_sum.h"
#include "kernels/cuda/launch.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

constexpr int kThreads = 256;
constexpr long long kMaxBlocks = 65535;

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluA = 0.044715f;

// The element functions of the maps: f(a, b) in fp32 (unary maps ignore b).
struct GeluForwardOp {
  // 0.5 x (1 + tanh(sqrt(2/pi) (x + a x^3))). Tails: u = -inf gives 0.5 x 0 = -0, u = inf
  // gives x, as the CPU backend.
  ST_DEVICE float operator()(float x, float) const {
    const float u = kGeluK * (x + kGeluA * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
  }
};
struct GeluBackwardOp {
  // dout * gelu'(x), gelu'(x) = 0.5 (1 + th) + 0.5 x (1 - th^2) du/dx with th = tanh u and
  // du/dx = sqrt(2/pi) (1 + 3 a x^2); 1 - th^2 as (1 - th)(1 + th): near |th| = 1 the
  // factor 1 -+ th is exact, where th^2 would first round away what is left of 1 - th^2 (the
  // tanhf error itself remains: the tolerance in gpu_ops_cases.inc). Beyond |u| = 40 (the CPU
  // backend's |2u| = 80) gelu' is 0 or 1 to within 1e-32 and is set exactly, which also keeps
  // 0 * inf out of huge inputs.
  ST_DEVICE float operator()(float x, float dout) const {
    const float u = kGeluK * (x + kGeluA * x * x * x);
    const float th = tanhf(u);
    const float dudx = kGeluK * (1.0f + 3.0f * kGeluA * x * x);
    float gp = 0.5f * (1.0f + th) + 0.5f * x * ((1.0f - th) * (1.0f + th)) * dudx;
    gp = u <= -40.0f ? 0.0f : gp;
    gp = u >= 40.0f ? 1.0f : gp;
    return dout * gp;
  }
};
struct AddOp {
  ST_DEVICE float operator()(float a, float b) const { return a + b; }
};

// out[i] = T(f(a[i], b[i])) for i < n (b unread when kArity == 1). No __restrict__: out may be
// a or b.
template <class T, class F, int kArity>
__global__ void __launch_bounds__(kThreads)
    map_kernel(T* out, const T* a, const T* b, long long n, bool vec) {
  const F f;
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  long long scalar_from = 0;
  if (vec) {
    // 1. Whole packs.
    constexpr int kN = Pack<T>::kN;
    const long long packs = n / kN;
    for (long long p = first; p < packs; p += stride) {
      const Pack<T> pa = load_pack(a + p * kN);
      Pack<T> pb = pa;
      if constexpr (kArity == 2) pb = load_pack(b + p * kN);
      Pack<T> o;
      for (int j = 0; j < kN; ++j) o.v[j] = from_float<T>(f(to_float(pa.v[j]), to_float(pb.v[j])));
      store_pack(out + p * kN, o);
    }
    scalar_from = packs * kN;
  }
  // 2. The tail (or everything, unaligned), element by element.
  for (long long k = scalar_from + first; k < n; k += stride) {
    const float av = to_float(a[k]);
    const float bv = kArity == 2 ? to_float(b[k]) : av;
    out[k] = from_float<T>(f(av, bv));
  }
}

// x (rows, cols) += bias (cols), one rounding per element.
template <class T>
__global__ void __launch_bounds__(kThreads)
    add_bias_kernel(T* x, const T* __restrict__ bias, long long rows, long long cols, bool vec) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (vec) {  // cols % kN == 0: a pack never crosses a row
    constexpr int kN = Pack<T>::kN;
    const long long packs_per_row = cols / kN;
    for (long long p = first; p < rows * packs_per_row; p += stride) {
      const long long c = (p % packs_per_row) * kN;
      const Pack<T> xv = load_pack(x + p * kN);
      const Pack<T> bv = load_pack(bias + c);
      Pack<T> o;
      for (int j = 0; j < kN; ++j) o.v[j] = from_float<T>(to_float(xv.v[j]) + to_float(bv.v[j]));
      store_pack(x + p * kN, o);
    }
    return;
  }
  for (long long k = first; k < rows * cols; k += stride) {
    x[k] = from_float<T>(to_float(x[k]) + to_float(bias[k % cols]));
  }
}

// SwiGLU over gu (rows, 2F) = [gate | up]: out (rows, F) = silu(gate) up, silu(g) = g / (1 +
// e^-g) with expf (the CPU backend's own exp: tests bound the difference). Grid-stride, one
// element per step.
template <class T>
__global__ void __launch_bounds__(kThreads)
    swiglu_forward_kernel(T* __restrict__ out, const T* __restrict__ gu, long long rows,
                          long long F) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < rows * F; k += stride) {
    const T* row = gu + (k / F) * 2 * F;
    const long long f = k % F;
    const float g = to_float(row[f]);
    out[k] = from_float<T>(g / (1.0f + expf(-g)) * to_float(row[F + f]));
  }
}

// dgu = [dout up silu'(gate) | dout silu(gate)], silu'(g) = s + g (e s) s with e = e^-g,
// s = 1 / (1 + e); 0 below g = -80, where e s overflows (as the CPU backend).
template <class T>
__global__ void __launch_bounds__(kThreads)
    swiglu_backward_kernel(T* __restrict__ dgu, const T* __restrict__ gu,
                           const T* __restrict__ dout, long long rows, long long F) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < rows * F; k += stride) {
    const long long off = (k / F) * 2 * F, f = k % F;
    const float g = to_float(gu[off + f]), d = to_float(dout[k]);
    const float e = expf(-g), sg = 1.0f / (1.0f + e);
    float ds = sg + g * ((e * sg) * sg);
    ds = g <= -80.0f ? 0.0f : ds;
    dgu[off + f] = from_float<T>(d * to_float(gu[off + F + f]) * ds);
    dgu[off + F + f] = from_float<T>(d * (g * sg));
  }
}

// Row partition of the bias-gradient reduction (the formula of cpu::part_begin).
ST_DEVICE long long group_begin(long long g, long long groups, long long rows) {
  return rows * g / groups;
}

// partial[g][c] = sum over the rows of group g, in row order, of dout[r][c]. Grid (column tiles,
// groups); each thread owns one column, so a warp's loads are coalesced.
template <class T>
__global__ void __launch_bounds__(kThreads)
    bias_backward_partial_kernel(float* __restrict__ partial, const T* __restrict__ dout,
                                 long long rows, long long cols, long long groups) {
  const long long g = blockIdx.y;
  const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float acc = 0.0f;
  const long long r1 = group_begin(g + 1, groups, rows);
  for (long long r = group_begin(g, groups, rows); r < r1; ++r) acc += to_float(dout[r * cols + c]);
  partial[g * cols + c] = acc;
}

// dbias[c] += sum over g of partial[g][c]: column_sum_kernel (column_sum.h).

// partial[block] = sum of double(x[i])^2 (kSquare) or of double(x[i]) over this block's
// grid-stride share. The square of a float is exact in double (48 significant bits), so a
// contracted fma changes nothing. Four independent loads per step keep more bytes in flight;
// they are added in index order. The block's sum: every thread's value through shared memory,
// lane l of warp 0 adds values l, l + 32, ... in order, then a butterfly over warp 0 (one
// barrier, and warp collectives in one warp only, which also keeps the emulator fast).
template <bool kSquare>
__device__ __forceinline__ double sum_term(double a) {
  if constexpr (kSquare) {
    return a * a;
  } else {
    return a;
  }
}

template <bool kSquare>
__global__ void __launch_bounds__(kThreads)
    sum_partial_kernel(double* __restrict__ partial, const float* __restrict__ x, long long n) {
  ST_SHARED(double, sums, kThreads);
  const long long stride = (long long)gridDim.x * blockDim.x;
  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  double acc = 0.0;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const double a0 = x[i], a1 = x[i + stride], a2 = x[i + 2 * stride], a3 = x[i + 3 * stride];
    acc += sum_term<kSquare>(a0);
    acc += sum_term<kSquare>(a1);
    acc += sum_term<kSquare>(a2);
    acc += sum_term<kSquare>(a3);
  }
  for (; i < n; i += stride) acc += sum_term<kSquare>(double(x[i]));
  sums[threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.x >= 32) return;
  double w = sums[threadIdx.x];
  for (int k = int(threadIdx.x) + 32; k < kThreads; k += 32) w += sums[size_t(k)];
  for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(kFullMask, w, o);
  if (threadIdx.x == 0) partial[blockIdx.x] = w;
}

// s = sum of partial[0..blocks) in block order: one block stages the partials in shared memory
// (one coalesced load each), then thread 0 adds them in order and stores s (or *out + s).
__global__ void __launch_bounds__(kSumSquaresBlocks)
    sum_final_kernel(double* __restrict__ out, const double* __restrict__ partial, int blocks,
                     bool accumulate) {
  ST_SHARED(double, sums, kSumSquaresBlocks);
  if (int(threadIdx.x) < blocks) sums[threadIdx.x] = partial[threadIdx.x];
  __syncthreads();
  if (threadIdx.x != 0) return;
  double acc = 0.0;
  for (int b = 0; b < blocks; ++b) acc += sums[size_t(b)];
  *out = accumulate ? *out + acc : acc;
}

// *out = x[0] + x[1] + ... in index order, by one thread: a step's few hundred partial sums,
// where the order is the definition (the CPU's loop) and the time is a few microseconds.
__global__ void __launch_bounds__(32)
    sum_f64_in_order_kernel(double* __restrict__ out, const double* __restrict__ x, long long n) {
  if (threadIdx.x != 0) return;
  double acc = 0.0;
  for (long long i = 0; i < n; ++i) acc += x[i];
  *out = acc;
}

unsigned blocks_for(long long work) {
  long long b = (work + kThreads - 1) / kThreads;
  return unsigned(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}
unsigned ceil_div(long long a, long long b) { return unsigned((a + b - 1) / b); }

template <class T, class F, int kArity>
Status launch_map(T* out, const T* a, const T* b, int64_t n, Stream stream) {
  if (n == 0) return kOk;
  const bool vec = is_aligned16(out) && is_aligned16(a) && (kArity == 1 || is_aligned16(b));
  const long long work = vec ? (n + Pack<T>::kN - 1) / Pack<T>::kN : n;
  return launch(map_kernel<T, F, kArity>, dim3(blocks_for(work)), dim3(kThreads), 0, stream, out, a,
                b, (long long)n, vec);
}

}  // namespace

template <class T>
Status gelu_forward(T* out, const T* x, int64_t n, Stream stream) {
  return launch_map<T, GeluForwardOp, 1>(out, x, x, n, stream);
}

template <class T>
Status gelu_backward(T* dx, const T* x, const T* dout, int64_t n, Stream stream) {
  return launch_map<T, GeluBackwardOp, 2>(dx, x, dout, n, stream);
}

template <class T>
Status swiglu_forward(T* out, const T* gu, int64_t rows, int64_t ffn, Stream stream) {
  if (rows * ffn == 0) return kOk;
  return launch(swiglu_forward_kernel<T>, dim3(blocks_for(rows * ffn)), dim3(kThreads), 0, stream,
                out, gu, (long long)rows, (long long)ffn);
}

template <class T>
Status swiglu_backward(T* dgu, const T* gu, const T* dout, int64_t rows, int64_t ffn,
                       Stream stream) {
  if (rows * ffn == 0) return kOk;
  return launch(swiglu_backward_kernel<T>, dim3(blocks_for(rows * ffn)), dim3(kThreads), 0, stream,
                dgu, gu, dout, (long long)rows, (long long)ffn);
}

template <class T>
Status residual_add(T* out, const T* a, const T* b, int64_t n, Stream stream) {
  return launch_map<T, AddOp, 2>(out, a, b, n, stream);
}

Status add_f32(float* acc, const float* x, int64_t n, Stream stream) {
  return launch_map<float, AddOp, 2>(acc, acc, x, n, stream);
}

template <class T>
Status add_bias(T* x, const T* bias, int64_t rows, int64_t cols, Stream stream) {
  if (rows == 0 || cols == 0) return kOk;
  constexpr int kN = Pack<T>::kN;
  const bool vec = cols % kN == 0 && is_aligned16(x) && is_aligned16(bias);
  const long long work = vec ? rows * (cols / kN) : rows * cols;
  return launch(add_bias_kernel<T>, dim3(blocks_for(work)), dim3(kThreads), 0, stream, x, bias,
                (long long)rows, (long long)cols, vec);
}

template <class T>
Status bias_backward(float* dbias, const T* dout, int64_t rows, int64_t cols, float* workspace,
                     Stream stream) {
  if (rows == 0 || cols == 0) return kOk;
  const long long groups = bias_backward_groups(rows);
  // Narrow rows get narrow blocks (whole warps): no idle threads in the (tiles, groups) grid.
  const unsigned threads = unsigned(cols < kThreads ? (cols + 31) / 32 * 32 : kThreads);
  Status e =
      launch(bias_backward_partial_kernel<T>, dim3(ceil_div(cols, threads), unsigned(groups)),
             dim3(threads), 0, stream, workspace, dout, (long long)rows, (long long)cols, groups);
  if (e != kOk) return e;
  return launch(column_sum_kernel, dim3(ceil_div(cols, kColumnSumCols)),
                dim3(kColumnSumCols, kColumnSumLanes), 0, stream, dbias, dbias,
                static_cast<const float*>(workspace), (long long)cols, groups, (long long)cols);
}

template <bool kSquare>
Status sum_blocks(double* out, const float* x, int64_t n, double* workspace, bool accumulate,
                  Stream stream) {
  const int blocks = int(sum_squares_blocks(n));
  Status e = launch(sum_partial_kernel<kSquare>, dim3(unsigned(blocks)), dim3(kThreads), 0, stream,
                    workspace, x, (long long)n);
  if (e != kOk) return e;
  // One warp-multiple of threads covering the partials.
  return launch(sum_final_kernel, dim3(1), dim3(unsigned((blocks + 31) / 32 * 32)), 0, stream, out,
                static_cast<const double*>(workspace), blocks, accumulate);
}

Status sum_squares(double* out, const float* x, int64_t n, double* workspace, Stream stream) {
  return sum_blocks<true>(out, x, n, workspace, /*accumulate=*/false, stream);
}

Status accumulate_sum(double* acc, const float* x, int64_t n, double* workspace, Stream stream) {
  return sum_blocks<false>(acc, x, n, workspace, /*accumulate=*/true, stream);
}

Status sum_f64_in_order(double* out, const double* x, int64_t n, Stream stream) {
  return launch(sum_f64_in_order_kernel, dim3(1), dim3(32), 0, stream, out, x, (long long)n);
}

#define ST_INSTANTIATE(T)                                                               \
  template Status swiglu_forward<T>(T*, const T*, int64_t, int64_t, Stream);            \
  template Status swiglu_backward<T>(T*, const T*, const T*, int64_t, int64_t, Stream); \
  template Status gelu_forward<T>(T*, const T*, int64_t, Stream);                       \
  template Status gelu_backward<T>(T*, const T*, const T*, int64_t, Stream);            \
  template Status residual_add<T>(T*, const T*, const T*, int64_t, Stream);             \
  template Status bias_backward<T>(float*, const T*, int64_t, int64_t, float*, Stream); \
  template Status add_bias<T>(T*, const T*, int64_t, int64_t, Stream);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

}  // namespace shardtrain::kernels::ST_GPU_NS
