// The parameter layout (models/gpt_layout.cpp) of the Llama architecture: Hugging Face
// LlamaForCausalLM's names and (out, in) shapes, the parameter count of Llama 3 8B against a
// count by hand (and Meta's published 8.03B), Llama's default FFN width rule, and the
// tensor-parallel slices: K/V heads split with tp <= n_kv_head and replicated beyond it.
#include <gtest/gtest.h>

#include "models/gpt.h"

namespace shardtrain::models {
namespace {

proto::ModelConfig llama3_8b() {
  proto::ModelConfig m;
  m.set_arch(proto::LLAMA);
  m.set_n_layer(32);
  m.set_d_model(4096);
  m.set_n_head(32);
  m.set_n_kv_head(8);
  m.set_ffn_hidden(14336);
  m.set_vocab_size(128256);
  m.set_seq_len(8192);
  return m;
}

int64_t total(const std::vector<UnitLayout>& units) {
  int64_t n = 0;
  for (const auto& u : units) n += u.numel;
  return n;
}

TEST(LlamaLayout, Llama3_8bParameterCount) {
  const GptDims d = GptDims::from_config(llama3_8b());
  const auto units = gpt_layout(d);
  ASSERT_EQ(units.size(), 34u);  // embeddings, 32 layers, final norm + head
  // By hand: embedding and untied head V C each; per layer two norms (C), q and o (C x C), k and
  // v (C x KV D = 4096 x 1024), gate, up and down (C x F); the final norm (C).
  const int64_t C = 4096, V = 128256, F = 14336, kv = 8 * 128;
  const int64_t per_layer = 2 * C + 2 * C * C + 2 * C * kv + 3 * C * F;
  EXPECT_EQ(per_layer, 218112000);
  EXPECT_EQ(total(units), 2 * V * C + 32 * per_layer + C);
  EXPECT_EQ(total(units), 8030261248);  // Meta: "8.03B"
  EXPECT_EQ(units[1].params[2].name, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(units[1].params[2].hf_shape, (Shape{1024, 4096}));  // nn.Linear: (out, in)
  EXPECT_EQ(units.back().params.back().name, "lm_head.weight");
}

TEST(LlamaLayout, DefaultsAndTiedHead) {
  proto::ModelConfig m;
  m.set_arch(proto::LLAMA);
  m.set_d_model(4096);
  m.set_n_head(32);
  m.set_tie_embeddings(true);
  const GptDims d = GptDims::from_config(m);
  EXPECT_EQ(d.F, 11008);  // 2/3 x 4 x 4096 = 10922.7, up to a multiple of 256 (Llama 2 7B's)
  EXPECT_EQ(d.KV, 32);    // n_kv_head unset: multi-head
  const auto units = gpt_layout(d);
  EXPECT_EQ(units.back().params.size(), 1u);  // tied: no lm_head
}

TEST(LlamaLayout, TensorParallelSlicesOfKvHeads) {
  proto::ModelConfig m = llama3_8b();
  // tp 4 divides KV 8: two K heads per rank, as rows.
  GptDims d4 = GptDims::from_config(m, 4);
  const ParamInfo k4 = gpt_layout(d4)[1].params[2];
  EXPECT_EQ(k4.shape, (Shape{256, 4096}));
  EXPECT_EQ(k4.split, TpSplit::kRows);
  EXPECT_EQ(k4.global_index(0, 4, 3), 3 * 256 * 4096);
  // tp 16, KV 8: one K head per rank, each replicated on 2 ranks (ranks 6 and 7 hold head 3).
  GptDims d16 = GptDims::from_config(m, 16);
  const ParamInfo k16 = gpt_layout(d16)[1].params[2];
  EXPECT_EQ(k16.shape, (Shape{128, 4096}));
  EXPECT_EQ(k16.split, TpSplit::kRowGroups);
  EXPECT_EQ(k16.global_index(5, 16, 6), 3 * 128 * 4096 + 5);
  EXPECT_EQ(k16.global_index(5, 16, 7), 3 * 128 * 4096 + 5);
  // o_proj is row-parallel: rank t holds columns [t q/tp, (t+1) q/tp) of (C, q).
  const ParamInfo o4 = gpt_layout(d4)[1].params[4];
  EXPECT_EQ(o4.shape, (Shape{4096, 1024}));
  EXPECT_EQ(o4.global_index(1024 + 7, 4, 2), 1 * 4096 + 2 * 1024 + 7);  // row 1, column 7
}

}  // namespace
}  // namespace shardtrain::models
