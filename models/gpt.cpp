#include "models/gpt.h"

#include <cmath>
#include <cstring>

#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/layernorm.h"
#include "runtime/error.h"

namespace shardtrain::models {
namespace {

namespace k = shardtrain::kernels;

constexpr float kLayerNormEps = 1e-5f;  // GPT-2 (REFERENCE.md)
constexpr double kInitStd = 0.02;       // GPT-2 / nanoGPT

// Parameter indices inside a block unit, in Hugging Face order.
enum BlockParam {
  kLn1W, kLn1B, kAttnW, kAttnB, kAttnProjW, kAttnProjB,
  kLn2W, kLn2B, kFcW, kFcB, kMlpProjW, kMlpProjB, kNumBlockParams
};

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// Row-major GEMM helpers with the model's three patterns. T is the compute dtype.
template <class S>
void linear(S* out, const S* in, const S* w, const S* bias, int64_t N, int64_t K, int64_t M) {
  // out (N,M) = in (N,K) @ w (K,M) + bias (M)
  k::GemmDesc d;
  d.shape = {N, M, K};
  d.ab_dtype = d.c_dtype = dtype_of<S>();
  k::gemm(d, in, w, out, bias);
}

template <class S>
void linear_dinput(S* din, const S* dout, const S* w, int64_t N, int64_t K, int64_t M) {
  // din (N,K) = dout (N,M) @ w^T, w stored (K,M)
  k::GemmDesc d;
  d.shape = {N, K, M};
  d.ab_dtype = d.c_dtype = dtype_of<S>();
  d.trans_b = true;
  k::gemm(d, dout, w, din);
}

template <class S>
void linear_dweight(float* dw, const S* in, const S* dout, int64_t N, int64_t K, int64_t M) {
  // dw (K,M) += in^T @ dout, in stored (N,K), dout (N,M); fp32 accumulation
  k::GemmDesc d;
  d.shape = {K, M, N};
  d.ab_dtype = dtype_of<S>();
  d.c_dtype = DType::kF32;
  d.trans_a = true;
  d.beta = 1.0f;
  k::gemm(d, in, dout, dw);
}

}  // namespace

GptDims GptDims::from_config(const proto::ModelConfig& m) {
  GptDims d;
  d.L = m.n_layer();
  d.H = m.n_head();
  d.C = m.d_model();
  d.V = m.vocab_size();
  d.Vp = (d.V + 63) / 64 * 64;
  d.Tmax = m.seq_len();
  return d;
}

std::vector<UnitLayout> gpt_layout(const GptDims& g) {
  std::vector<UnitLayout> units;
  auto add = [](UnitLayout& u, std::string name, Shape shape, Shape hf_shape, bool decay,
                ParamInit init) {
    ParamInfo p{std::move(name), shape, hf_shape, u.numel, decay, init};
    u.numel += p.numel();
    u.params.push_back(std::move(p));
  };
  const int64_t C = g.C;
  UnitLayout emb{"embeddings", {}, 0};
  add(emb, "wte.weight", {g.Vp, C}, {g.V, C}, true, ParamInit::kNormal);
  add(emb, "wpe.weight", {g.Tmax, C}, {g.Tmax, C}, true, ParamInit::kNormal);
  units.push_back(std::move(emb));
  for (int64_t l = 0; l < g.L; ++l) {
    UnitLayout u{str_cat("h.", l), {}, 0};
    const std::string p = str_cat("h.", l, ".");
    add(u, p + "ln_1.weight", {C}, {C}, false, ParamInit::kOne);
    add(u, p + "ln_1.bias", {C}, {C}, false, ParamInit::kZero);
    add(u, p + "attn.c_attn.weight", {C, 3 * C}, {C, 3 * C}, true, ParamInit::kNormal);
    add(u, p + "attn.c_attn.bias", {3 * C}, {3 * C}, false, ParamInit::kZero);
    add(u, p + "attn.c_proj.weight", {C, C}, {C, C}, true, ParamInit::kResidualNormal);
    add(u, p + "attn.c_proj.bias", {C}, {C}, false, ParamInit::kZero);
    add(u, p + "ln_2.weight", {C}, {C}, false, ParamInit::kOne);
    add(u, p + "ln_2.bias", {C}, {C}, false, ParamInit::kZero);
    add(u, p + "mlp.c_fc.weight", {C, 4 * C}, {C, 4 * C}, true, ParamInit::kNormal);
    add(u, p + "mlp.c_fc.bias", {4 * C}, {4 * C}, false, ParamInit::kZero);
    add(u, p + "mlp.c_proj.weight", {4 * C, C}, {4 * C, C}, true, ParamInit::kResidualNormal);
    add(u, p + "mlp.c_proj.bias", {C}, {C}, false, ParamInit::kZero);
    units.push_back(std::move(u));
  }
  UnitLayout lnf{"ln_f", {}, 0};
  add(lnf, "ln_f.weight", {C}, {C}, false, ParamInit::kOne);
  add(lnf, "ln_f.bias", {C}, {C}, false, ParamInit::kZero);
  units.push_back(std::move(lnf));
  return units;
}

void init_param(const ParamInfo& p, const GptDims& dims, uint64_t seed, int64_t begin,
                int64_t end, float* out) {
  const uint64_t key = splitmix64(seed ^ fnv1a(p.name));
  const double stddev = p.init == ParamInit::kResidualNormal
                            ? kInitStd / std::sqrt(2.0 * double(dims.L))
                            : kInitStd;
  const int64_t valid = shape_numel(p.hf_shape);  // wte's padding rows stay zero
  for (int64_t i = begin; i < end; ++i) {
    float v = 0.0f;
    switch (p.init) {
      case ParamInit::kZero: v = 0.0f; break;
      case ParamInit::kOne: v = 1.0f; break;
      case ParamInit::kNormal:
      case ParamInit::kResidualNormal: {
        if (i >= valid) break;
        // Box-Muller from two counter-based uniforms: u1 in (0, 1], u2 in [0, 1).
        double u1 = (double(splitmix64(key + 2 * uint64_t(i)) >> 11) + 1.0) * 0x1.0p-53;
        double u2 = double(splitmix64(key + 2 * uint64_t(i) + 1) >> 11) * 0x1.0p-53;
        v = float(stddev * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
        break;
      }
    }
    out[i - begin] = v;
  }
}

template <class S>
template <class P>
const P* Gpt<S>::param(const void* unit_base, int unit, int index) const {
  return static_cast<const P*>(unit_base) + layout_[size_t(unit)].params[size_t(index)].offset;
}

template <class S>
Gpt<S>::Gpt(const GptDims& dims, int64_t B, int64_t T, TrackingAllocator& alloc)
    : dims_(dims), B_(B), T_(T), layout_(gpt_layout(dims)) {
  ST_CHECK(T <= dims.Tmax, "sequence length ", T, " exceeds the model's ", dims.Tmax);
  const DType dt = dtype_of<S>();
  const int64_t N = B * T, C = dims.C;
  auto act = [&](Shape s, DType t, const std::string& tag) {
    return Tensor::empty(s, t, alloc, MemCategory::kActivations, tag);
  };
  auto work = [&](Shape s, const std::string& tag) {
    return Tensor::empty(s, dt, alloc, MemCategory::kWorkspace, tag);
  };
  inputs_ = Tensor::empty({B, T}, DType::kI32, alloc, MemCategory::kActivations, "inputs");
  for (int64_t l = 0; l <= dims.L; ++l) residual_.push_back(act({N, C}, dt, str_cat("residual.", l)));
  for (int64_t l = 0; l < dims.L; ++l) {
    const std::string p = str_cat("h.", l, ".");
    BlockActivations b;
    b.ln1 = act({N, C}, dt, p + "ln1");
    b.ln1_mean = act({N}, DType::kF32, p + "ln1_mean");
    b.ln1_rstd = act({N}, DType::kF32, p + "ln1_rstd");
    b.qkv = act({N, 3 * C}, dt, p + "qkv");
    b.atty = act({N, C}, dt, p + "atty");
    b.lse = act({B, dims.H, T}, DType::kF32, p + "attn_lse");
    b.res2 = act({N, C}, dt, p + "res2");
    b.ln2 = act({N, C}, dt, p + "ln2");
    b.ln2_mean = act({N}, DType::kF32, p + "ln2_mean");
    b.ln2_rstd = act({N}, DType::kF32, p + "ln2_rstd");
    b.fch = act({N, 4 * C}, dt, p + "fch");
    b.fch_gelu = act({N, 4 * C}, dt, p + "fch_gelu");
    blocks_.push_back(std::move(b));
  }
  lnf_ = act({N, C}, dt, "lnf");
  lnf_mean_ = act({N}, DType::kF32, "lnf_mean");
  lnf_rstd_ = act({N}, DType::kF32, "lnf_rstd");
  logits_ = act({N, dims.Vp}, dt, "logits");
  losses_ = act({N}, DType::kF32, "losses");
  loss_lse_ = act({N}, DType::kF32, "loss_lse");
  dres_ = work({N, C}, "d_residual");
  dln_ = work({N, C}, "d_ln");
  datty_ = work({N, C}, "d_atty");
  dqkv_ = work({N, 3 * C}, "d_qkv");
  dfch_ = work({N, 4 * C}, "d_fch");
  dscratch_ = work({N, C}, "d_proj_out");
  targets_ = Tensor::empty({B, T}, DType::kI32, alloc, MemCategory::kActivations, "targets");
}

template <class S>
double Gpt<S>::forward(ParamSource& ps, const int32_t* inputs, const int32_t* targets) {
  const int64_t B = B_, T = T_, C = dims_.C, N = B * T, H = dims_.H, L = dims_.L;
  const k::RowsShape rows{N, C};
  std::memcpy(inputs_.raw(), inputs, size_t(N) * sizeof(int32_t));
  if (targets) std::memcpy(targets_.raw(), targets, size_t(N) * sizeof(int32_t));

  // 1. Embeddings.
  ps.acquire(0);
  const void* emb = ps.params(0);
  k::embedding_forward<S>(residual_[0].data<S>(), inputs, param<S>(emb, 0, 0),
                          param<S>(emb, 0, 1), {B, T, C});
  ps.release(0);

  // 2. Blocks.
  for (int64_t l = 0; l < L; ++l) {
    const int u = int(l) + 1;
    BlockActivations& b = blocks_[size_t(l)];
    ps.acquire(u);
    const void* w = ps.params(u);
    const S* x = residual_[size_t(l)].data<S>();
    k::layernorm_forward<S>(b.ln1.data<S>(), b.ln1_mean.data<float>(), b.ln1_rstd.data<float>(),
                            x, param<S>(w, u, kLn1W), param<S>(w, u, kLn1B), rows, kLayerNormEps);
    linear<S>(b.qkv.data<S>(), b.ln1.data<S>(), param<S>(w, u, kAttnW), param<S>(w, u, kAttnB),
              N, C, 3 * C);
    k::attention_forward<S>(b.atty.data<S>(), b.lse.data<float>(), b.qkv.data<S>(),
                            {B, T, H, C / H});
    S* proj = dscratch_.data<S>();
    linear<S>(proj, b.atty.data<S>(), param<S>(w, u, kAttnProjW), param<S>(w, u, kAttnProjB), N,
              C, C);
    k::residual_add<S>(b.res2.data<S>(), x, proj, N * C);
    k::layernorm_forward<S>(b.ln2.data<S>(), b.ln2_mean.data<float>(), b.ln2_rstd.data<float>(),
                            b.res2.data<S>(), param<S>(w, u, kLn2W), param<S>(w, u, kLn2B), rows,
                            kLayerNormEps);
    linear<S>(b.fch.data<S>(), b.ln2.data<S>(), param<S>(w, u, kFcW), param<S>(w, u, kFcB), N, C,
              4 * C);
    k::gelu_forward<S>(b.fch_gelu.data<S>(), b.fch.data<S>(), N * 4 * C);
    linear<S>(proj, b.fch_gelu.data<S>(), param<S>(w, u, kMlpProjW), param<S>(w, u, kMlpProjB), N,
              4 * C, C);
    k::residual_add<S>(residual_[size_t(l) + 1].data<S>(), b.res2.data<S>(), proj, N * C);
    ps.release(u);
  }

  // 3. Final LayerNorm, then the head tied to wte: logits (N,Vp) = lnf @ wte^T.
  const int uf = int(L) + 1;
  ps.acquire(uf);
  const void* wf = ps.params(uf);
  k::layernorm_forward<S>(lnf_.data<S>(), lnf_mean_.data<float>(), lnf_rstd_.data<float>(),
                          residual_[size_t(L)].data<S>(), param<S>(wf, uf, 0),
                          param<S>(wf, uf, 1), rows, kLayerNormEps);
  ps.release(uf);
  ps.acquire(0);
  {
    k::GemmDesc d;
    d.shape = {N, dims_.Vp, C};
    d.ab_dtype = d.c_dtype = dtype_of<S>();
    d.trans_b = true;
    k::gemm(d, lnf_.data<S>(), param<S>(ps.params(0), 0, 0), logits_.data<S>());
  }
  ps.release(0);
  if (targets == nullptr) return 0.0;

  // 4. Loss: per-token cross-entropy over the real vocabulary, summed in a fixed order.
  k::cross_entropy_forward<S>(losses_.data<float>(), loss_lse_.data<float>(), logits_.data<S>(),
                              targets, {N, dims_.Vp}, dims_.V);
  double sum = 0.0;
  const float* losses = losses_.data<float>();
  for (int64_t i = 0; i < N; ++i) sum += losses[i];
  return sum;
}

template <class S>
void Gpt<S>::backward(ParamSource& ps, float grad_weight) {
  const int64_t B = B_, T = T_, C = dims_.C, N = B * T, H = dims_.H, L = dims_.L, Vp = dims_.Vp;
  const k::RowsShape rows{N, C};
  const int32_t* targets = targets_.data<int32_t>();
  const int32_t* inputs = inputs_.data<int32_t>();
  S* dres = dres_.data<S>();
  S* dln = dln_.data<S>();

  // 1. Loss and head: dlogits in place, then dlnf = dlogits @ wte, dwte += dlogits^T @ lnf.
  S* dlogits = logits_.data<S>();
  k::cross_entropy_backward<S>(dlogits, dlogits, loss_lse_.data<float>(), targets, grad_weight,
                               {N, Vp}, dims_.V);
  ps.acquire(0);
  {
    k::GemmDesc d;
    d.shape = {N, C, Vp};
    d.ab_dtype = d.c_dtype = dtype_of<S>();
    k::gemm(d, dlogits, param<S>(ps.params(0), 0, 0), dln);
    float* dwte = ps.grads(0) + layout_[0].params[0].offset;  // (Vp,C) += dlogits^T @ lnf
    linear_dweight<S>(dwte, dlogits, lnf_.data<S>(), N, Vp, C);
  }
  ps.release(0);

  // 2. Final LayerNorm: dres = dLN_f(dlnf).
  const int uf = int(L) + 1;
  ps.acquire(uf);
  {
    std::memset(dres, 0, size_t(N * C) * sizeof(S));
    float* g = ps.grads(uf);
    k::layernorm_backward<S>(dres, g + layout_[size_t(uf)].params[0].offset,
                             g + layout_[size_t(uf)].params[1].offset, dln,
                             residual_[size_t(L)].data<S>(), param<S>(ps.params(uf), uf, 0),
                             lnf_mean_.data<float>(), lnf_rstd_.data<float>(), rows);
  }
  ps.release(uf);
  ps.grads_done(uf);

  // 3. Blocks in reverse; dres carries dLoss/d(residual stream) between them.
  for (int64_t l = L - 1; l >= 0; --l) {
    const int u = int(l) + 1;
    BlockActivations& b = blocks_[size_t(l)];
    ps.acquire(u);
    const void* w = ps.params(u);
    float* g = ps.grads(u);
    auto grad = [&](int index) { return g + layout_[size_t(u)].params[size_t(index)].offset; };

    // MLP: out = res2 + c_proj(gelu(c_fc(ln2(res2)))).
    linear_dweight<S>(grad(kMlpProjW), b.fch_gelu.data<S>(), dres, N, 4 * C, C);
    k::bias_backward<S>(grad(kMlpProjB), dres, N, C);
    S* dfch = dfch_.data<S>();
    linear_dinput<S>(dfch, dres, param<S>(w, u, kMlpProjW), N, 4 * C, C);
    k::gelu_backward<S>(dfch, b.fch.data<S>(), dfch, N * 4 * C);
    linear_dweight<S>(grad(kFcW), b.ln2.data<S>(), dfch, N, C, 4 * C);
    k::bias_backward<S>(grad(kFcB), dfch, N, 4 * C);
    linear_dinput<S>(dln, dfch, param<S>(w, u, kFcW), N, C, 4 * C);
    k::layernorm_backward<S>(dres, grad(kLn2W), grad(kLn2B), dln, b.res2.data<S>(),
                             param<S>(w, u, kLn2W), b.ln2_mean.data<float>(),
                             b.ln2_rstd.data<float>(), rows);

    // Attention: res2 = x + c_proj(attn(c_attn(ln1(x)))).
    linear_dweight<S>(grad(kAttnProjW), b.atty.data<S>(), dres, N, C, C);
    k::bias_backward<S>(grad(kAttnProjB), dres, N, C);
    S* datty = datty_.data<S>();
    linear_dinput<S>(datty, dres, param<S>(w, u, kAttnProjW), N, C, C);
    S* dqkv = dqkv_.data<S>();
    k::attention_backward<S>(dqkv, datty, b.qkv.data<S>(), b.atty.data<S>(), b.lse.data<float>(),
                             {B, T, H, C / H});
    linear_dweight<S>(grad(kAttnW), b.ln1.data<S>(), dqkv, N, C, 3 * C);
    k::bias_backward<S>(grad(kAttnB), dqkv, N, 3 * C);
    linear_dinput<S>(dln, dqkv, param<S>(w, u, kAttnW), N, C, 3 * C);
    k::layernorm_backward<S>(dres, grad(kLn1W), grad(kLn1B), dln, residual_[size_t(l)].data<S>(),
                             param<S>(w, u, kLn1W), b.ln1_mean.data<float>(),
                             b.ln1_rstd.data<float>(), rows);
    ps.release(u);
    ps.grads_done(u);
  }

  // 4. Embeddings (their wte gradient already holds the head's share).
  float* g0 = ps.grads(0);
  k::embedding_backward<S>(g0 + layout_[0].params[0].offset, g0 + layout_[0].params[1].offset,
                           dres, inputs, {B, T, C});
  ps.grads_done(0);
}

template class Gpt<float>;
template class Gpt<BFloat16>;
template class Gpt<Half>;

}  // namespace shardtrain::models
