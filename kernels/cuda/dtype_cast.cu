// dtype_cast.cu — elementwise casts between fp32 and the 16-bit storage types, and the
// loss-scale unscale with inf/nan detection; one source for the GPU and for kernels/emu.
//
// The conversions are runtime/dtype.h's, the same code the CPU backend runs, so a tensor cast
// on the GPU is bit-identical to one cast on the host (tests/runtime/dtype_test proves the
// host side exhaustively; tests/kernels/gpu_ops_test compares against the CPU backend).
// Each thread moves 8 elements: two 16-byte packs of fp32 or one of a 16-bit type, when both
// pointers are 16-byte aligned; otherwise (and for the tail) one element at a time.
// Grid-stride loops: any n with any grid.
#include <type_traits>

#include "kernels/cuda/launch.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 8;  // elements per thread per vector step: 16 bytes of 16-bit data
// 65535 blocks (the old y/z limit, generous for x) keep the grid bounded for huge n; the
// grid-stride loop covers the rest.
constexpr long long kMaxBlocks = 65535;

// One element: through fp32 (exact widening, one rounding), or a plain copy when the types are
// equal — as the CPU backend does; a round trip would quieten signalling NaNs.
template <class Out, class In>
ST_DEVICE Out convert(In x) {
  if constexpr (std::is_same_v<In, Out>) {
    return x;
  } else {
    return from_float<Out>(to_float(x));
  }
}

// 8 elements of T at p (16-byte aligned), as raw packs.
template <class T>
ST_DEVICE void load8(const T* p, T (&f)[kPerThread]) {
  constexpr int kN = Pack<T>::kN;
  for (int j = 0; j < kPerThread / kN; ++j) {
    const Pack<T> pk = load_pack(p + j * kN);
    for (int e = 0; e < kN; ++e) f[j * kN + e] = pk.v[e];
  }
}
template <class T>
ST_DEVICE void store8(T* p, const T (&f)[kPerThread]) {
  constexpr int kN = Pack<T>::kN;
  for (int j = 0; j < kPerThread / kN; ++j) {
    Pack<T> pk;
    for (int e = 0; e < kN; ++e) pk.v[e] = f[j * kN + e];
    store_pack(p + j * kN, pk);
  }
}

template <class Out, class In>
__global__ void cast_kernel(Out* __restrict__ out, const In* __restrict__ in, long long n,
                            bool vec) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  long long scalar_from = 0;
  if (vec) {
    // 1. Whole 8-element groups through 16-byte packs.
    const long long groups = n / kPerThread;
    for (long long g = i; g < groups; g += stride) {
      In a[kPerThread];
      Out b[kPerThread];
      load8(in + g * kPerThread, a);
      for (int e = 0; e < kPerThread; ++e) b[e] = convert<Out>(a[e]);
      store8(out + g * kPerThread, b);
    }
    scalar_from = groups * kPerThread;
  }
  // 2. The tail (or everything, unaligned), element by element.
  for (long long k = scalar_from + i; k < n; k += stride) out[k] = convert<Out>(in[k]);
}

// grads *= inv_scale; a non-finite *stored* value raises the flag (an fp32 product that is
// finite but overflows f16 storage counts: that inf is what the optimizer would read).
template <class T>
__global__ void unscale_kernel(T* __restrict__ grads, long long n, float inv_scale,
                               int32_t* __restrict__ found_inf) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  bool bad = false;
  for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n; k += stride) {
    const T g = from_float<T>(to_float(grads[k]) * inv_scale);
    grads[k] = g;
    bad = bad || !isfinite(to_float(g));
  }
  // Many threads may store the same 1: a benign race on global memory (same value).
  if (bad) *found_inf = 1;
}

long long blocks_for(long long work) {
  long long b = (work + kThreads - 1) / kThreads;
  return b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b);
}

}  // namespace

template <class In, class Out>
Status cast(Out* out, const In* in, int64_t n, Stream stream) {
  if (n == 0) return kOk;
  const bool vec = is_aligned16(out) && is_aligned16(in);
  const long long work = vec ? (n + kPerThread - 1) / kPerThread : n;
  return launch(cast_kernel<Out, In>, dim3(unsigned(blocks_for(work))), dim3(kThreads), 0, stream,
                out, in, (long long)n, vec);
}

template <class T>
Status unscale_check(T* grads, int64_t n, float inv_scale, int32_t* found_inf, Stream stream) {
  if (n == 0) return kOk;
  return launch(unscale_kernel<T>, dim3(unsigned(blocks_for(n))), dim3(kThreads), 0, stream, grads,
                (long long)n, inv_scale, found_inf);
}

#define ST_INSTANTIATE_CAST(In)                                              \
  template Status cast<In, float>(float*, const In*, int64_t, Stream);       \
  template Status cast<In, BFloat16>(BFloat16*, const In*, int64_t, Stream); \
  template Status cast<In, Half>(Half*, const In*, int64_t, Stream);         \
  template Status unscale_check<In>(In*, int64_t, float, int32_t*, Stream);
ST_INSTANTIATE_CAST(float)
ST_INSTANTIATE_CAST(BFloat16)
ST_INSTANTIATE_CAST(Half)
#undef ST_INSTANTIATE_CAST

}  // namespace shardtrain::kernels::ST_GPU_NS
