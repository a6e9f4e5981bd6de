// ops.h — the CUDA op set (kernels/cuda/ops.inc) for host code that runs it on a real GPU.
//
// Needs only the CUDA runtime headers (no nvcc): host code compiled by g++ links
// shardtrain_cuda and calls these with device pointers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/layernorm.h"
#include "kernels/rope.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::cuda {

using Stream = cudaStream_t;
using Status = cudaError_t;

#include "kernels/cuda/ops.inc"

}  // namespace shardtrain::kernels::cuda
