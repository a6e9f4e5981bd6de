// gemm.h — matrix multiply, the op that carries almost all of a transformer's FLOPs.
//
// One entry point with a descriptor, because the model needs every transpose combination
// (forward x@W, input gradient dY@W^T, weight gradient X^T@dY) and accumulation into fp32
// gradients (beta = 1) across micro-steps. CPU backend: oneDNN matmul (AVX-512/AMX picked at
// run time; bf16 x bf16 with fp32 accumulation), primitives cached per descriptor. f16
// operands are widened to fp32 first (CPUs here have no f16 matmul units).
#pragma once

#include <cstdint>

#include "runtime/allocator.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels {

struct GemmShape {
  int64_t m, n, k;
  int64_t batch = 1;
};

// C (m,n) = alpha * op(A) op(B) + beta * C + bias, row-major, contiguous.
// op(A) is (m,k): A is stored (m,k), or (k,m) when trans_a. op(B) is (k,n): B is stored (k,n),
// or (n,k) when trans_b. bias (n), in ab_dtype, broadcast over rows (may be null; only with
// alpha == 1).
// Batched: item i of A, B, C starts i*stride_{a,b,c} elements in (0 = packed tightly).
struct GemmDesc {
  GemmShape shape;
  DType ab_dtype = DType::kF32;  // A, B and bias storage
  DType c_dtype = DType::kF32;   // C storage: f32, or ab_dtype
  bool trans_a = false;
  bool trans_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
};

void gemm(const GemmDesc& desc, const void* a, const void* b, void* c, const void* bias = nullptr);

// Where host buffers of `category` should start relative to a 64-byte boundary for gemm() to
// run at speed on this machine (TrackingAllocator::set_start_offset; 0 = on the boundary). A
// placement choice only: results are the same at any offset.
int64_t gemm_host_start_offset(MemCategory category);

}  // namespace shardtrain::kernels
