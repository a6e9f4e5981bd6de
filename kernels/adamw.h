// adamw.h — AdamW on fp32 master weights, torch.optim.AdamW semantics.
//
// Per element, with g = grad * grad_scale (grad_scale folds loss-scale unscaling and the
// gradient-clipping coefficient into one multiply):
//   p -= lr * weight_decay * p                     (decoupled decay, before the moments)
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// The operations follow torch 1.13's single-tensor AdamW in order (param.mul_(1 - lr*wd);
// exp_avg.mul_(b1).add_(g, alpha=1-b1); exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2);
// denom = exp_avg_sq.sqrt() / sqrt(bc2) + eps; param.addcdiv_(exp_avg, denom, -lr/bc1)), with
// the bias corrections computed in double as Python does, so parity tests agree to rounding.
// Optionally writes the updated parameter, cast, to a compute-dtype copy in the same pass.
#pragma once

#include <cstdint>

#include "kernels/isa.h"

namespace shardtrain::kernels {

struct AdamWParams {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;  // 0 for parameters that are not decayed (biases, LayerNorm gains)
  int64_t step;        // t, 1-based
};

SHARDTRAIN_ISA_BEGIN
// `compute_param` may be null; otherwise compute_param[i] = (T) param[i] after the update.
template <class T>
void adamw_update(float* param, const float* grad, float* m, float* v, T* compute_param, int64_t n,
                  const AdamWParams& p, float grad_scale);
SHARDTRAIN_ISA_END

// A run [begin, end) of elements of one flat fp32 buffer updated with one weight decay.
struct AdamWSegment {
  int64_t begin, end;
  float weight_decay;
};

SHARDTRAIN_ISA_BEGIN

// AdamW over every segment of the flat buffers param/grad/m/v (segments sorted by begin and
// disjoint; elements between segments are not touched), with p.weight_decay replaced by each
// segment's. When compute_param is not null, compute_param[i] = (T) param[i] after the update,
// for the segment elements only (same indexing as param). Per element exactly adamw_update's
// arithmetic: the result equals one adamw_update call per segment, bit for bit.
template <class T>
void adamw_update_segments(float* param, const float* grad, float* m, float* v, T* compute_param,
                           const AdamWSegment* segments, int64_t num_segments, const AdamWParams& p,
                           float grad_scale);

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
