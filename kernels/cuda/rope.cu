// rope.cu — rotary position embeddings on the GPU (kernels/rope.h); one source for nvcc and
// kernels/emu. One thread per rotated pair (i, i + D/2) of a head, grid-stride: two loads, the
// (cos, sin) of its position and frequency from the shared table (one 8-byte load, L1/L2
// resident: positions x D/2 x 8 bytes), two stores — the CPU backend's expressions (the
// compilers may contract them into FMAs differently: the table test bounds it). Memory-bound:
// 4 bytes read + 4 written per pair in 16-bit storage.
#include "kernels/cuda/launch.h"
#include "kernels/rope.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

constexpr int kThreads = 256;
constexpr long long kMaxBlocks = 65535;

// sign +1: forward (v'[i] = a c - b s, v'[i+h] = b c + a s); -1: its transpose.
template <class T>
__global__ void __launch_bounds__(kThreads)
    rope_kernel(T* __restrict__ x, const float* __restrict__ table, long long rows, long long seq,
                long long row_stride, long long heads, long long half, long long pos_offset,
                float sign) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long pairs = rows * heads * half;
  for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < pairs; k += stride) {
    const long long i = k % half, h = (k / half) % heads, r = k / (half * heads);
    const float* cs = table + ((pos_offset + r % seq) * half + i) * 2;
    const float c = cs[0], sn = sign * cs[1];
    T* v = x + r * row_stride + h * 2 * half;
    const float a = to_float(v[i]), b = to_float(v[half + i]);
    v[i] = from_float<T>(a * c - b * sn);
    v[half + i] = from_float<T>(b * c + a * sn);
  }
}

template <class T>
Status launch_rope(T* x, const float* table, RopeShape s, float sign, Stream stream) {
  const long long pairs = s.rows * s.heads * (s.head_dim / 2);
  if (pairs == 0) return kOk;
  long long blocks = (pairs + kThreads - 1) / kThreads;
  blocks = blocks > kMaxBlocks ? kMaxBlocks : blocks;
  return launch(rope_kernel<T>, dim3(unsigned(blocks)), dim3(kThreads), 0, stream, x, table,
                (long long)s.rows, (long long)s.seq, (long long)s.row_stride, (long long)s.heads,
                (long long)(s.head_dim / 2), (long long)s.pos_offset, sign);
}

}  // namespace

template <class T>
Status rope_forward(T* x, const float* table, RopeShape s, Stream stream) {
  return launch_rope(x, table, s, 1.0f, stream);
}

template <class T>
Status rope_backward(T* dx, const float* table, RopeShape s, Stream stream) {
  return launch_rope(dx, table, s, -1.0f, stream);
}

#define ST_INSTANTIATE(T)                                               \
  template Status rope_forward<T>(T*, const float*, RopeShape, Stream); \
  template Status rope_backward<T>(T*, const float*, RopeShape, Stream);
ST_INSTANTIATE(float)
ST_INSTANTIATE(BFloat16)
ST_INSTANTIATE(Half)
#undef ST_INSTANTIATE

}  // namespace shardtrain::kernels::ST_GPU_NS
