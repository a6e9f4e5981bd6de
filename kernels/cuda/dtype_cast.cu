// dtype_cast.cu — elementwise casts between fp32 and the 16-bit storage types on the GPU.
//
// The conversions are runtime/dtype.h's, the same code the CPU backend runs, so a tensor cast
// on the GPU is bit-identical to one cast on the host (tests/runtime/dtype_test proves the
// host side exhaustively). Grid-stride loop: any n with any launch size.
#include <cuda_runtime.h>

#include "runtime/dtype.h"

namespace shardtrain::kernels::cuda {

template <class Out, class In>
__global__ void cast_kernel(Out* __restrict__ out, const In* __restrict__ in, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    out[i] = from_float<Out>(to_float(in[i]));
  }
}

template <class Out, class In>
cudaError_t cast(Out* out, const In* in, long long n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  long long blocks = (n + threads - 1) / threads;
  if (blocks > 65535) blocks = 65535;
  cast_kernel<Out, In><<<(unsigned)blocks, threads, 0, stream>>>(out, in, n);
  return cudaGetLastError();
}

template cudaError_t cast<BFloat16, float>(BFloat16*, const float*, long long, cudaStream_t);
template cudaError_t cast<Half, float>(Half*, const float*, long long, cudaStream_t);
template cudaError_t cast<float, BFloat16>(float*, const BFloat16*, long long, cudaStream_t);
template cudaError_t cast<float, Half>(float*, const Half*, long long, cudaStream_t);

}  // namespace shardtrain::kernels::cuda
