#include "parallel/optimizer.h"

#include <cmath>

namespace shardtrain::parallel {

double learning_rate(const proto::OptimizerConfig& o, int64_t step, int64_t total_steps) {
  const int64_t warmup = o.warmup_steps();
  if (warmup > 0 && step <= warmup) return o.lr() * double(step) / double(warmup);
  if (o.schedule() == proto::CONSTANT) return o.lr();
  const int64_t span = total_steps - warmup;
  const double progress = span > 0 ? double(step - warmup) / double(span) : 1.0;
  return o.min_lr() + 0.5 * (1.0 + std::cos(M_PI * progress)) * (o.lr() - o.min_lr());
}

}  // namespace shardtrain::parallel
