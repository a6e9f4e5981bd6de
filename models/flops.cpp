#include "models/flops.h"

namespace shardtrain::models {

int64_t gpt_matmul_params(const GptDims& d) {
  if (d.arch == Arch::kLlama) {
    // Per layer: q and o C x H D (= C x C), k and v C x KV D, gate, up, down C x F; the head
    // C x V (tied or not: the embedding lookup is no matmul).
    const int64_t kv = d.KV * d.D();
    return d.L * (2 * d.C * d.C + 2 * d.C * kv + 3 * d.C * d.F) + d.C * d.V;
  }
  // Per layer: c_attn C x 3C, attn c_proj C x C, c_fc C x 4C, mlp c_proj 4C x C = 12 C^2.
  return d.L * 12 * d.C * d.C + d.C * d.V;
}

double gpt_train_flops_per_token(const GptDims& d, int64_t T) {
  const double forward = 2.0 * double(gpt_matmul_params(d)) + 4.0 * double(d.L * d.C * T);
  return 3.0 * forward;
}

}  // namespace shardtrain::models
