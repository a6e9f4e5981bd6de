// backend.cpp — the CPU backend behind kernels/backend.h: the kernels/cpu functions on host
// memory, synchronous.
#include "kernels/backend.h"

#include <cstring>

#include "kernels/backend_dispatch.h"
#include "kernels/elementwise.h"
#include "kernels/isa.h"

namespace shardtrain::kernels {
SHARDTRAIN_ISA_BEGIN
namespace {

// This copy's kernels (isa.h): the members below share their names.
namespace isa = SHARDTRAIN_ISA_NAMESPACE;

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  bool supports_attention(DType, int64_t) const override { return true; }

  void copy(void* dst, const void* src, int64_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, size_t(bytes));
  }
  void upload(void* dst, const void* host, int64_t bytes) override { copy(dst, host, bytes); }
  void download(void* host, const void* src, int64_t bytes) override { copy(host, src, bytes); }
  void download_async(void* host, const void* src, int64_t bytes) override {
    copy(host, src, bytes);
  }
  void zero(void* dst, int64_t bytes) override {
    if (bytes > 0) std::memset(dst, 0, size_t(bytes));
  }
  void synchronize() override {}

  void gemm(const GemmDesc& d, const void* a, const void* b, void* c, const void* bias) override {
    kernels::gemm(d, a, b, c, bias);
  }
  void gemm_bias_gelu(const GemmDesc& d, const void* a, const void* b, void* out, void* pre,
                      const void* bias) override {
    kernels::gemm(d, a, b, pre, bias);
    gelu_forward(d.c_dtype, out, pre, d.shape.m * d.shape.n);
  }
  void layernorm_forward(DType t, void* out, float* mean, float* rstd, const void* x,
                         const void* weight, const void* bias, RowsShape s, float eps) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::layernorm_forward<T>(static_cast<T*>(out), mean, rstd, static_cast<const T*>(x),
                                static_cast<const T*>(weight), static_cast<const T*>(bias), s, eps);
    });
  }
  void residual_layernorm_forward(DType t, void* res, void* out, float* mean, float* rstd,
                                  const void* a, const void* b, const void* weight,
                                  const void* bias, RowsShape s, float eps) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::residual_layernorm_forward<T>(static_cast<T*>(res), static_cast<T*>(out), mean, rstd,
                                         static_cast<const T*>(a), static_cast<const T*>(b),
                                         static_cast<const T*>(weight), static_cast<const T*>(bias),
                                         s, eps);
    });
  }
  void layernorm_backward(DType t, void* dx, float* dweight, float* dbias, const void* dout,
                          const void* x, const void* weight, const float* mean, const float* rstd,
                          RowsShape s) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::layernorm_backward<T>(static_cast<T*>(dx), dweight, dbias, static_cast<const T*>(dout),
                                 static_cast<const T*>(x), static_cast<const T*>(weight), mean,
                                 rstd, s);
    });
  }
  void attention_forward(DType t, void* out, float* lse, const void* qkv,
                         AttentionShape s) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::attention_forward<T>(static_cast<T*>(out), lse, static_cast<const T*>(qkv), s);
    });
  }
  void attention_backward(DType t, void* dqkv, const void* dout, const void* qkv, const void* out,
                          const float* lse, AttentionShape s) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::attention_backward<T>(static_cast<T*>(dqkv), static_cast<const T*>(dout),
                                 static_cast<const T*>(qkv), static_cast<const T*>(out), lse, s);
    });
  }
  void attention_decode(DType t, void* out, const void* q, int64_t q_stride, const void* k,
                        const void* v, int64_t k_stride, AttentionShape s, int64_t pos,
                        int64_t n) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::attention_decode<T>(static_cast<T*>(out), static_cast<const T*>(q), q_stride,
                               static_cast<const T*>(k), static_cast<const T*>(v), k_stride, s, pos,
                               n);
    });
  }
  void rmsnorm_forward(DType t, void* out, float* rstd, const void* x, const void* weight,
                       RowsShape s, float eps) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::rmsnorm_forward<T>(static_cast<T*>(out), rstd, static_cast<const T*>(x),
                              static_cast<const T*>(weight), s, eps);
    });
  }
  void residual_rmsnorm_forward(DType t, void* res, void* out, float* rstd, const void* a,
                                const void* b, const void* weight, RowsShape s,
                                float eps) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::residual_rmsnorm_forward<T>(static_cast<T*>(res), static_cast<T*>(out), rstd,
                                       static_cast<const T*>(a), static_cast<const T*>(b),
                                       static_cast<const T*>(weight), s, eps);
    });
  }
  void rmsnorm_backward(DType t, void* dx, float* dweight, const void* dout, const void* x,
                        const void* weight, const float* rstd, RowsShape s) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::rmsnorm_backward<T>(static_cast<T*>(dx), dweight, static_cast<const T*>(dout),
                               static_cast<const T*>(x), static_cast<const T*>(weight), rstd, s);
    });
  }
  void rope_forward(DType t, void* x, const float* table, RopeShape s) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::rope_forward<T>(static_cast<T*>(x), table, s);
    });
  }
  void rope_backward(DType t, void* dx, const float* table, RopeShape s) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::rope_backward<T>(static_cast<T*>(dx), table, s);
    });
  }
  void swiglu_forward(DType t, void* out, const void* gu, int64_t rows, int64_t ffn) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::swiglu_forward<T>(static_cast<T*>(out), static_cast<const T*>(gu), rows, ffn);
    });
  }
  void swiglu_backward(DType t, void* dgu, const void* gu, const void* dout, int64_t rows,
                       int64_t ffn) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::swiglu_backward<T>(static_cast<T*>(dgu), static_cast<const T*>(gu),
                              static_cast<const T*>(dout), rows, ffn);
    });
  }
  void gelu_forward(DType t, void* out, const void* x, int64_t n) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::gelu_forward<T>(static_cast<T*>(out), static_cast<const T*>(x), n);
    });
  }
  void gelu_backward(DType t, void* dx, const void* x, const void* dout, int64_t n) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::gelu_backward<T>(static_cast<T*>(dx), static_cast<const T*>(x),
                            static_cast<const T*>(dout), n);
    });
  }
  void residual_add(DType t, void* out, const void* a, const void* b, int64_t n) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::residual_add<T>(static_cast<T*>(out), static_cast<const T*>(a), static_cast<const T*>(b),
                           n);
    });
  }
  void bias_backward(DType t, float* dbias, const void* dout, int64_t rows, int64_t cols) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::bias_backward<T>(dbias, static_cast<const T*>(dout), rows, cols);
    });
  }
  void add_bias(DType t, void* x, const void* bias, int64_t rows, int64_t cols) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::add_bias<T>(static_cast<T*>(x), static_cast<const T*>(bias), rows, cols);
    });
  }
  void embedding_forward(DType t, void* out, const int32_t* tokens, const void* wte,
                         const void* wpe, EmbeddingShape s) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::embedding_forward<T>(static_cast<T*>(out), tokens, static_cast<const T*>(wte),
                                static_cast<const T*>(wpe), s);
    });
  }
  void embedding_backward(DType t, float* dwte, float* dwpe, const void* dout,
                          const int32_t* tokens, EmbeddingShape s) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::embedding_backward<T>(dwte, dwpe, static_cast<const T*>(dout), tokens, s);
    });
  }
  void cross_entropy_forward(DType t, float* losses, float* lse, const void* logits,
                             const int32_t* targets, LogitsShape s, int64_t valid) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::cross_entropy_forward<T>(losses, lse, static_cast<const T*>(logits), targets, s, valid);
    });
  }
  void cross_entropy_backward(DType t, void* dlogits, const void* logits, const float* lse,
                              const int32_t* targets, float grad_weight, LogitsShape s,
                              int64_t valid) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::cross_entropy_backward<T>(static_cast<T*>(dlogits), static_cast<const T*>(logits), lse,
                                     targets, grad_weight, s, valid);
    });
  }

  void embedding_lookup_slice(DType t, void* out, const int32_t* tokens, const void* wte,
                              int64_t vocab_begin, int64_t vocab_rows, int64_t n,
                              int64_t C) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::embedding_lookup_slice<T>(static_cast<T*>(out), tokens, static_cast<const T*>(wte),
                                     vocab_begin, vocab_rows, n, C);
    });
  }
  void add_positions(DType t, void* x, const void* wpe, int64_t rows, int64_t row0, int64_t T,
                     int64_t C) override {
    with_float_type(t, [&](auto tag) {
      using S = decltype(tag);
      isa::add_positions<S>(static_cast<S*>(x), static_cast<const S*>(wpe), rows, row0, T, C);
    });
  }
  void embedding_backward_slice(DType t, float* dwte, const void* dout, const int32_t* tokens,
                                int64_t vocab_begin, int64_t vocab_rows, int64_t n,
                                int64_t C) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::embedding_backward_slice<T>(dwte, static_cast<const T*>(dout), tokens, vocab_begin,
                                       vocab_rows, n, C);
    });
  }
  void positions_backward(DType t, float* dwpe, const void* dout, int64_t rows, int64_t row0,
                          int64_t T, int64_t C) override {
    with_float_type(t, [&](auto tag) {
      using S = decltype(tag);
      isa::positions_backward<S>(dwpe, static_cast<const S*>(dout), rows, row0, T, C);
    });
  }
  void cross_entropy_partial_max(DType t, double* row_max, double* target_logit, const void* logits,
                                 const int32_t* targets, int64_t vocab_begin, LogitsShape s,
                                 int64_t valid) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::cross_entropy_partial_max<T>(row_max, target_logit, static_cast<const T*>(logits),
                                        targets, vocab_begin, s, valid);
    });
  }
  void cross_entropy_partial_sumexp(DType t, double* sum, const void* logits, const double* row_max,
                                    LogitsShape s, int64_t valid) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::cross_entropy_partial_sumexp<T>(sum, static_cast<const T*>(logits), row_max, s, valid);
    });
  }
  void cross_entropy_backward_slice(DType t, void* dlogits, const void* logits, const float* lse,
                                    const int32_t* targets, int64_t vocab_begin, float grad_weight,
                                    LogitsShape s, int64_t valid) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::cross_entropy_backward_slice<T>(static_cast<T*>(dlogits), static_cast<const T*>(logits),
                                           lse, targets, vocab_begin, grad_weight, s, valid);
    });
  }

  void adamw_update_segments(float* param, const float* grad, float* m, float* v, DType t,
                             void* compute_param, const AdamWSegment* segments,
                             int64_t num_segments, const AdamWParams& p,
                             float grad_scale) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::adamw_update_segments<T>(param, grad, m, v, static_cast<T*>(compute_param), segments,
                                    num_segments, p, grad_scale);
    });
  }
  void cast_from_f32(DType t, void* out, const float* in, int64_t n) override {
    with_float_type(t, [&](auto tag) {
      using T = decltype(tag);
      isa::cast<float, T>(static_cast<T*>(out), in, n);
    });
  }
  void add_f32(float* acc, const float* x, int64_t n) override { isa::add_f32(acc, x, n); }
  void sum_squares(double* out, const float* x, int64_t n) override {
    *out = isa::sum_squares(x, n);
  }
  void accumulate_sum(double* acc, const float* x, int64_t n) override {
    *acc += isa::sum_f32(x, n);
  }
  void sum_f64_in_order(double* out, const double* x, int64_t n) override {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += x[i];
    *out = s;
  }
  void cross_entropy_from_partials(float* losses, float* lse, const double* row_max,
                                   const double* sum, const double* target_logit,
                                   const int32_t* targets, int64_t n) override {
    isa::cross_entropy_from_partials(losses, lse, row_max, sum, target_logit, targets, n);
  }
};

}  // namespace

Backend& cpu_backend_of_this_isa() {
  static CpuBackend backend;
  return backend;
}

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
