// gemm_lt.h — kernels/gemm.h's GEMM on the GPU through cuBLASLt, plus the FFN epilogues.
//
// Why cuBLASLt and not a kernel of ours: GEMMs carry almost all of a transformer's FLOPs and
// cuBLASLt reaches the tensor-core peak on sm_80/sm_90, and it fuses what the FFN needs around
// the matmul — bias + GELU with the pre-activation kept for backward (EPILOGUE_GELU_AUX_BIAS),
// and GELU's gradient + the bias gradient (EPILOGUE_DGELU_BGRAD) — saving two full passes over
// the (B*T, 4C) hidden activations per layer. The descriptor is kernels/gemm.h's, row-major;
// cuBLASLt is column-major, so each call computes C^T = op(B)^T op(A)^T: a row-major (r, c)
// matrix is the column-major (c, r) one with the same bytes, and no data moves.
//
// Host code (g++ against cublasLt.h), so it is not a <op>.cu: kernels/emu compiles every .cu
// here for the emulator, and cuBLASLt is one of the GPU paths emu cannot run.
//
// Contract:
//  - A, B, bias in desc.ab_dtype (f32, bf16 or f16), C in desc.c_dtype (f32 or ab_dtype;
//    a 16-bit bias with an f32 C asks cuBLASLt for a bias type other than D's, see README);
//    accumulation in fp32 (CUBLAS_COMPUTE_32F; no TF32 for f32 inputs), alpha/beta as
//    kernels/gemm.h. Device pointers; the call is asynchronous on `stream`.
//  - The algorithm is chosen by cuBLASLt's heuristic once per (shape, strides, dtypes,
//    transposes, epilogue, beta == 0, alignment of every pointer) and cached with its
//    descriptors, so
//    the same call is the same algorithm every time: results are run-to-run deterministic on
//    one GPU model and library version (no split-K atomics are requested).
//  - Epilogue calls need batch == 1 and n % 8 == 0 (cuBLASLt's rule for the aux buffer's
//    leading dimension); `pre` / `dpre` are (m, n) in c_dtype.
//  - Not thread-safe: one GemmLt per host thread (it owns a handle, a workspace and a cache).
// Nothing touches the GPU before the first call (constructing one where no device exists is
// fine); the workspace is cudaMalloc'd then and freed at destruction.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/gemm.h"
#include "runtime/error.h"

namespace shardtrain::kernels::cuda {

struct CublasTraits {
  static constexpr const char* kName = "cuBLASLt";
  static bool ok(cublasStatus_t status) { return status == CUBLAS_STATUS_SUCCESS; }
  static std::string describe(cublasStatus_t status);
};
#define CUBLAS_CHECK(expr) ST_CHECK_STATUS(::shardtrain::kernels::cuda::CublasTraits, expr)

class GemmLt {
 public:
  // 32 MiB: what cuBLAS recommends on Hopper for its fastest kernels; Ampere needs 4 MiB.
  static constexpr int64_t kDefaultWorkspaceBytes = int64_t(32) << 20;

  explicit GemmLt(int64_t workspace_bytes = kDefaultWorkspaceBytes);
  ~GemmLt();
  GemmLt(const GemmLt&) = delete;
  GemmLt& operator=(const GemmLt&) = delete;

  // kernels::gemm on the device: C (m,n) = alpha op(A) op(B) + beta C (+ bias (n)).
  void gemm(const GemmDesc& desc, const void* a, const void* b, void* c, const void* bias,
            cudaStream_t stream);

  // FFN forward (alpha 1, beta 0): pre (m,n) = op(A) op(B) + bias (n);
  // out (m,n) = gelu(pre), the tanh GELU of kernels/elementwise.h.
  void gemm_bias_gelu(const GemmDesc& desc, const void* a, const void* b, void* out, void* pre,
                      const void* bias, cudaStream_t stream);

  // FFN backward (alpha 1, beta 0): dpre (m,n) = (op(A) op(B)) * gelu'(pre), with pre from
  // gemm_bias_gelu; dbias (n), in c_dtype (cublasLt.h: a bias gradient has the output's type),
  // is *written* (not accumulated) with the column sums of dpre, the bias gradient. The CPU
  // twin (elementwise.h's bias_backward) accumulates into fp32: the caller adds dbias in.
  void gemm_dgelu_bgrad(const GemmDesc& desc, const void* a, const void* b, void* dpre,
                        const void* pre, void* dbias, cudaStream_t stream);

  int64_t workspace_bytes() const { return workspace_bytes_; }
  int64_t cached_plans() const;  // heuristic results kept (one per distinct call shape)

 private:
  struct Cache;
  enum class Epilogue : int { kDefault, kBias, kGeluAuxBias, kDGeluBGrad };
  void run(Epilogue epilogue, const GemmDesc& desc, const void* a, const void* b, void* c,
           const void* bias, void* aux, cudaStream_t stream);

  int64_t workspace_bytes_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::unique_ptr<Cache> cache_;
};

}  // namespace shardtrain::kernels::cuda
