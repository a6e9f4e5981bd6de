// flops.h — model FLOPs of a GPT training step: what throughput (TFLOP/s) and MFU are measured in.
//
// Model FLOPs count the matrix multiplications the model needs, once, the way PaLM (Chowdhery
// et al. 2022, appendix B) and Megatron-LM (Narayanan et al. 2021, section 5.1) do, so a figure
// here compares with theirs: no recomputation (that would be hardware FLOPs), no elementwise
// work, and the attention of every query with every key of its window (the causal half that is
// masked away is still counted). Per token of a window of T tokens:
//
//   forward   2 N + 4 L C T    N = 12 L C^2 + C V: the matmul parameters (c_attn, attn c_proj,
//                              c_fc, mlp c_proj; the head tied to wte, V the model's vocabulary);
//                              4 L C T: Q K^T and P V, 2 T C each, per layer
//   training  3 x forward = 6 N + 12 L C T   (backward = 2 x forward: input and weight grads)
//
// For B T tokens this is Megatron's 72 B T L C^2 (1 + T/(6C) + V/(12 L C)). The vocabulary is
// the model's (model.vocab_size), not the padded one the head computes (padding grows with
// tp), so the figure depends on the model alone. bench/step_bench.py's model_flops_per_token()
// is the same formula.
#pragma once

#include <cstdint>

#include "models/gpt.h"

namespace shardtrain::models {

// N above: every weight that takes part in a matmul, per token, counted once (the tied head too).
int64_t gpt_matmul_params(const GptDims& d);

// Model FLOPs of one token's forward + backward in windows of T tokens (T = model.seq_len in
// training). GPT-2 124M (L 12, C 768, V 50257) at T 1024: 854,438,400.
double gpt_train_flops_per_token(const GptDims& d, int64_t T);

}  // namespace shardtrain::models
