#include "models/flops.h"

namespace shardtrain::models {

int64_t gpt_matmul_params(const GptDims& d) {
  // Per layer: c_attn C x 3C, attn c_proj C x C, c_fc C x 4C, mlp c_proj 4C x C = 12 C^2.
  return d.L * 12 * d.C * d.C + d.C * d.V;
}

double gpt_train_flops_per_token(const GptDims& d, int64_t T) {
  const double forward = 2.0 * double(gpt_matmul_params(d)) + 4.0 * double(d.L * d.C * T);
  return 3.0 * forward;
}

}  // namespace shardtrain::models
