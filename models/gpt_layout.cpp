// gpt_layout.cpp — the parameter layout of GPT-2 and Llama (units, Hugging Face names and
// shapes, tensor-parallel slices) and its seeded initialisation.
//
// Kept apart from the compute (gpt.cpp) because the layout is also what ZeRO shards, what
// checkpoints and exports name, and what memplan counts, without running anything.
#include <cmath>
#include <string>

#include "models/gpt.h"
#include "runtime/error.h"

namespace shardtrain::models {
namespace {

constexpr double kInitStd = 0.02;  // GPT-2 / nanoGPT

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

}  // namespace

Recompute recompute_of(proto::Recompute r) {
  return r == proto::FULL        ? Recompute::kFull
         : r == proto::SELECTIVE ? Recompute::kSelective
                                 : Recompute::kNone;
}

GptDims GptDims::from_config(const proto::ModelConfig& m, int tp, bool sp) {
  GptDims d;
  d.sequence_parallel = sp && tp > 1;
  d.L = m.n_layer();
  d.H = m.n_head();
  d.C = m.d_model();
  d.V = m.vocab_size();
  d.tp = tp;
  d.Vp = (d.V + 64 * tp - 1) / (64 * tp) * (64 * tp);
  d.Tmax = m.seq_len();
  d.KV = d.H;
  d.F = 4 * d.C;
  if (m.arch() == proto::LLAMA) {
    d.arch = Arch::kLlama;
    d.KV = m.has_n_kv_head() ? m.n_kv_head() : d.H;
    // Llama's rule: 2/3 of 4C, rounded up to a multiple of 256.
    d.F = m.has_ffn_hidden() ? m.ffn_hidden() : (8 * d.C / 3 + 255) / 256 * 256;
    d.tied = m.tie_embeddings();
    d.rope_theta = m.rope_theta();
    d.norm_eps = m.norm_eps();
    if (m.has_rope_scaling()) {
      d.rope_factor = m.rope_scaling().factor();
      d.rope_low = m.rope_scaling().low_freq_factor();
      d.rope_high = m.rope_scaling().high_freq_factor();
      d.rope_original = m.rope_scaling().original_max_position();
    }
  }
  return d;
}

namespace {

// Llama in Hugging Face LlamaForCausalLM's names and nn.Linear (out, in) shapes: a
// column-parallel projection splits its rows, a row-parallel one its columns. K/V heads split
// with the query heads when tp divides KV, and are replicated (kRowGroups) when KV divides tp.
std::vector<UnitLayout> llama_layout(const GptDims& g) {
  std::vector<UnitLayout> units;
  auto add = [](UnitLayout& u, std::string name, Shape shape, Shape hf_shape, bool decay,
                ParamInit init, TpSplit split = TpSplit::kReplicated, int parts = 1) {
    ParamInfo p{std::move(name), shape, hf_shape, u.numel, decay, init, split, parts};
    u.numel += p.numel();
    u.params.push_back(std::move(p));
  };
  const int64_t C = g.C, t = g.tp, D = g.D(), q = g.H * D, kv = g.KV * D, F = g.F;
  const auto kN = ParamInit::kNormal, k1 = ParamInit::kOne;
  const bool kv_split = g.KV % t == 0;
  const TpSplit kv_mode = kv_split ? TpSplit::kRows : TpSplit::kRowGroups;
  const Shape kv_local = kv_split ? Shape{kv / t, C} : Shape{D, C};
  UnitLayout emb{"embeddings", {}, 0};
  add(emb, "model.embed_tokens.weight", {g.Vp / t, C}, {g.V, C}, true, kN, TpSplit::kRows);
  units.push_back(std::move(emb));
  for (int64_t l = 0; l < g.L; ++l) {
    UnitLayout u{str_cat("model.layers.", l), {}, 0};
    const std::string p = str_cat("model.layers.", l, ".");
    add(u, p + "input_layernorm.weight", {C}, {C}, false, k1);
    add(u, p + "self_attn.q_proj.weight", {q / t, C}, {q, C}, true, kN, TpSplit::kRows);
    add(u, p + "self_attn.k_proj.weight", kv_local, {kv, C}, true, kN, kv_mode, int(g.KV));
    add(u, p + "self_attn.v_proj.weight", kv_local, {kv, C}, true, kN, kv_mode, int(g.KV));
    add(u, p + "self_attn.o_proj.weight", {C, q / t}, {C, q}, true, kN, TpSplit::kColumns);
    add(u, p + "post_attention_layernorm.weight", {C}, {C}, false, k1);
    add(u, p + "mlp.gate_proj.weight", {F / t, C}, {F, C}, true, kN, TpSplit::kRows);
    add(u, p + "mlp.up_proj.weight", {F / t, C}, {F, C}, true, kN, TpSplit::kRows);
    add(u, p + "mlp.down_proj.weight", {C, F / t}, {C, F}, true, kN, TpSplit::kColumns);
    units.push_back(std::move(u));
  }
  UnitLayout fin{"model.norm", {}, 0};
  add(fin, "model.norm.weight", {C}, {C}, false, k1);
  if (!g.tied) add(fin, "lm_head.weight", {g.Vp / t, C}, {g.V, C}, true, kN, TpSplit::kRows);
  units.push_back(std::move(fin));
  return units;
}

}  // namespace

std::vector<UnitLayout> gpt_layout(const GptDims& g) {
  if (g.arch == Arch::kLlama) return llama_layout(g);
  std::vector<UnitLayout> units;
  auto add = [](UnitLayout& u, std::string name, Shape shape, Shape hf_shape, bool decay,
                ParamInit init, TpSplit split = TpSplit::kReplicated, int parts = 1) {
    ParamInfo p{std::move(name), shape, hf_shape, u.numel, decay, init, split, parts};
    u.numel += p.numel();
    u.params.push_back(std::move(p));
  };
  const int64_t C = g.C, t = g.tp;
  const auto kCols = TpSplit::kColumns, kRows = TpSplit::kRows;
  UnitLayout emb{"embeddings", {}, 0};
  add(emb, "wte.weight", {g.Vp / t, C}, {g.V, C}, true, ParamInit::kNormal, kRows);
  add(emb, "wpe.weight", {g.Tmax, C}, {g.Tmax, C}, true, ParamInit::kNormal);
  units.push_back(std::move(emb));
  for (int64_t l = 0; l < g.L; ++l) {
    UnitLayout u{str_cat("h.", l), {}, 0};
    const std::string p = str_cat("h.", l, ".");
    add(u, p + "ln_1.weight", {C}, {C}, false, ParamInit::kOne);
    add(u, p + "ln_1.bias", {C}, {C}, false, ParamInit::kZero);
    add(u, p + "attn.c_attn.weight", {C, 3 * C / t}, {C, 3 * C}, true, ParamInit::kNormal, kCols,
        3);
    add(u, p + "attn.c_attn.bias", {3 * C / t}, {3 * C}, false, ParamInit::kZero, kCols, 3);
    add(u, p + "attn.c_proj.weight", {C / t, C}, {C, C}, true, ParamInit::kResidualNormal, kRows);
    add(u, p + "attn.c_proj.bias", {C}, {C}, false, ParamInit::kZero);
    add(u, p + "ln_2.weight", {C}, {C}, false, ParamInit::kOne);
    add(u, p + "ln_2.bias", {C}, {C}, false, ParamInit::kZero);
    add(u, p + "mlp.c_fc.weight", {C, 4 * C / t}, {C, 4 * C}, true, ParamInit::kNormal, kCols);
    add(u, p + "mlp.c_fc.bias", {4 * C / t}, {4 * C}, false, ParamInit::kZero, kCols);
    add(u, p + "mlp.c_proj.weight", {4 * C / t, C}, {4 * C, C}, true, ParamInit::kResidualNormal,
        kRows);
    add(u, p + "mlp.c_proj.bias", {C}, {C}, false, ParamInit::kZero);
    units.push_back(std::move(u));
  }
  UnitLayout lnf{"ln_f", {}, 0};
  add(lnf, "ln_f.weight", {C}, {C}, false, ParamInit::kOne);
  add(lnf, "ln_f.bias", {C}, {C}, false, ParamInit::kZero);
  units.push_back(std::move(lnf));
  return units;
}

std::vector<int> acquire_order(const GptDims& dims) {
  const int L = int(dims.L);
  std::vector<int> order;
  for (int u = 0; u <= L + 1; ++u) order.push_back(u);  // forward
  if (dims.tied) {
    order.push_back(0);  // the head, then backward the head again
    order.push_back(0);
  } else {
    order.push_back(L + 1);  // backward starts with the head in the final unit
  }
  for (int u = L + 1 - (dims.tied ? 0 : 1); u >= 1; --u) order.push_back(u);
  return order;
}

int64_t ParamInfo::global_index(int64_t local, int tp, int tp_rank) const {
  switch (split) {
    case TpSplit::kReplicated:
      return local;
    case TpSplit::kRows:
      return int64_t(tp_rank) * numel() + local;  // a contiguous row block
    case TpSplit::kRowGroups:
      return int64_t(tp_rank) * parts / tp * numel() + local;  // block t * parts / tp
    case TpSplit::kColumns: {
      const int64_t cols = shape.back(), row = local / cols, col = local % cols;
      const int64_t part = cols / parts, block = col / part, within = col % part;
      const int64_t global_cols = cols * tp;
      return row * global_cols + block * (global_cols / parts) + int64_t(tp_rank) * part + within;
    }
  }
  return local;
}

void init_param(const ParamInfo& p, const GptDims& dims, uint64_t seed, int64_t begin, int64_t end,
                int tp_rank, float* out) {
  const uint64_t key = splitmix64(seed ^ fnv1a(p.name));
  const double stddev =
      p.init == ParamInit::kResidualNormal ? kInitStd / std::sqrt(2.0 * double(dims.L)) : kInitStd;
  const int64_t valid = shape_numel(p.hf_shape);  // wte's padding rows stay zero
  for (int64_t i = begin; i < end; ++i) {
    float v = 0.0f;
    switch (p.init) {
      case ParamInit::kZero:
        v = 0.0f;
        break;
      case ParamInit::kOne:
        v = 1.0f;
        break;
      case ParamInit::kNormal:
      case ParamInit::kResidualNormal: {
        const uint64_t g = uint64_t(p.global_index(i, int(dims.tp), tp_rank));
        if (int64_t(g) >= valid) break;
        // Box-Muller from two counter-based uniforms: u1 in (0, 1], u2 in [0, 1).
        double u1 = (double(splitmix64(key + 2 * g) >> 11) + 1.0) * 0x1.0p-53;
        double u2 = double(splitmix64(key + 2 * g + 1) >> 11) * 0x1.0p-53;
        v = float(stddev * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
        break;
      }
    }
    out[i - begin] = v;
  }
}

}  // namespace shardtrain::models
