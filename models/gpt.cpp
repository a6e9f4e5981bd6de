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

// Llama's block parameters, in Hugging Face order (models/gpt_layout.cpp). q|k|v and gate|up
// are adjacent: one (out, in) matrix each, starting at kQ and kGate.
enum LlamaParam { kInNorm, kQ, kK, kV, kO, kPostNorm, kGate, kUp, kDown };

// Key/value heads on one tensor-parallel rank: KV / tp, or one (replicated) when tp > KV.
int64_t kv_local(const GptDims& d) { return d.KV % d.tp == 0 ? d.KV / d.tp : 1; }

}  // namespace

// Row-major GEMMs with the model's three patterns; S is the compute dtype.
template <class S>
void Gpt<S>::linear(S* out, const S* in, const S* w, const S* bias, int64_t N, int64_t K, int64_t M,
                    bool wt) {
  // out (N,M) = in (N,K) @ w (K,M) + bias (M); wt: w stored (M,K), out = in @ w^T
  k::GemmDesc d;
  d.shape = {N, M, K};
  d.ab_dtype = d.c_dtype = dt_;
  d.trans_b = wt;
  be_.gemm(d, in, w, out, bias);
}

template <class S>
void Gpt<S>::linear_dinput(S* din, const S* dout, const S* w, int64_t N, int64_t K, int64_t M,
                           bool wt) {
  // din (N,K) = dout (N,M) @ w^T, w stored (K,M); wt: w stored (M,K), din = dout @ w
  k::GemmDesc d;
  d.shape = {N, K, M};
  d.ab_dtype = d.c_dtype = dt_;
  d.trans_b = !wt;
  be_.gemm(d, dout, w, din);
}

template <class S>
void Gpt<S>::linear_dweight(float* dw, const S* in, const S* dout, int64_t N, int64_t K, int64_t M,
                            bool wt) {
  // dw (K,M) += in^T @ dout, in stored (N,K), dout (N,M); wt: dw (M,K) += dout^T @ in. fp32
  // accumulation.
  k::GemmDesc d;
  d.ab_dtype = dt_;
  d.c_dtype = DType::kF32;
  d.trans_a = true;
  d.beta = 1.0f;
  if (wt) {
    d.shape = {M, K, N};
    be_.gemm(d, dout, in, dw);
  } else {
    d.shape = {K, M, N};
    be_.gemm(d, in, dout, dw);
  }
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
      alloc_(alloc),
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
  const bool llama = dims.arch == Arch::kLlama;
  // Block widths on this rank: qkv columns (GPT-2: 3C/tp; Llama: (H + 2 KV) D / tp, K/V heads
  // replicated when tp > KV), the MLP's hidden width, and its input GEMM's output (Llama:
  // gate|up, twice the hidden width).
  const int64_t D = dims.D(), qkv_cols = (Hl + 2 * (llama ? kv_local(dims) : Hl)) * D;
  const int64_t Fl = dims.F / t, fc_cols = llama ? 2 * Fl : Fl;
  auto act = [&](Shape s, DType d, const std::string& tag) {
    return Tensor::empty(s, d, alloc, MemCategory::kActivations, tag);
  };
  auto work = [&](Shape s, const std::string& tag) {
    return Tensor::empty(s, dt, alloc, MemCategory::kWorkspace, tag);
  };
  inputs_ = Tensor::empty({B, T}, DType::kI32, alloc, MemCategory::kActivations, "inputs");
  for (int64_t l = 0; l <= dims.L; ++l)
    residual_.push_back(act({R, C}, dt, str_cat("residual.", l)));
  // A block's buffers in two groups: the norms' outputs and statistics with the MLP activation
  // (what SELECTIVE recomputes), and the GEMM and attention outputs (what it keeps). A block
  // allocates the groups it keeps; the others are the shared recompute buffers.
  auto allocate = [&](const std::string& p, BlockActivations& b, bool norms, bool gemms) {
    if (norms) {
      b.ln1 = act({N, C}, dt, p + "ln1");
      if (!llama) b.ln1_mean = act({R}, DType::kF32, p + "ln1_mean");
      b.ln1_rstd = act({R}, DType::kF32, p + "ln1_rstd");
      b.ln2 = act({N, C}, dt, p + "ln2");
      if (!llama) b.ln2_mean = act({R}, DType::kF32, p + "ln2_mean");
      b.ln2_rstd = act({R}, DType::kF32, p + "ln2_rstd");
      b.fch_gelu = act({N, Fl}, dt, p + "fch_gelu");
    }
    if (gemms) {
      b.qkv = act({N, qkv_cols}, dt, p + "qkv");
      b.atty = act({N, C / t}, dt, p + "atty");
      b.lse = act({B, Hl, T}, DType::kF32, p + "attn_lse");
      b.res2 = act({R, C}, dt, p + "res2");
      b.fch = act({N, fc_cols}, dt, p + "fch");
    }
  };
  bool any_full = false;
  for (int64_t l = 0; l < dims.L; ++l) any_full |= dims.block_recompute(l) == Recompute::kFull;
  if (dims.recompute != Recompute::kNone) allocate("recompute.", recomputed_, true, any_full);
  for (int64_t l = 0; l < dims.L; ++l) {
    const Recompute r = dims.block_recompute(l);
    BlockActivations b = recomputed_;  // shares the recompute buffers' storage
    allocate(str_cat("h.", l, "."), b, r == Recompute::kNone, r != Recompute::kFull);
    blocks_.push_back(std::move(b));
  }
  lnf_ = act({N, C}, dt, "lnf");
  if (!llama) lnf_mean_ = act({R}, DType::kF32, "lnf_mean");
  lnf_rstd_ = act({R}, DType::kF32, "lnf_rstd");
  logits_ = act({N, dims.Vp / t}, dt, "logits");
  losses_ = act({N}, DType::kF32, "losses");
  loss_lse_ = act({N}, DType::kF32, "loss_lse");
  loss_sum_ = act({2}, DType::kF32, "loss_sum");  // one double
  zero_loss_sum();
  targets_ = Tensor::empty({B, T}, DType::kI32, alloc, MemCategory::kActivations, "targets");
  if (llama) {  // the (T, D/2, 2) cos/sin of RoPE, computed on the host once
    const kernels::RopeScaling sc{float(dims.rope_factor), float(dims.rope_low),
                                  float(dims.rope_high), float(dims.rope_original)};
    const std::vector<float> table = kernels::rope_table(T, D, float(dims.rope_theta), sc);
    rope_table_ = act({int64_t(table.size())}, DType::kF32, "rope_table");
    be_.upload(rope_table_.raw(), table.data(), int64_t(table.size() * sizeof(float)));
  }
  dres_ = work({R, C}, "d_residual");
  dln_ = work({N, C}, "d_ln");
  datty_ = work({N, C / t}, "d_atty");
  dqkv_ = work({N, qkv_cols}, "d_qkv");
  dfch_ = work({N, fc_cols}, "d_fch");
  if (llama) dact_ = work({N, Fl}, "d_act");
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
  if (dims_.arch == Arch::kLlama) {
    const float eps = float(dims_.norm_eps);
    if (add != nullptr) {
      be_.residual_rmsnorm_forward(dt_, res, out, rstd.data<float>(), x, add, weight, s, eps);
    } else {
      be_.rmsnorm_forward(dt_, out, rstd.data<float>(), x, weight, s, eps);
    }
  } else if (add != nullptr) {
    be_.residual_layernorm_forward(dt_, res, out, mean.data<float>(), rstd.data<float>(), x, add,
                                   weight, bias, s, float(kGptLayerNormEps));
  } else {
    be_.layernorm_forward(dt_, out, mean.data<float>(), rstd.data<float>(), x, weight, bias, s,
                          float(kGptLayerNormEps));
  }
  gather_rows(out, full.data<S>());
}

template <class S>
void Gpt<S>::norm_backward(S* dx, float* dweight, float* dbias, const S* dout, const S* x,
                           const S* weight, Tensor& mean, Tensor& rstd) {
  const k::RowsShape s{rows_, dims_.C};
  if (dims_.arch == Arch::kLlama) {
    be_.rmsnorm_backward(dt_, dx, dweight, dout, x, weight, rstd.data<float>(), s);
  } else {
    be_.layernorm_backward(dt_, dx, dweight, dbias, dout, x, weight, mean.data<float>(),
                           rstd.data<float>(), s);
  }
}

template <class S>
const S* Gpt<S>::row_parallel(const void* w, int u, const S* in, int64_t K, int wi, int bi) {
  const int64_t N = B_ * T_, C = dims_.C;
  const bool split = dims_.tp > 1;
  const S* bias = bi >= 0 ? param<S>(w, u, bi) : nullptr;
  S* partial = dscratch_.data<S>();
  linear(partial, in, param<S>(w, u, wi), split ? nullptr : bias, N, K, C,
         dims_.arch == Arch::kLlama);
  if (!split) return partial;
  S* out = sp_ ? proj_local_.data<S>() : partial;
  scatter_rows(partial, out);
  if (bias != nullptr) be_.add_bias(dt_, out, bias, rows_, C);
  return out;
}

template <class S>
int Gpt<S>::head_unit() const {
  return dims_.tied ? 0 : int(dims_.L) + 1;
}
template <class S>
int Gpt<S>::head_param() const {
  return dims_.tied ? 0 : 1;  // wte, or lm_head after model.norm
}

// Token + position embedding. tp == 1: the kernel. tp > 1 (vocab-parallel): each rank looks up
// the tokens its wte rows hold (zero for the others), the group sums (reduce-scatters under
// sequence parallelism), then wpe is added to this rank's rows.
template <class S>
void Gpt<S>::embed(const void* emb) {
  const int64_t B = B_, T = T_, C = dims_.C;
  const S* wte = param<S>(emb, 0, 0);
  const S* wpe = dims_.arch == Arch::kLlama ? nullptr : param<S>(emb, 0, 1);
  const int32_t* inputs = inputs_.data<int32_t>();
  S* out = residual_[0].template data<S>();
  const bool llama = dims_.arch == Arch::kLlama;
  if (dims_.tp == 1 && !llama) {
    be_.embedding_forward(dt_, out, inputs, wte, wpe, {B, T, C});
    return;
  }
  // Llama (no position table) takes this path at tp == 1 too, where the slice is everything.
  S* partial = sp_ ? dscratch_.template data<S>() : out;
  be_.embedding_lookup_slice(dt_, partial, inputs, wte, vocab_begin_, dims_.Vp / dims_.tp, B * T,
                             C);
  scatter_rows(partial, out);
  if (!llama) be_.add_positions(dt_, out, wpe, rows_, row0_, T, C);
}

// wte: every row's gradient (all-gathered under sequence parallelism) for the tokens this
// rank's vocabulary slice holds. wpe: this rank's rows (partial under sequence parallelism,
// summed over the tp group by the ZeRO engine). Positions in order: deterministic.
template <class S>
void Gpt<S>::embed_backward(float* dwte, float* dwpe, const S* dres) {
  const int64_t B = B_, T = T_, C = dims_.C;
  const int32_t* inputs = inputs_.data<int32_t>();
  const bool llama = dims_.arch == Arch::kLlama;
  if (dims_.tp == 1 && !llama) {
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
  if (!llama) be_.positions_backward(dt_, dwpe, dres, rows_, row0_, T, C);
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
  const int64_t Vl = dims_.Vp / t;
  be_.upload(inputs_.raw(), inputs, N * int64_t(sizeof(int32_t)));
  if (targets) be_.upload(targets_.raw(), targets, N * int64_t(sizeof(int32_t)));

  // 1. Embeddings.
  ps.acquire(0);
  embed(ps.params(0));
  ps.release(0);

  // 2. Blocks.
  recomputed_holds_ = -1;
  for (int64_t l = 0; l < L; ++l) {
    const int u = int(l) + 1;
    ps.acquire(u);
    if (dims_.arch == Arch::kLlama) {
      llama_block_forward(l, ps.params(u));
    } else {
      gpt2_block_forward(l, ps.params(u));
    }
    ps.release(u);
    if (dims_.block_recompute(l) != Recompute::kNone) recomputed_holds_ = l;
  }

  // 3. Final norm (gathered under sequence parallelism), then the head: logits (N, Vp/tp) =
  //    lnf @ W^T with W this rank's rows of wte (tied) or of lm_head (unit L+1, after the norm).
  const int uf = int(L) + 1, hu = head_unit();
  ps.acquire(uf);
  const void* wf = ps.params(uf);
  layer_norm(lnf_, lnf_mean_, lnf_rstd_, residual_[size_t(L)].data<S>(), param<S>(wf, uf, 0),
             dims_.arch == Arch::kLlama ? nullptr : param<S>(wf, uf, 1));
  if (hu != uf) {
    ps.release(uf);
    ps.acquire(hu);
  }
  {
    k::GemmDesc d;
    d.shape = {N, Vl, C};
    d.ab_dtype = d.c_dtype = dt_;
    d.trans_b = true;
    be_.gemm(d, lnf_.data<S>(), param<S>(ps.params(hu), hu, head_param()), logits_.data<S>());
  }
  ps.release(hu);
  if (targets == nullptr) return;

  // 4. Loss: per-token cross-entropy over the real vocabulary, summed in a fixed order into
  //    loss_sum_ (on the device).
  if (t > 1) {
    vocab_parallel_loss();
  } else {
    be_.cross_entropy_forward(dt_, losses_.data<float>(), loss_lse_.data<float>(),
                              logits_.data<S>(), targets_.data<int32_t>(), {N, Vl}, dims_.V);
  }
  be_.accumulate_sum(static_cast<double*>(loss_sum_.raw()), losses_.data<float>(), N);
}

// GPT-2: LayerNorms run on this rank's rows and are gathered (sequence parallel) before the
// column-parallel layer; row-parallel c_proj outputs are partial sums under tp: all-reduced
// (reduce-scattered under sequence parallelism), then the replicated bias is added. With
// tp == 1 the bias rides in the GEMM.
template <class S>
void Gpt<S>::gpt2_block_forward(int64_t l, const void* w, bool recompute) {
  const int64_t N = B_ * T_, C = dims_.C, t = dims_.tp, R = rows_;
  const k::AttentionShape attn{B_, T_, dims_.H / t, C / dims_.H};
  const int u = int(l) + 1;
  BlockActivations& b = blocks_[size_t(l)];
  const S* x = residual_[size_t(l)].data<S>();
  layer_norm(b.ln1, b.ln1_mean, b.ln1_rstd, x, param<S>(w, u, kLn1W), param<S>(w, u, kLn1B));
  linear(b.qkv.data<S>(), b.ln1.data<S>(), param<S>(w, u, kAttnW), param<S>(w, u, kAttnB), N, C,
         3 * C / t);
  be_.attention_forward(dt_, b.atty.data<S>(), b.lse.data<float>(), b.qkv.data<S>(), attn);
  const S* attn_out = row_parallel(w, u, b.atty.data<S>(), C / t, kAttnProjW, kAttnProjB);
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
  if (recompute) return;
  const S* mlp_out = row_parallel(w, u, b.fch_gelu.data<S>(), 4 * C / t, kMlpProjW, kMlpProjB);
  be_.residual_add(dt_, residual_[size_t(l) + 1].data<S>(), b.res2.data<S>(), mlp_out, R * C);
}

// Llama: RMSNorm, q|k|v (one GEMM against the adjacent q/k/v_proj rows), RoPE on the q and k
// heads in place (the attention inputs are the rotated ones, saved for backward), grouped-query
// attention, o_proj; RMSNorm of res2, gate|up (one GEMM), SwiGLU, down_proj. Row-parallel
// outputs as GPT-2's, without biases.
template <class S>
void Gpt<S>::llama_block_forward(int64_t l, const void* w, bool recompute) {
  const int64_t N = B_ * T_, C = dims_.C, t = dims_.tp, R = rows_, D = dims_.D();
  const int64_t Hl = dims_.H / t, KVl = kv_local(dims_), qkv_cols = (Hl + 2 * KVl) * D;
  const int64_t Fl = dims_.F / t;
  const int u = int(l) + 1;
  BlockActivations& b = blocks_[size_t(l)];
  const S* x = residual_[size_t(l)].data<S>();
  layer_norm(b.ln1, b.ln1_mean, b.ln1_rstd, x, param<S>(w, u, kInNorm), nullptr);
  linear(b.qkv.data<S>(), b.ln1.data<S>(), param<S>(w, u, kQ), nullptr, N, C, qkv_cols, true);
  be_.rope_forward(dt_, b.qkv.data<S>(), rope_table_.data<float>(),
                   {N, T_, qkv_cols, Hl + KVl, D, 0});
  be_.attention_forward(dt_, b.atty.data<S>(), b.lse.data<float>(), b.qkv.data<S>(),
                        {B_, T_, Hl, D, KVl});
  const S* attn_out = row_parallel(w, u, b.atty.data<S>(), Hl * D, kO, -1);
  layer_norm(b.ln2, b.ln2_mean, b.ln2_rstd, x, param<S>(w, u, kPostNorm), nullptr, attn_out,
             b.res2.data<S>());
  linear(b.fch.data<S>(), b.ln2.data<S>(), param<S>(w, u, kGate), nullptr, N, C, 2 * Fl, true);
  be_.swiglu_forward(dt_, b.fch_gelu.data<S>(), b.fch.data<S>(), N, Fl);
  if (recompute) return;
  const S* mlp_out = row_parallel(w, u, b.fch_gelu.data<S>(), Fl, kDown, -1);
  be_.residual_add(dt_, residual_[size_t(l) + 1].data<S>(), b.res2.data<S>(), mlp_out, R * C);
}

// SELECTIVE: the norms from their inputs (the block's input and res2, both kept) and the MLP
// activation from the kept pre-activation, by the forward's kernels: ln2 by the plain norm,
// which is bitwise the fused residual norm of the forward applied to res2 (kernels/layernorm.h),
// fch_gelu by gelu_forward, bitwise gemm_bias_gelu's output (kernels/backend.h). FULL: the
// forward again, up to the MLP's output projection.
template <class S>
void Gpt<S>::recompute_block(int64_t l, const void* w) {
  const bool llama = dims_.arch == Arch::kLlama;
  switch (dims_.block_recompute(l)) {
    case Recompute::kNone:
      return;
    case Recompute::kFull:
      if (llama) {
        llama_block_forward(l, w, true);
      } else {
        gpt2_block_forward(l, w, true);
      }
      return;
    case Recompute::kSelective:
      break;
  }
  const int u = int(l) + 1;
  const int64_t N = B_ * T_, Fl = dims_.F / dims_.tp;
  BlockActivations& b = blocks_[size_t(l)];
  const S* x = residual_[size_t(l)].data<S>();
  if (llama) {
    layer_norm(b.ln1, b.ln1_mean, b.ln1_rstd, x, param<S>(w, u, kInNorm), nullptr);
    layer_norm(b.ln2, b.ln2_mean, b.ln2_rstd, b.res2.data<S>(), param<S>(w, u, kPostNorm), nullptr);
    be_.swiglu_forward(dt_, b.fch_gelu.data<S>(), b.fch.data<S>(), N, Fl);
  } else {
    layer_norm(b.ln1, b.ln1_mean, b.ln1_rstd, x, param<S>(w, u, kLn1W), param<S>(w, u, kLn1B));
    layer_norm(b.ln2, b.ln2_mean, b.ln2_rstd, b.res2.data<S>(), param<S>(w, u, kLn2W),
               param<S>(w, u, kLn2B));
    be_.gelu_forward(dt_, b.fch_gelu.data<S>(), b.fch.data<S>(), N * Fl);
  }
}

template <class S>
typename Gpt<S>::BackwardBuffers Gpt<S>::backward_buffers() {
  S* dres = dres_.data<S>();
  S* dln = dln_.data<S>();
  return {dres, sp_ ? dres_full_.data<S>() : dres, dln, sp_ ? dln_local_.data<S>() : dln};
}

template <class S>
void Gpt<S>::backward(ParamSource& ps, float grad_weight) {
  const int64_t N = B_ * T_, C = dims_.C, L = dims_.L, t = dims_.tp;
  const int64_t Vl = dims_.Vp / t, R = rows_;
  const int32_t* targets = targets_.data<int32_t>();
  // dres (R,C): this rank's rows; dln (N,C): partial under tp; dln_local (R,C).
  const auto [dres, dres_full, dln, dln_local] = backward_buffers();

  // 1. Loss and head: dlogits in place, then dlnf = dlogits @ W (partial sums under tp:
  //    all-reduced, or reduce-scattered to this rank's rows), dW += dlogits^T @ lnf, W = wte
  //    (tied) or lm_head.
  S* dlogits = logits_.data<S>();
  if (t > 1) {
    const int64_t valid = std::clamp<int64_t>(dims_.V - vocab_begin_, 0, Vl);
    be_.cross_entropy_backward_slice(dt_, dlogits, dlogits, loss_lse_.data<float>(), targets,
                                     vocab_begin_, grad_weight, {N, Vl}, valid);
  } else {
    be_.cross_entropy_backward(dt_, dlogits, dlogits, loss_lse_.data<float>(), targets, grad_weight,
                               {N, Vl}, dims_.V);
  }
  const int uf = int(L) + 1, hu = head_unit(), hp = head_param();
  ps.acquire(hu);
  {
    k::GemmDesc d;
    d.shape = {N, C, Vl};
    d.ab_dtype = d.c_dtype = dt_;
    be_.gemm(d, dlogits, param<S>(ps.params(hu), hu, hp), dln);
    float* dw = ps.grads(hu) + layout_[size_t(hu)].params[size_t(hp)].offset;
    linear_dweight(dw, dlogits, lnf_.data<S>(), N, Vl, C);  // (Vp/tp,C) += dlogits^T @ lnf
  }
  if (hu != uf) ps.release(hu);
  scatter_rows(dln, dln_local);
  if (hu != uf) ps.acquire(uf);

  // 2. Final norm: dres = dNorm_f(dlnf), on this rank's rows.
  {
    be_.zero(dres, R * C * int64_t(sizeof(S)));
    float* g = ps.grads(uf);
    norm_backward(dres, g + layout_[size_t(uf)].params[0].offset,
                  dims_.arch == Arch::kLlama ? nullptr : g + layout_[size_t(uf)].params[1].offset,
                  dln_local, residual_[size_t(L)].data<S>(), param<S>(ps.params(uf), uf, 0),
                  lnf_mean_, lnf_rstd_);
  }
  ps.release(uf);
  ps.grads_done(uf);

  // 3. Blocks in reverse; dres carries dLoss/d(residual stream) between them (this rank's rows;
  //    all of them, replicated over the tp group, without sequence parallelism).
  for (int64_t l = L - 1; l >= 0; --l) {
    const int u = int(l) + 1;
    ps.acquire(u);  // once for the recomputation and the backward (ZeRO-3: one gather)
    const void* w = ps.params(u);
    // The last recomputing block's values are still in the shared buffers from the forward
    // (nothing between writes them): no refill. Every other such block refills them first.
    if (l != recomputed_holds_) recompute_block(l, w);
    recomputed_holds_ = -1;
    if (dims_.arch == Arch::kLlama) {
      llama_block_backward(l, w, ps.grads(u));
    } else {
      gpt2_block_backward(l, w, ps.grads(u));
    }
    ps.release(u);
    ps.grads_done(u);
  }

  // 4. Embeddings (with a tied head their wte gradient already holds the head's share).
  float* g0 = ps.grads(0);
  embed_backward(g0 + layout_[0].params[0].offset,
                 dims_.arch == Arch::kLlama ? nullptr : g0 + layout_[0].params[1].offset, dres);
  ps.grads_done(0);
}

template <class S>
void Gpt<S>::gpt2_block_backward(int64_t l, const void* w, float* g) {
  const int64_t N = B_ * T_, C = dims_.C, t = dims_.tp, R = rows_;
  const k::AttentionShape attn{B_, T_, dims_.H / t, C / dims_.H};
  const int u = int(l) + 1;
  BlockActivations& b = blocks_[size_t(l)];
  auto grad = [&](int index) { return param_grad(g, u, index); };
  const auto [dres, dres_full, dln, dln_local] = backward_buffers();

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
  norm_backward(dres, grad(kLn2W), grad(kLn2B), dln_local, b.res2.data<S>(), param<S>(w, u, kLn2W),
                b.ln2_mean, b.ln2_rstd);

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
  norm_backward(dres, grad(kLn1W), grad(kLn1B), dln_local, residual_[size_t(l)].data<S>(),
                param<S>(w, u, kLn1W), b.ln1_mean, b.ln1_rstd);
}

template <class S>
void Gpt<S>::llama_block_backward(int64_t l, const void* w, float* g) {
  const int64_t N = B_ * T_, C = dims_.C, t = dims_.tp, D = dims_.D();
  const int64_t Hl = dims_.H / t, KVl = kv_local(dims_), qkv_cols = (Hl + 2 * KVl) * D;
  const int64_t Fl = dims_.F / t;
  const int u = int(l) + 1;
  BlockActivations& b = blocks_[size_t(l)];
  auto grad = [&](int index) { return param_grad(g, u, index); };
  const auto [dres, dres_full, dln, dln_local] = backward_buffers();

  // MLP: out = res2 + down(silu(gate(ln2)) * up(ln2)), ln2 = RMSNorm(res2).
  gather_rows(dres, dres_full);
  linear_dweight(grad(kDown), b.fch_gelu.data<S>(), dres_full, N, Fl, C, true);
  S* dact = dact_.data<S>();
  linear_dinput(dact, dres_full, param<S>(w, u, kDown), N, Fl, C, true);
  S* dgu = dfch_.data<S>();
  be_.swiglu_backward(dt_, dgu, b.fch.data<S>(), dact, N, Fl);
  linear_dweight(grad(kGate), b.ln2.data<S>(), dgu, N, C, 2 * Fl, true);  // gate|up rows
  linear_dinput(dln, dgu, param<S>(w, u, kGate), N, C, 2 * Fl, true);
  scatter_rows(dln, dln_local);
  norm_backward(dres, grad(kPostNorm), nullptr, dln_local, b.res2.data<S>(),
                param<S>(w, u, kPostNorm), b.ln2_mean, b.ln2_rstd);

  // Attention: res2 = x + o_proj(attn(rope(qkv(ln1(x))))).
  gather_rows(dres, dres_full);
  linear_dweight(grad(kO), b.atty.data<S>(), dres_full, N, Hl * D, C, true);
  S* datty = datty_.data<S>();
  linear_dinput(datty, dres_full, param<S>(w, u, kO), N, Hl * D, C, true);
  S* dqkv = dqkv_.data<S>();
  be_.attention_backward(dt_, dqkv, datty, b.qkv.data<S>(), b.atty.data<S>(), b.lse.data<float>(),
                         {B_, T_, Hl, D, KVl});
  be_.rope_backward(dt_, dqkv, rope_table_.data<float>(), {N, T_, qkv_cols, Hl + KVl, D, 0});
  linear_dweight(grad(kQ), b.ln1.data<S>(), dqkv, N, C, qkv_cols, true);  // q|k|v rows
  linear_dinput(dln, dqkv, param<S>(w, u, kQ), N, C, qkv_cols, true);
  scatter_rows(dln, dln_local);
  norm_backward(dres, grad(kInNorm), nullptr, dln_local, residual_[size_t(l)].data<S>(),
                param<S>(w, u, kInNorm), b.ln1_mean, b.ln1_rstd);
}

template <class S>
void Gpt<S>::decode(ParamSource& ps, const int32_t* tokens, int64_t n, int64_t pos) {
  ST_CHECK(dims_.tp == 1 && B_ == 1 && n >= 1 && pos >= 0 && pos + n <= T_,
           "decode: tp 1, batch 1 and positions within the context");
  const int64_t C = dims_.C, L = dims_.L, kv_cols = dims_.KV * dims_.D();
  const bool llama = dims_.arch == Arch::kLlama;
  if (k_cache_.empty()) {
    for (int64_t l = 0; l < L; ++l) {
      k_cache_.push_back(Tensor::empty({T_, kv_cols}, dt_, alloc_, MemCategory::kActivations,
                                       str_cat("h.", l, ".k_cache")));
      v_cache_.push_back(Tensor::empty({T_, kv_cols}, dt_, alloc_, MemCategory::kActivations,
                                       str_cat("h.", l, ".v_cache")));
    }
  }
  be_.upload(inputs_.raw(), tokens, n * int64_t(sizeof(int32_t)));
  // 1. Embeddings of the n tokens (GPT-2: plus the positions pos ..).
  ps.acquire(0);
  const void* emb = ps.params(0);
  S* x = residual_[0].data<S>();
  be_.embedding_lookup_slice(dt_, x, inputs_.data<int32_t>(), param<S>(emb, 0, 0), 0, dims_.Vp, n,
                             C);
  if (!llama) be_.add_positions(dt_, x, param<S>(emb, 0, 1), n, pos, dims_.Tmax, C);
  ps.release(0);
  // 2. Blocks, each on the n rows, its keys and values appended to the cache.
  for (int64_t l = 0; l < L; ++l) {
    const int u = int(l) + 1;
    ps.acquire(u);
    block_decode(l, ps.params(u), n, pos);
    ps.release(u);
  }
  // 3. Final norm and head on the n rows.
  const int uf = int(L) + 1, hu = head_unit();
  ps.acquire(uf);
  const void* wf = ps.params(uf);
  const k::RowsShape rs{n, C};
  if (llama) {
    be_.rmsnorm_forward(dt_, lnf_.data<S>(), lnf_rstd_.data<float>(),
                        residual_[size_t(L)].data<S>(), param<S>(wf, uf, 0), rs,
                        float(dims_.norm_eps));
  } else {
    be_.layernorm_forward(dt_, lnf_.data<S>(), lnf_mean_.data<float>(), lnf_rstd_.data<float>(),
                          residual_[size_t(L)].data<S>(), param<S>(wf, uf, 0), param<S>(wf, uf, 1),
                          rs, float(kGptLayerNormEps));
  }
  if (hu != uf) {
    ps.release(uf);
    ps.acquire(hu);
  }
  linear(logits_.data<S>(), lnf_.data<S>(), param<S>(ps.params(hu), hu, head_param()), nullptr, n,
         C, dims_.Vp, true);
  ps.release(hu);
}

// One block on n rows at positions pos ..: the forward's kernels with n rows in place of B*T,
// the attention against the cache (kernels/attention.h attention_decode).
template <class S>
void Gpt<S>::block_decode(int64_t l, const void* w, int64_t n, int64_t pos) {
  const int64_t C = dims_.C, D = dims_.D(), H = dims_.H, KV = dims_.KV, F = dims_.F;
  const int64_t qkv_cols = (H + 2 * KV) * D;
  const bool llama = dims_.arch == Arch::kLlama;
  const int u = int(l) + 1;
  BlockActivations& b = blocks_[size_t(l)];
  const S* x = residual_[size_t(l)].data<S>();
  const k::RowsShape rs{n, C};
  auto p = [&](int i) { return param<S>(w, u, i); };
  auto pick = [llama](int llama_index, int gpt2_index) { return llama ? llama_index : gpt2_index; };
  if (llama) {
    be_.rmsnorm_forward(dt_, b.ln1.data<S>(), b.ln1_rstd.data<float>(), x, p(kInNorm), rs,
                        float(dims_.norm_eps));
  } else {
    be_.layernorm_forward(dt_, b.ln1.data<S>(), b.ln1_mean.data<float>(), b.ln1_rstd.data<float>(),
                          x, p(kLn1W), p(kLn1B), rs, float(kGptLayerNormEps));
  }
  S* qkv = b.qkv.data<S>();
  linear(qkv, b.ln1.data<S>(), p(pick(kQ, kAttnW)), llama ? nullptr : p(kAttnB), n, C, qkv_cols,
         llama);
  if (llama) {
    be_.rope_forward(dt_, qkv, rope_table_.data<float>(), {n, n, qkv_cols, H + KV, D, pos});
  }
  S* kc = k_cache_[size_t(l)].data<S>();
  S* vc = v_cache_[size_t(l)].data<S>();
  const int64_t row = KV * D * int64_t(sizeof(S));
  for (int64_t r = 0; r < n; ++r) {
    be_.copy(kc + (pos + r) * KV * D, qkv + r * qkv_cols + H * D, row);
    be_.copy(vc + (pos + r) * KV * D, qkv + r * qkv_cols + (H + KV) * D, row);
  }
  be_.attention_decode(dt_, b.atty.data<S>(), qkv, qkv_cols, kc, vc, KV * D, {1, n, H, D, KV}, pos,
                       n);
  S* proj = dscratch_.data<S>();
  linear(proj, b.atty.data<S>(), p(pick(kO, kAttnProjW)), llama ? nullptr : p(kAttnProjB), n, H * D,
         C, llama);
  if (llama) {
    be_.residual_rmsnorm_forward(dt_, b.res2.data<S>(), b.ln2.data<S>(), b.ln2_rstd.data<float>(),
                                 x, proj, p(kPostNorm), rs, float(dims_.norm_eps));
    linear(b.fch.data<S>(), b.ln2.data<S>(), p(kGate), nullptr, n, C, 2 * F, true);
    be_.swiglu_forward(dt_, b.fch_gelu.data<S>(), b.fch.data<S>(), n, F);
  } else {
    be_.residual_layernorm_forward(dt_, b.res2.data<S>(), b.ln2.data<S>(), b.ln2_mean.data<float>(),
                                   b.ln2_rstd.data<float>(), x, proj, p(kLn2W), p(kLn2B), rs,
                                   float(kGptLayerNormEps));
    k::GemmDesc d;
    d.shape = {n, F, C};
    d.ab_dtype = d.c_dtype = dt_;
    be_.gemm_bias_gelu(d, b.ln2.data<S>(), p(kFcW), b.fch_gelu.data<S>(), b.fch.data<S>(), p(kFcB));
  }
  linear(proj, b.fch_gelu.data<S>(), p(pick(kDown, kMlpProjW)), llama ? nullptr : p(kMlpProjB), n,
         F, C, llama);
  be_.residual_add(dt_, residual_[size_t(l) + 1].data<S>(), b.res2.data<S>(), proj, n * C);
}

template class Gpt<float>;
template class Gpt<BFloat16>;
template class Gpt<Half>;

}  // namespace shardtrain::models
