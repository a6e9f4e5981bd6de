// optimizer.h — learning-rate schedule and the AdamW step over a set of parameter ranges.
//
// Schedule (README; nanoGPT's): linear warmup lr * step / warmup_steps for step <= warmup_steps
// (1-based steps), then CONSTANT keeps lr, COSINE decays to min_lr over the remaining steps:
// min_lr + 0.5 (1 + cos(pi * (step - warmup) / (steps - warmup))) (lr - min_lr).
#pragma once

#include <cstdint>

#include "runtime/proto/config.pb.h"

namespace shardtrain::parallel {

double learning_rate(const proto::OptimizerConfig& o, int64_t step, int64_t total_steps);

// torch.nn.utils.clip_grad_norm_: coefficient applied to every gradient, 1 when no clipping.
// total_norm is the pre-clip global L2 norm; max_norm 0 disables clipping.
inline double clip_coefficient(double total_norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  double coef = max_norm / (total_norm + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

}  // namespace shardtrain::parallel
