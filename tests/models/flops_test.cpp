// Model FLOPs per token against hand-computed closed forms (models/flops.h): PaLM's 6 N + 12 L C T
// and Megatron-LM's 72 B T L C^2 (1 + T/(6C) + V/(12 L C)) per B T tokens.
#include "models/flops.h"

#include <gtest/gtest.h>

namespace shardtrain::models {
namespace {

GptDims dims(int64_t L, int64_t C, int64_t V, int tp = 1) {
  proto::ModelConfig m;
  m.set_n_layer(int32_t(L));
  m.set_n_head(4);
  m.set_d_model(int32_t(C));
  m.set_vocab_size(int32_t(V));
  m.set_seq_len(1024);
  return GptDims::from_config(m, tp);
}

TEST(ModelFlops, Gpt2SmallByHand) {
  // 12 layers x 12 x 768^2 = 84,934,656 plus the tied head 768 x 50257 = 38,597,376.
  const GptDims d = dims(12, 768, 50257);
  EXPECT_EQ(gpt_matmul_params(d), 123532032);
  // 6 x 123,532,032 + 12 x 12 x 768 x 1024 = 741,192,192 + 113,246,208.
  EXPECT_EQ(gpt_train_flops_per_token(d, 1024), 854438400.0);
}

TEST(ModelFlops, Llama3_8bByHand) {
  // Llama 3 8B: per layer q, o 4096^2 each, k, v 4096 x 1024 each, gate/up/down 4096 x 14336
  // each = 33,554,432 + 8,388,608 + 176,160,768 = 218,103,808; x 32 = 6,979,321,856; the head
  // 4096 x 128256 = 525,336,576 (the parameter count less the embedding and the norms).
  proto::ModelConfig m;
  m.set_arch(proto::LLAMA);
  m.set_n_layer(32);
  m.set_d_model(4096);
  m.set_n_head(32);
  m.set_n_kv_head(8);
  m.set_ffn_hidden(14336);
  m.set_vocab_size(128256);
  m.set_seq_len(8192);
  const GptDims d = GptDims::from_config(m);
  EXPECT_EQ(gpt_matmul_params(d), 6979321856 + 525336576);
  // 6 N + 12 L C T at T = 8192 (attention: H D = C query width whatever the K/V heads).
  EXPECT_EQ(gpt_train_flops_per_token(d, 8192),
            6.0 * (6979321856.0 + 525336576.0) + 12.0 * 32 * 4096 * 8192);
}

TEST(ModelFlops, EqualsMegatronsClosedForm) {
  const int64_t L = 4, C = 256, V = 8192, T = 256;
  const double megatron =
      72.0 * L * C * C * (1.0 + double(T) / (6.0 * C) + double(V) / (12.0 * L * C));
  EXPECT_NEAR(gpt_train_flops_per_token(dims(L, C, V), T), megatron, 1e-9 * megatron);
}

TEST(ModelFlops, IndependentOfTensorParallelPadding) {
  // V 96 pads to 128 at tp 1 and to 256 at tp 4; model FLOPs count the model's 96.
  EXPECT_EQ(gpt_train_flops_per_token(dims(2, 64, 96, 1), 32),
            gpt_train_flops_per_token(dims(2, 64, 96, 4), 32));
  EXPECT_EQ(gpt_matmul_params(dims(2, 64, 96, 4)), 2 * 12 * 64 * 64 + 64 * 96);
}

}  // namespace
}  // namespace shardtrain::models
