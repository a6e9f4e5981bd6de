#include "models/gpt.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/backend.h"
#include "runtime/error.h"

namespace shardtrain::models {
namespace {

namespace k = shardtrain::kernels;

// Parameter indices inside a block unit, in Hugging Face order.
enum BlockParam {
  kLn1W,
  kLn1B,
  kAttnW,
  kAttnB,
  kAttnProjW,
  kAttnProjB,
  kLn2W,
  kLn2B,
  kFcW,
  kFcB,
  kMlpProjW,
  kMlpProjB,
  kNumBlockParams
};

}  // namespace

// Row-major GEMMs with the model's three patterns; S is the compute dtype.
template <class S>
void Gpt<S>::linear(S* out, const S* in, const S* w, const S* bias, int64_t N, int64_t K,
                    int64_t M) {
  // out (N,M) = in (N,K) @ w (K,M) + bias (M)
  k::GemmDesc d;
  d.shape = {N, M, K};
  d.ab_dtype = d.c_dtype = dt_;
  be_.gemm(d, in, w, out, bias);
}

template <class S>
void Gpt<S>::linear_dinput(S* din, const S* dout, const S* w, int64_t N, int64_t K, int64_t M) {
  // din (N,K) = dout (N,M) @ w^T, w stored (K,M)
  k::GemmDesc d;
  d.shape = {N, K, M};
  d.ab_dtype = d.c_dtype = dt_;
  d.trans_b = true;
  be_.gemm(d, dout, w, din);
}

template <class S>
void Gpt<S>::linear_dweight(float* dw, const S* in, const S* dout, int64_t N, int64_t K,
                            int64_t M) {
  // dw (K,M) += in^T @ dout, in stored (N,K), dout (N,M); fp32 accumulation
  k::GemmDesc d;
  d.shape = {K, M, N};
  d.ab_dtype = dt_;
  d.c_dtype = DType::kF32;
  d.trans_a = true;
  d.beta = 1.0f;
  be_.gemm(d, in, dout, dw);
}

template <class S>
template <class P>
const P* Gpt<S>::param(const void* unit_base, int unit, int index) const {
  return static_cast<const P*>(unit_base) + layout_[size_t(unit)].params[size_t(index)].offset;
}

template <class S>
Gpt<S>::Gpt(const GptDims& dims, int64_t B, int64_t T, TrackingAllocator& alloc, Communicator* tp,
            kernels::Backend& backend)
    : dims_(dims),
      B_(B),
      T_(T),
      tp_(tp),
      layout_(gpt_layout(dims)),
      be_(backend),
      dt_(dtype_of<S>()) {
  ST_CHECK(T <= dims.Tmax, "sequence length ", T, " exceeds the model's ", dims.Tmax);
  ST_CHECK(dims.tp == 1 || (tp != nullptr && tp->size() == dims.tp), "tp group of size ", dims.tp,
           " required");
  tp_rank_ = tp ? tp->rank() : 0;
  vocab_begin_ = int64_t(tp_rank_) * (dims.Vp / dims.tp);
  const DType dt = dtype_of<S>();
  // This rank's widths: attention heads, qkv columns, MLP columns, vocabulary rows; and the
  // rows of the LayerNorm/residual regions.
  const int64_t N = B * T, C = dims.C, t = dims.tp, Hl = dims.H / t;
  sp_ = dims.sequence_parallel;
  ST_CHECK(!sp_ || N % t == 0, "sequence parallelism needs B*T divisible by tp");
  rows_ = sp_ ? N / t : N;
  row0_ = sp_ ? int64_t(tp_rank_) * rows_ : 0;
  const int64_t R = rows_;
  auto act = [&](Shape s, DType d, const std::string& tag) {
    return Tensor::empty(s, d, alloc, MemCategory::kActivations, tag);
  };
  auto work = [&](Shape s, const std::string& tag) {
    return Tensor::empty(s, dt, alloc, MemCategory::kWorkspace, tag);
  };
  inputs_ = Tensor::empty({B, T}, DType::kI32, alloc, MemCategory::kActivations, "inputs");
  for (int64_t l = 0; l <= dims.L; ++l)
    residual_.push_back(act({R, C}, dt, str_cat("residual.", l)));
  for (int64_t l = 0; l < dims.L; ++l) {
    const std::string p = str_cat("h.", l, ".");
    BlockActivations b;
    b.ln1 = act({N, C}, dt, p + "ln1");
    b.ln1_mean = act({R}, DType::kF32, p + "ln1_mean");
    b.ln1_rstd = act({R}, DType::kF32, p + "ln1_rstd");
    b.qkv = act({N, 3 * C / t}, dt, p + "qkv");
    b.atty = act({N, C / t}, dt, p + "atty");
    b.lse = act({B, Hl, T}, DType::kF32, p + "attn_lse");
    b.res2 = act({R, C}, dt, p + "res2");
    b.ln2 = act({N, C}, dt, p + "ln2");
    b.ln2_mean = act({R}, DType::kF32, p + "ln2_mean");
    b.ln2_rstd = act({R}, DType::kF32, p + "ln2_rstd");
    b.fch = act({N, 4 * C / t}, dt, p + "fch");
    b.fch_gelu = act({N, 4 * C / t}, dt, p + "fch_gelu");
    blocks_.push_back(std::move(b));
  }
  lnf_ = act({N, C}, dt, "lnf");
  lnf_mean_ = act({R}, DType::kF32, "lnf_mean");
  lnf_rstd_ = act({R}, DType::kF32, "lnf_rstd");
  logits_ = act({N, dims.Vp / t}, dt, "logits");
  losses_ = act({N}, DType::kF32, "losses");
  loss_lse_ = act({N}, DType::kF32, "loss_lse");
  loss_sum_ = act({2}, DType::kF32, "loss_sum");  // one double
  zero_loss_sum();
  targets_ = Tensor::empty({B, T}, DType::kI32, alloc, MemCategory::kActivations, "targets");
  dres_ = work({R, C}, "d_residual");
  dln_ = work({N, C}, "d_ln");
  datty_ = work({N, C / t}, "d_atty");
  dqkv_ = work({N, 3 * C / t}, "d_qkv");
  dfch_ = work({N, 4 * C / t}, "d_fch");
  dscratch_ = work({N, C}, "d_proj_out");
  if (t > 1) {
    ce_max_ = Tensor::empty({2 * N}, DType::kF32, alloc, MemCategory::kWorkspace, "ce_row_max");
    ce_aux_ = Tensor::empty({4 * N}, DType::kF32, alloc, MemCategory::kWorkspace, "ce_row_aux");
  }
  if (sp_) {
    ln_local_ = work({R, C}, "sp_ln_local");
    proj_local_ = work({R, C}, "sp_proj_local");
    dln_local_ = work({R, C}, "sp_dln_local");
    dres_full_ = work({N, C}, "sp_dres_full");
  }
}

template <class S>
void Gpt<S>::tp_all_reduce(S* x, int64_t n) {
  if (dims_.tp > 1) tp_->all_reduce(x, n, dtype_of<S>());
}

template <class S>
void Gpt<S>::gather_rows(const S* local, S* full) {
  if (sp_) tp_->all_gather(local, full, rows_ * dims_.C, dtype_of<S>());
}

template <class S>
void Gpt<S>::scatter_rows(S* full, S* local) {
  if (sp_) {
    tp_->reduce_scatter(full, local, rows_ * dims_.C, dtype_of<S>());
  } else {
    tp_all_reduce(full, rows_ * dims_.C);  // local == full
  }
}

template <class S>
void Gpt<S>::layer_norm(Tensor& full, Tensor& mean, Tensor& rstd, const S* x, const S* weight,
                        const S* bias, const S* add, S* res) {
  S* out = sp_ ? ln_local_.data<S>() : full.data<S>();
  const k::RowsShape s{rows_, dims_.C};
  if (add != nullptr) {
    be_.residual_layernorm_forward(dt_, res, out, mean.data<float>(), rstd.data<float>(), x, add,
                                   weight, bias, s, float(kGptLayerNormEps));
  } else {
    be_.layernorm_forward(dt_, out, mean.data<float>(), rstd.data<float>(), x, weight, bias, s,
                          float(kGptLayerNormEps));
  }
  gather_rows(out, full.data<S>());
}

// Token + position embedding. tp == 1: the kernel. tp > 1 (vocab-parallel): each rank looks up
// the tokens its wte rows hold (zero for the others), the group sums (reduce-scatters under
// sequence parallelism), then wpe is added to this rank's rows.
template <class S>
void Gpt<S>::embed(const void* emb) {
  const int64_t B = B_, T = T_, C = dims_.C;
  const S* wte = param<S>(emb, 0, 0);
  const S* wpe = param<S>(emb, 0, 1);
  const int32_t* inputs = inputs_.data<int32_t>();
  S* out = residual_[0].template data<S>();
  if (dims_.tp == 1) {
    be_.embedding_forward(dt_, out, inputs, wte, wpe, {B, T, C});
    return;
  }
  S* partial = sp_ ? dscratch_.template data<S>() : out;
  be_.embedding_lookup_slice(dt_, partial, inputs, wte, vocab_begin_, dims_.Vp / dims_.tp, B * T,
                             C);
  scatter_rows(partial, out);
  be_.add_positions(dt_, out, wpe, rows_, row0_, T, C);
}

// wte: every row's gradient (all-gathered under sequence parallelism) for the tokens this
// rank's vocabulary slice holds. wpe: this rank's rows (partial under sequence parallelism,
// summed over the tp group by the ZeRO engine). Positions in order: deterministic.
template <class S>
void Gpt<S>::embed_backward(float* dwte, float* dwpe, const S* dres) {
  const int64_t B = B_, T = T_, C = dims_.C;
  const int32_t* inputs = inputs_.data<int32_t>();
  if (dims_.tp == 1) {
    be_.embedding_backward(dt_, dwte, dwpe, dres, inputs, {B, T, C});
    return;
  }
  const S* full = dres;
  if (sp_) {
    gather_rows(dres, dres_full_.template data<S>());
    full = dres_full_.template data<S>();
  }
  be_.embedding_backward_slice(dt_, dwte, full, inputs, vocab_begin_, dims_.Vp / dims_.tp, B * T,
                               C);
  be_.positions_backward(dt_, dwpe, dres, rows_, row0_, T, C);
}

// Vocab-parallel cross-entropy (Megatron): per row, the max and the sum of exponentials over
// the whole vocabulary and the target's logit are reduced over the tp group (in double, in the
// backend's memory, stream-ordered: no host wait); padding columns (global index >= V) take no
// part. Leaves the per-token losses and logsumexps in losses_ and loss_lse_.
template <class S>
void Gpt<S>::vocab_parallel_loss() {
  const int64_t N = B_ * T_, Vl = dims_.Vp / dims_.tp;
  const int64_t valid = std::clamp<int64_t>(dims_.V - vocab_begin_, 0, Vl);
  const S* logits = logits_.template data<S>();
  auto* dmax = static_cast<double*>(ce_max_.raw());
  auto* dtgt = static_cast<double*>(ce_aux_.raw());
  double* dsum = dtgt + N;
  be_.cross_entropy_partial_max(dt_, dmax, dtgt, logits, targets_.data<int32_t>(), vocab_begin_,
                                {N, Vl}, valid);
  tp_->all_reduce_f64_async(dmax, N, /*max=*/true)->wait();
  tp_->all_reduce_f64_async(dtgt, N, /*max=*/false)->wait();
  be_.cross_entropy_partial_sumexp(dt_, dsum, logits, dmax, {N, Vl}, valid);
  tp_->all_reduce_f64_async(dsum, N, /*max=*/false)->wait();
  be_.cross_entropy_from_partials(losses_.data<float>(), loss_lse_.data<float>(), dmax, dsum, dtgt,
                                  targets_.data<int32_t>(), N);
}

template <class S>
void Gpt<S>::zero_loss_sum() {
  be_.zero(loss_sum_.raw(), loss_sum_.bytes());
}

template <class S>
void Gpt<S>::forward(ParamSource& ps, const int32_t* inputs, const int32_t* targets) {
  const int64_t N = B_ * T_, C = dims_.C, L = dims_.L, t = dims_.tp;
  const int64_t Vl = dims_.Vp / t, R = rows_;
  const bool split = t > 1;
  const k::AttentionShape attn{B_, T_, dims_.H / t, C / dims_.H};
  be_.upload(inputs_.raw(), inputs, N * int64_t(sizeof(int32_t)));
  if (targets) be_.upload(targets_.raw(), targets, N * int64_t(sizeof(int32_t)));

  // 1. Embeddings.
  ps.acquire(0);
  embed(ps.params(0));
  ps.release(0);

  // 2. Blocks. LayerNorms run on this rank's rows and are gathered (sequence parallel) before
  //    the column-parallel layer; row-parallel c_proj outputs are partial sums under tp:
  //    all-reduced (reduce-scattered under sequence parallelism), then the replicated bias is
  //    added. With tp == 1 the bias rides in the GEMM.
  for (int64_t l = 0; l < L; ++l) {
    const int u = int(l) + 1;
    BlockActivations& b = blocks_[size_t(l)];
    ps.acquire(u);
    const void* w = ps.params(u);
    const S* x = residual_[size_t(l)].data<S>();
    auto row_parallel_out = [&](const S* in, int64_t K, int wi, int bi) -> const S* {
      S* partial = dscratch_.data<S>();
      linear(partial, in, param<S>(w, u, wi), split ? nullptr : param<S>(w, u, bi), N, K, C);
      if (!split) return partial;
      S* out = sp_ ? proj_local_.data<S>() : partial;
      scatter_rows(partial, out);
      be_.add_bias(dt_, out, param<S>(w, u, bi), R, C);
      return out;
    };
    layer_norm(b.ln1, b.ln1_mean, b.ln1_rstd, x, param<S>(w, u, kLn1W), param<S>(w, u, kLn1B));
    linear(b.qkv.data<S>(), b.ln1.data<S>(), param<S>(w, u, kAttnW), param<S>(w, u, kAttnB), N, C,
           3 * C / t);
    be_.attention_forward(dt_, b.atty.data<S>(), b.lse.data<float>(), b.qkv.data<S>(), attn);
    const S* attn_out = row_parallel_out(b.atty.data<S>(), C / t, kAttnProjW, kAttnProjB);
    // res2 = x + attn_out and ln2 = LN(res2), one pass.
    layer_norm(b.ln2, b.ln2_mean, b.ln2_rstd, x, param<S>(w, u, kLn2W), param<S>(w, u, kLn2B),
               attn_out, b.res2.data<S>());
    {
      k::GemmDesc d;  // fch (N,4C/t) = ln2 @ W_fc + b_fc, fch_gelu = gelu(fch): one epilogue
      d.shape = {N, 4 * C / t, C};
      d.ab_dtype = d.c_dtype = dt_;
      be_.gemm_bias_gelu(d, b.ln2.data<S>(), param<S>(w, u, kFcW), b.fch_gelu.data<S>(),
                         b.fch.data<S>(), param<S>(w, u, kFcB));
    }
    const S* mlp_out = row_parallel_out(b.fch_gelu.data<S>(), 4 * C / t, kMlpProjW, kMlpProjB);
    be_.residual_add(dt_, residual_[size_t(l) + 1].data<S>(), b.res2.data<S>(), mlp_out, R * C);
    ps.release(u);
  }

  // 3. Final LayerNorm (gathered under sequence parallelism), then the head tied to wte:
  //    logits (N, Vp/tp) = lnf @ wte_slice^T.
  const int uf = int(L) + 1;
  ps.acquire(uf);
  const void* wf = ps.params(uf);
  layer_norm(lnf_, lnf_mean_, lnf_rstd_, residual_[size_t(L)].data<S>(), param<S>(wf, uf, 0),
             param<S>(wf, uf, 1));
  ps.release(uf);
  ps.acquire(0);
  {
    k::GemmDesc d;
    d.shape = {N, Vl, C};
    d.ab_dtype = d.c_dtype = dt_;
    d.trans_b = true;
    be_.gemm(d, lnf_.data<S>(), param<S>(ps.params(0), 0, 0), logits_.data<S>());
  }
  ps.release(0);
  if (targets == nullptr) return;

  // 4. Loss: per-token cross-entropy over the real vocabulary, summed in a fixed order into
  //    loss_sum_ (on the device).
  if (split) {
    vocab_parallel_loss();
  } else {
    be_.cross_entropy_forward(dt_, losses_.data<float>(), loss_lse_.data<float>(),
                              logits_.data<S>(), targets_.data<int32_t>(), {N, Vl}, dims_.V);
  }
  be_.accumulate_sum(static_cast<double*>(loss_sum_.raw()), losses_.data<float>(), N);
}

template <class S>
void Gpt<S>::backward(ParamSource& ps, float grad_weight) {
  const int64_t N = B_ * T_, C = dims_.C, L = dims_.L, t = dims_.tp;
  const int64_t Vl = dims_.Vp / t, R = rows_;
  const k::AttentionShape attn{B_, T_, dims_.H / t, C / dims_.H};
  const int32_t* targets = targets_.data<int32_t>();
  S* dres = dres_.data<S>();                         // (R,C): this rank's rows
  S* dres_full = sp_ ? dres_full_.data<S>() : dres;  // (N,C)
  S* dln = dln_.data<S>();                           // (N,C): partial under tp
  S* dln_local = sp_ ? dln_local_.data<S>() : dln;   // (R,C)

  // 1. Loss and head: dlogits in place, then dlnf = dlogits @ wte (partial sums under tp:
  //    all-reduced, or reduce-scattered to this rank's rows), dwte += dlogits^T @ lnf.
  S* dlogits = logits_.data<S>();
  if (t > 1) {
    const int64_t valid = std::clamp<int64_t>(dims_.V - vocab_begin_, 0, Vl);
    be_.cross_entropy_backward_slice(dt_, dlogits, dlogits, loss_lse_.data<float>(), targets,
                                     vocab_begin_, grad_weight, {N, Vl}, valid);
  } else {
    be_.cross_entropy_backward(dt_, dlogits, dlogits, loss_lse_.data<float>(), targets, grad_weight,
                               {N, Vl}, dims_.V);
  }
  ps.acquire(0);
  {
    k::GemmDesc d;
    d.shape = {N, C, Vl};
    d.ab_dtype = d.c_dtype = dt_;
    be_.gemm(d, dlogits, param<S>(ps.params(0), 0, 0), dln);
    float* dwte = ps.grads(0) + layout_[0].params[0].offset;  // (Vp/tp,C) += dlogits^T @ lnf
    linear_dweight(dwte, dlogits, lnf_.data<S>(), N, Vl, C);
  }
  ps.release(0);
  scatter_rows(dln, dln_local);

  // 2. Final LayerNorm: dres = dLN_f(dlnf), on this rank's rows.
  const int uf = int(L) + 1;
  ps.acquire(uf);
  {
    be_.zero(dres, R * C * int64_t(sizeof(S)));
    float* g = ps.grads(uf);
    be_.layernorm_backward(dt_, dres, g + layout_[size_t(uf)].params[0].offset,
                           g + layout_[size_t(uf)].params[1].offset, dln_local,
                           residual_[size_t(L)].data<S>(), param<S>(ps.params(uf), uf, 0),
                           lnf_mean_.data<float>(), lnf_rstd_.data<float>(), {R, C});
  }
  ps.release(uf);
  ps.grads_done(uf);

  // 3. Blocks in reverse; dres carries dLoss/d(residual stream) between them (this rank's rows;
  //    all of them, replicated over the tp group, without sequence parallelism).
  for (int64_t l = L - 1; l >= 0; --l) {
    const int u = int(l) + 1;
    BlockActivations& b = blocks_[size_t(l)];
    ps.acquire(u);
    const void* w = ps.params(u);
    float* g = ps.grads(u);
    auto grad = [&](int index) { return g + layout_[size_t(u)].params[size_t(index)].offset; };

    // MLP: out = res2 + c_proj(gelu(c_fc(ln2(res2)))).
    gather_rows(dres, dres_full);
    linear_dweight(grad(kMlpProjW), b.fch_gelu.data<S>(), dres_full, N, 4 * C / t, C);
    be_.bias_backward(dt_, grad(kMlpProjB), dres, R, C);
    S* dfch = dfch_.data<S>();
    linear_dinput(dfch, dres_full, param<S>(w, u, kMlpProjW), N, 4 * C / t, C);
    be_.gelu_backward(dt_, dfch, b.fch.data<S>(), dfch, N * 4 * C / t);
    linear_dweight(grad(kFcW), b.ln2.data<S>(), dfch, N, C, 4 * C / t);
    be_.bias_backward(dt_, grad(kFcB), dfch, N, 4 * C / t);
    linear_dinput(dln, dfch, param<S>(w, u, kFcW), N, C, 4 * C / t);
    scatter_rows(dln, dln_local);
    be_.layernorm_backward(dt_, dres, grad(kLn2W), grad(kLn2B), dln_local, b.res2.data<S>(),
                           param<S>(w, u, kLn2W), b.ln2_mean.data<float>(),
                           b.ln2_rstd.data<float>(), {R, C});

    // Attention: res2 = x + c_proj(attn(c_attn(ln1(x)))).
    gather_rows(dres, dres_full);
    linear_dweight(grad(kAttnProjW), b.atty.data<S>(), dres_full, N, C / t, C);
    be_.bias_backward(dt_, grad(kAttnProjB), dres, R, C);
    S* datty = datty_.data<S>();
    linear_dinput(datty, dres_full, param<S>(w, u, kAttnProjW), N, C / t, C);
    S* dqkv = dqkv_.data<S>();
    be_.attention_backward(dt_, dqkv, datty, b.qkv.data<S>(), b.atty.data<S>(), b.lse.data<float>(),
                           attn);
    linear_dweight(grad(kAttnW), b.ln1.data<S>(), dqkv, N, C, 3 * C / t);
    be_.bias_backward(dt_, grad(kAttnB), dqkv, N, 3 * C / t);
    linear_dinput(dln, dqkv, param<S>(w, u, kAttnW), N, C, 3 * C / t);
    scatter_rows(dln, dln_local);
    be_.layernorm_backward(dt_, dres, grad(kLn1W), grad(kLn1B), dln_local,
                           residual_[size_t(l)].data<S>(), param<S>(w, u, kLn1W),
                           b.ln1_mean.data<float>(), b.ln1_rstd.data<float>(), {R, C});
    ps.release(u);
    ps.grads_done(u);
  }

  // 4. Embeddings (their wte gradient already holds the head's share).
  float* g0 = ps.grads(0);
  embed_backward(g0 + layout_[0].params[0].offset, g0 + layout_[0].params[1].offset, dres);
  ps.grads_done(0);
}

template class Gpt<float>;
template class Gpt<BFloat16>;
template class Gpt<Half>;

}  // namespace shardtrain::models
