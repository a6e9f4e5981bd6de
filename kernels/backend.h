// backend.h — the device a model computes on: its memory and its op set, behind one interface.
//
// The model (models/gpt.*) and the ZeRO engine (parallel/zero.*) never touch a buffer's
// elements themselves; every read, write and kernel goes through a Backend, so the same code
// trains on the CPU, on a GPU, and on the CUDA kernels' own source run by kernels/emu:
//
//   cpu       kernels/cpu (oneDNN GEMM + OpenMP loops); buffers in host memory.
//   cuda-emu  the kernels/cuda sources compiled against kernels/emu, GEMMs on the CPU backend
//             (as the emulator routes them); buffers in host memory. It runs, in CI, exactly
//             the host code and the kernel source that `cuda` runs on a GPU.
//   cuda      the same kernels compiled by nvcc, GEMMs on cuBLASLt, one compute stream;
//             buffers in device memory (runtime/cuda's caching allocator).
//
// The GPU backends are one source (kernels/gpu_backend.inc) instantiated twice; they differ
// only in the kernel namespace, the memory copies and the GEMM.
//
// Contract. Pointers are in the backend's memory space unless named `host`. Calls are issued in
// order; on a GPU they run asynchronously on the compute stream, so a host read must go
// through download() (which waits). `t` is the storage type of the activations and
// parameters (F32, BF16, F16); gradients and optimizer state are fp32. Every op's numerics are
// its kernels/<op>.h contract. Results are deterministic: the same inputs give the same bits
// on every run of one backend (the CPU independently of its thread count).
#pragma once

#include <cstdint>
#include <memory>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/layernorm.h"
#include "kernels/rope.h"
#include "runtime/allocator.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;  // "cpu", "cuda-emu", "cuda"
  // Attention kernels exist for this storage type and head dimension.
  virtual bool supports_attention(DType t, int64_t head_dim) const = 0;

  // ---- Memory (bytes) ----
  virtual void copy(void* dst, const void* src, int64_t bytes) = 0;
  virtual void upload(void* dst, const void* host, int64_t bytes) = 0;
  virtual void download(void* host, const void* src, int64_t bytes) = 0;  // waits for it
  // Queues a copy to the host that lands in `host` by the time the next synchronize() returns
  // (not before: `host` must not be read earlier). Many of them, then one synchronize(), are one
  // wait for the device: how a step's statistics come back.
  virtual void download_async(void* host, const void* src, int64_t bytes) = 0;
  virtual void zero(void* dst, int64_t bytes) = 0;
  // Everything issued so far has completed (a no-op where calls run synchronously: cpu,
  // cuda-emu).
  virtual void synchronize() = 0;

  // ---- The model's ops (kernels/<op>.h) ----
  virtual void gemm(const GemmDesc& d, const void* a, const void* b, void* c,
                    const void* bias = nullptr) = 0;
  // FFN up-projection: pre = A B + bias, out = gelu(pre) (kernels/elementwise.h's GELU); d
  // has alpha 1, beta 0, c_dtype = ab_dtype. out is bitwise gelu_forward(pre): selective
  // recomputation (models/gpt.h) recomputes it that way.
  virtual void gemm_bias_gelu(const GemmDesc& d, const void* a, const void* b, void* out, void* pre,
                              const void* bias) = 0;
  virtual void layernorm_forward(DType t, void* out, float* mean, float* rstd, const void* x,
                                 const void* weight, const void* bias, RowsShape s, float eps) = 0;
  // res = a + b, then LayerNorm of res (residual_add + layernorm_forward in one pass).
  virtual void residual_layernorm_forward(DType t, void* res, void* out, float* mean, float* rstd,
                                          const void* a, const void* b, const void* weight,
                                          const void* bias, RowsShape s, float eps) = 0;
  virtual void layernorm_backward(DType t, void* dx, float* dweight, float* dbias, const void* dout,
                                  const void* x, const void* weight, const float* mean,
                                  const float* rstd, RowsShape s) = 0;
  virtual void attention_forward(DType t, void* out, float* lse, const void* qkv,
                                 AttentionShape s) = 0;
  virtual void attention_backward(DType t, void* dqkv, const void* dout, const void* qkv,
                                  const void* out, const float* lse, AttentionShape s) = 0;
  // Generation with a KV cache (kernels/attention.h): the cpu backend only; the GPU backends
  // refuse it (UserError) — `sample` runs on the cpu.
  virtual void attention_decode(DType t, void* out, const void* q, int64_t q_stride, const void* k,
                                const void* v, int64_t k_stride, AttentionShape s, int64_t pos,
                                int64_t n) = 0;
  virtual void gelu_forward(DType t, void* out, const void* x, int64_t n) = 0;
  virtual void gelu_backward(DType t, void* dx, const void* x, const void* dout, int64_t n) = 0;
  virtual void residual_add(DType t, void* out, const void* a, const void* b, int64_t n) = 0;
  virtual void bias_backward(DType t, float* dbias, const void* dout, int64_t rows,
                             int64_t cols) = 0;
  virtual void add_bias(DType t, void* x, const void* bias, int64_t rows, int64_t cols) = 0;
  virtual void embedding_forward(DType t, void* out, const int32_t* tokens, const void* wte,
                                 const void* wpe, EmbeddingShape s) = 0;
  virtual void embedding_backward(DType t, float* dwte, float* dwpe, const void* dout,
                                  const int32_t* tokens, EmbeddingShape s) = 0;
  virtual void cross_entropy_forward(DType t, float* losses, float* lse, const void* logits,
                                     const int32_t* targets, LogitsShape s,
                                     int64_t valid_vocab) = 0;
  virtual void cross_entropy_backward(DType t, void* dlogits, const void* logits, const float* lse,
                                      const int32_t* targets, float grad_weight, LogitsShape s,
                                      int64_t valid_vocab) = 0;

  // ---- Llama's ops (kernels/layernorm.h RMSNorm, kernels/rope.h, kernels/elementwise.h) ----
  virtual void rmsnorm_forward(DType t, void* out, float* rstd, const void* x, const void* weight,
                               RowsShape s, float eps) = 0;
  virtual void residual_rmsnorm_forward(DType t, void* res, void* out, float* rstd, const void* a,
                                        const void* b, const void* weight, RowsShape s,
                                        float eps) = 0;
  virtual void rmsnorm_backward(DType t, void* dx, float* dweight, const void* dout, const void* x,
                                const void* weight, const float* rstd, RowsShape s) = 0;
  // `table`: rope_table's (positions, D/2, 2) fp32 in backend memory.
  virtual void rope_forward(DType t, void* x, const float* table, RopeShape s) = 0;
  virtual void rope_backward(DType t, void* dx, const float* table, RopeShape s) = 0;
  virtual void swiglu_forward(DType t, void* out, const void* gu, int64_t rows, int64_t ffn) = 0;
  virtual void swiglu_backward(DType t, void* dgu, const void* gu, const void* dout, int64_t rows,
                               int64_t ffn) = 0;

  // ---- Tensor-parallel pieces (vocabulary slices; kernels/embedding.h, cross_entropy.h) ----
  virtual void embedding_lookup_slice(DType t, void* out, const int32_t* tokens, const void* wte,
                                      int64_t vocab_begin, int64_t vocab_rows, int64_t n,
                                      int64_t C) = 0;
  virtual void add_positions(DType t, void* x, const void* wpe, int64_t rows, int64_t row0,
                             int64_t T, int64_t C) = 0;
  virtual void embedding_backward_slice(DType t, float* dwte, const void* dout,
                                        const int32_t* tokens, int64_t vocab_begin,
                                        int64_t vocab_rows, int64_t n, int64_t C) = 0;
  virtual void positions_backward(DType t, float* dwpe, const void* dout, int64_t rows,
                                  int64_t row0, int64_t T, int64_t C) = 0;
  virtual void cross_entropy_partial_max(DType t, double* row_max, double* target_logit,
                                         const void* logits, const int32_t* targets,
                                         int64_t vocab_begin, LogitsShape s, int64_t valid) = 0;
  virtual void cross_entropy_partial_sumexp(DType t, double* sum, const void* logits,
                                            const double* row_max, LogitsShape s,
                                            int64_t valid) = 0;
  virtual void cross_entropy_backward_slice(DType t, void* dlogits, const void* logits,
                                            const float* lse, const int32_t* targets,
                                            int64_t vocab_begin, float grad_weight, LogitsShape s,
                                            int64_t valid) = 0;
  virtual void cross_entropy_from_partials(float* losses, float* lse, const double* row_max,
                                           const double* sum, const double* target_logit,
                                           const int32_t* targets, int64_t n) = 0;

  // ---- fp32 vectors: the ZeRO engine's gradients, master weights and moments ----
  // AdamW over segments of flat fp32 buffers (one launch on a GPU), each with its weight
  // decay, writing compute_param (type t; may be null) for the segment elements. `segments` is
  // host memory.
  virtual void adamw_update_segments(float* param, const float* grad, float* m, float* v, DType t,
                                     void* compute_param, const AdamWSegment* segments,
                                     int64_t num_segments, const AdamWParams& p,
                                     float grad_scale) = 0;
  virtual void cast_from_f32(DType t, void* out, const float* in, int64_t n) = 0;
  virtual void add_f32(float* acc, const float* x, int64_t n) = 0;  // acc += x
  // *out (backend memory) = sum of x[i]^2 in double, in a fixed order.
  virtual void sum_squares(double* out, const float* x, int64_t n) = 0;
  // *acc (backend memory) += the sum of x[i] in double, in a fixed order (a micro-step's loss).
  virtual void accumulate_sum(double* acc, const float* x, int64_t n) = 0;
  // *out = x[0] + ... + x[n-1] (doubles in backend memory), added in index order.
  virtual void sum_f64_in_order(double* out, const double* x, int64_t n) = 0;
};

// The CPU backend (stateless; one instance per process).
Backend& cpu_backend();
// kernels/cuda run by kernels/emu. `alloc` holds the kernels' workspaces (category workspace).
std::unique_ptr<Backend> make_emu_backend(TrackingAllocator& alloc);
// kernels/cuda on this process's GPU, `alloc` being a device-memory TrackingAllocator. Throws
// UserError when this build has no CUDA. The backend owns its compute stream;
// cuda_compute_stream() hands it to the communicators (NcclCommunicator::set_compute_stream).
std::unique_ptr<Backend> make_cuda_backend(TrackingAllocator& alloc);
// The cudaStream_t a cuda backend computes on (void*, so this header needs no CUDA headers).
void* cuda_compute_stream(Backend& cuda_backend);

}  // namespace shardtrain::kernels
