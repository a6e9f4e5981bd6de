#include "kernels/profiler.h"

#include <algorithm>
#include <chrono>

#include "runtime/log.h"

namespace shardtrain::kernels {

void OpProfile::set_enabled(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  enabled_ = on;
}

bool OpProfile::enabled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return enabled_;
}

void OpProfile::add(const std::string& key, int64_t ns, double flops) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!enabled_) return;
  Entry& e = entries_[key];
  if (e.key.empty()) e.key = key;
  e.calls += 1;
  e.ns += ns;
  e.flops += flops;
}

void OpProfile::add_step(int64_t ns) {
  std::lock_guard<std::mutex> lock(mu_);
  steps_ += 1;
  step_ns_ += ns;
}

int64_t OpProfile::steps() const {
  std::lock_guard<std::mutex> lock(mu_);
  return steps_;
}

int64_t OpProfile::step_ns() const {
  std::lock_guard<std::mutex> lock(mu_);
  return step_ns_;
}

std::vector<OpProfile::Entry> OpProfile::entries() const {
  std::vector<Entry> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, e] : entries_) out.push_back(e);
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const Entry& a, const Entry& b) { return a.ns > b.ns; });
  return out;
}

std::string gemm_profile_key(const GemmDesc& d) {
  std::string shape = str_cat(d.shape.m, "x", d.shape.n, "x", d.shape.k);
  if (d.shape.batch != 1) shape += str_cat("x", d.shape.batch);
  return str_cat("gemm ", shape, " ", d.trans_a ? "T" : "N", d.trans_b ? "T" : "N", " ",
                 dtype_name(d.ab_dtype), "->", dtype_name(d.c_dtype));
}

namespace {

using Clock = std::chrono::steady_clock;

// Times one call: from construction to destruction, into `profile` under `key`.
class Timer {
 public:
  Timer(OpProfile& profile, std::string key, double flops = 0)
      : profile_(profile), key_(std::move(key)), flops_(flops), t0_(Clock::now()) {}
  ~Timer() {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0_);
    profile_.add(key_, ns.count(), flops_);
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

 private:
  OpProfile& profile_;
  std::string key_;
  double flops_;
  Clock::time_point t0_;
};

double gemm_flops(const GemmDesc& d) {
  return 2.0 * double(d.shape.m) * double(d.shape.n) * double(d.shape.k) * double(d.shape.batch);
}

class ProfilingBackend final : public Backend {
 public:
  ProfilingBackend(Backend& inner, OpProfile& profile) : inner_(inner), profile_(profile) {}

  const char* name() const override { return inner_.name(); }
  bool supports_attention(DType t, int64_t head_dim) const override {
    return inner_.supports_attention(t, head_dim);
  }
  void synchronize() override { inner_.synchronize(); }
  void download_async(void* host, const void* src, int64_t bytes) override {
    Timer timer(profile_, "download_async");
    inner_.download_async(host, src, bytes);
  }
  void gemm(const GemmDesc& d, const void* a, const void* b, void* c, const void* bias) override {
    Timer timer(profile_, gemm_profile_key(d), gemm_flops(d));
    inner_.gemm(d, a, b, c, bias);
  }
  void gemm_bias_gelu(const GemmDesc& d, const void* a, const void* b, void* out, void* pre,
                      const void* bias) override {
    Timer timer(profile_, "gemm_bias_gelu" + gemm_profile_key(d).substr(4), gemm_flops(d));
    inner_.gemm_bias_gelu(d, a, b, out, pre, bias);
  }
  void copy(void* dst, const void* src, int64_t bytes) override {
    Timer timer(profile_, "copy");
    inner_.copy(dst, src, bytes);
  }
  void upload(void* dst, const void* host, int64_t bytes) override {
    Timer timer(profile_, "upload");
    inner_.upload(dst, host, bytes);
  }
  void download(void* host, const void* src, int64_t bytes) override {
    Timer timer(profile_, "download");
    inner_.download(host, src, bytes);
  }
  void zero(void* dst, int64_t bytes) override {
    Timer timer(profile_, "zero");
    inner_.zero(dst, bytes);
  }
  void layernorm_forward(DType t, void* out, float* mean, float* rstd, const void* x,
                         const void* weight, const void* bias, RowsShape s, float eps) override {
    Timer timer(profile_, "layernorm_forward");
    inner_.layernorm_forward(t, out, mean, rstd, x, weight, bias, s, eps);
  }
  void residual_layernorm_forward(DType t, void* res, void* out, float* mean, float* rstd,
                                  const void* a, const void* b, const void* weight,
                                  const void* bias, RowsShape s, float eps) override {
    Timer timer(profile_, "residual_layernorm_forward");
    inner_.residual_layernorm_forward(t, res, out, mean, rstd, a, b, weight, bias, s, eps);
  }
  void layernorm_backward(DType t, void* dx, float* dweight, float* dbias, const void* dout,
                          const void* x, const void* weight, const float* mean, const float* rstd,
                          RowsShape s) override {
    Timer timer(profile_, "layernorm_backward");
    inner_.layernorm_backward(t, dx, dweight, dbias, dout, x, weight, mean, rstd, s);
  }
  void attention_forward(DType t, void* out, float* lse, const void* qkv,
                         AttentionShape s) override {
    Timer timer(profile_, "attention_forward");
    inner_.attention_forward(t, out, lse, qkv, s);
  }
  void attention_backward(DType t, void* dqkv, const void* dout, const void* qkv, const void* out,
                          const float* lse, AttentionShape s) override {
    Timer timer(profile_, "attention_backward");
    inner_.attention_backward(t, dqkv, dout, qkv, out, lse, s);
  }
  void attention_decode(DType t, void* out, const void* q, int64_t q_stride, const void* k,
                        const void* v, int64_t k_stride, AttentionShape s, int64_t pos,
                        int64_t n) override {
    Timer timer(profile_, "attention_decode");
    inner_.attention_decode(t, out, q, q_stride, k, v, k_stride, s, pos, n);
  }
  void gelu_forward(DType t, void* out, const void* x, int64_t n) override {
    Timer timer(profile_, "gelu_forward");
    inner_.gelu_forward(t, out, x, n);
  }
  void gelu_backward(DType t, void* dx, const void* x, const void* dout, int64_t n) override {
    Timer timer(profile_, "gelu_backward");
    inner_.gelu_backward(t, dx, x, dout, n);
  }
  void residual_add(DType t, void* out, const void* a, const void* b, int64_t n) override {
    Timer timer(profile_, "residual_add");
    inner_.residual_add(t, out, a, b, n);
  }
  void bias_backward(DType t, float* dbias, const void* dout, int64_t rows, int64_t cols) override {
    Timer timer(profile_, "bias_backward");
    inner_.bias_backward(t, dbias, dout, rows, cols);
  }
  void add_bias(DType t, void* x, const void* bias, int64_t rows, int64_t cols) override {
    Timer timer(profile_, "add_bias");
    inner_.add_bias(t, x, bias, rows, cols);
  }
  void embedding_forward(DType t, void* out, const int32_t* tokens, const void* wte,
                         const void* wpe, EmbeddingShape s) override {
    Timer timer(profile_, "embedding_forward");
    inner_.embedding_forward(t, out, tokens, wte, wpe, s);
  }
  void embedding_backward(DType t, float* dwte, float* dwpe, const void* dout,
                          const int32_t* tokens, EmbeddingShape s) override {
    Timer timer(profile_, "embedding_backward");
    inner_.embedding_backward(t, dwte, dwpe, dout, tokens, s);
  }
  void cross_entropy_forward(DType t, float* losses, float* lse, const void* logits,
                             const int32_t* targets, LogitsShape s, int64_t valid_vocab) override {
    Timer timer(profile_, "cross_entropy_forward");
    inner_.cross_entropy_forward(t, losses, lse, logits, targets, s, valid_vocab);
  }
  void cross_entropy_backward(DType t, void* dlogits, const void* logits, const float* lse,
                              const int32_t* targets, float grad_weight, LogitsShape s,
                              int64_t valid_vocab) override {
    Timer timer(profile_, "cross_entropy_backward");
    inner_.cross_entropy_backward(t, dlogits, logits, lse, targets, grad_weight, s, valid_vocab);
  }
  void rmsnorm_forward(DType t, void* out, float* rstd, const void* x, const void* weight,
                       RowsShape s, float eps) override {
    Timer timer(profile_, "rmsnorm_forward");
    inner_.rmsnorm_forward(t, out, rstd, x, weight, s, eps);
  }
  void residual_rmsnorm_forward(DType t, void* res, void* out, float* rstd, const void* a,
                                const void* b, const void* weight, RowsShape s,
                                float eps) override {
    Timer timer(profile_, "residual_rmsnorm_forward");
    inner_.residual_rmsnorm_forward(t, res, out, rstd, a, b, weight, s, eps);
  }
  void rmsnorm_backward(DType t, void* dx, float* dweight, const void* dout, const void* x,
                        const void* weight, const float* rstd, RowsShape s) override {
    Timer timer(profile_, "rmsnorm_backward");
    inner_.rmsnorm_backward(t, dx, dweight, dout, x, weight, rstd, s);
  }
  void rope_forward(DType t, void* x, const float* table, RopeShape s) override {
    Timer timer(profile_, "rope_forward");
    inner_.rope_forward(t, x, table, s);
  }
  void rope_backward(DType t, void* dx, const float* table, RopeShape s) override {
    Timer timer(profile_, "rope_backward");
    inner_.rope_backward(t, dx, table, s);
  }
  void swiglu_forward(DType t, void* out, const void* gu, int64_t rows, int64_t ffn) override {
    Timer timer(profile_, "swiglu_forward");
    inner_.swiglu_forward(t, out, gu, rows, ffn);
  }
  void swiglu_backward(DType t, void* dgu, const void* gu, const void* dout, int64_t rows,
                       int64_t ffn) override {
    Timer timer(profile_, "swiglu_backward");
    inner_.swiglu_backward(t, dgu, gu, dout, rows, ffn);
  }
  void embedding_lookup_slice(DType t, void* out, const int32_t* tokens, const void* wte,
                              int64_t vocab_begin, int64_t vocab_rows, int64_t n,
                              int64_t C) override {
    Timer timer(profile_, "embedding_lookup_slice");
    inner_.embedding_lookup_slice(t, out, tokens, wte, vocab_begin, vocab_rows, n, C);
  }
  void add_positions(DType t, void* x, const void* wpe, int64_t rows, int64_t row0, int64_t T,
                     int64_t C) override {
    Timer timer(profile_, "add_positions");
    inner_.add_positions(t, x, wpe, rows, row0, T, C);
  }
  void embedding_backward_slice(DType t, float* dwte, const void* dout, const int32_t* tokens,
                                int64_t vocab_begin, int64_t vocab_rows, int64_t n,
                                int64_t C) override {
    Timer timer(profile_, "embedding_backward_slice");
    inner_.embedding_backward_slice(t, dwte, dout, tokens, vocab_begin, vocab_rows, n, C);
  }
  void positions_backward(DType t, float* dwpe, const void* dout, int64_t rows, int64_t row0,
                          int64_t T, int64_t C) override {
    Timer timer(profile_, "positions_backward");
    inner_.positions_backward(t, dwpe, dout, rows, row0, T, C);
  }
  void cross_entropy_partial_max(DType t, double* row_max, double* target_logit, const void* logits,
                                 const int32_t* targets, int64_t vocab_begin, LogitsShape s,
                                 int64_t valid) override {
    Timer timer(profile_, "cross_entropy_partial_max");
    inner_.cross_entropy_partial_max(t, row_max, target_logit, logits, targets, vocab_begin, s,
                                     valid);
  }
  void cross_entropy_partial_sumexp(DType t, double* sum, const void* logits, const double* row_max,
                                    LogitsShape s, int64_t valid) override {
    Timer timer(profile_, "cross_entropy_partial_sumexp");
    inner_.cross_entropy_partial_sumexp(t, sum, logits, row_max, s, valid);
  }
  void cross_entropy_backward_slice(DType t, void* dlogits, const void* logits, const float* lse,
                                    const int32_t* targets, int64_t vocab_begin, float grad_weight,
                                    LogitsShape s, int64_t valid) override {
    Timer timer(profile_, "cross_entropy_backward_slice");
    inner_.cross_entropy_backward_slice(t, dlogits, logits, lse, targets, vocab_begin, grad_weight,
                                        s, valid);
  }
  void cross_entropy_from_partials(float* losses, float* lse, const double* row_max,
                                   const double* sum, const double* target_logit,
                                   const int32_t* targets, int64_t n) override {
    Timer timer(profile_, "cross_entropy_from_partials");
    inner_.cross_entropy_from_partials(losses, lse, row_max, sum, target_logit, targets, n);
  }
  void adamw_update_segments(float* param, const float* grad, float* m, float* v, DType t,
                             void* compute_param, const AdamWSegment* segments,
                             int64_t num_segments, const AdamWParams& p,
                             float grad_scale) override {
    Timer timer(profile_, "adamw_update_segments");
    inner_.adamw_update_segments(param, grad, m, v, t, compute_param, segments, num_segments, p,
                                 grad_scale);
  }
  void cast_from_f32(DType t, void* out, const float* in, int64_t n) override {
    Timer timer(profile_, "cast_from_f32");
    inner_.cast_from_f32(t, out, in, n);
  }
  void add_f32(float* acc, const float* x, int64_t n) override {
    Timer timer(profile_, "add_f32");
    inner_.add_f32(acc, x, n);
  }
  void sum_squares(double* out, const float* x, int64_t n) override {
    Timer timer(profile_, "sum_squares");
    inner_.sum_squares(out, x, n);
  }
  void accumulate_sum(double* acc, const float* x, int64_t n) override {
    Timer timer(profile_, "accumulate_sum");
    inner_.accumulate_sum(acc, x, n);
  }
  void sum_f64_in_order(double* out, const double* x, int64_t n) override {
    Timer timer(profile_, "sum_f64_in_order");
    inner_.sum_f64_in_order(out, x, n);
  }

 private:
  Backend& inner_;
  OpProfile& profile_;
};

}  // namespace

std::unique_ptr<Backend> make_profiling_backend(Backend& inner, OpProfile& profile) {
  return std::make_unique<ProfilingBackend>(inner, profile);
}

}  // namespace shardtrain::kernels
