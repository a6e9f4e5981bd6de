// loss_scaler.h — dynamic loss scaling for fp16 (REFERENCE.md: GradScaler / DeepSpeed).
//
// fp16 gradients underflow without scaling, so the loss (hence every gradient) is multiplied
// by `scale`. A step whose gradients hold inf/nan anywhere (one global flag) is skipped on
// every rank; after `hysteresis` consecutive overflows the scale halves (not below `min`);
// after `growth_interval` clean steps it doubles. bf16 and fp32 run with scale 1 but still
// skip a non-finite step rather than write NaN into the weights.
#pragma once

#include <cstdint>

#include "runtime/proto/config.pb.h"

namespace shardtrain::parallel {

class LossScaler {
 public:
  LossScaler(const proto::LossScaleConfig& c, bool dynamic)
      : dynamic_(dynamic),
        scale_(dynamic ? c.initial() : 1.0),
        min_(c.min()),
        growth_interval_(c.growth_interval()),
        hysteresis_(c.hysteresis()) {}

  double scale() const { return scale_; }

  // Records one step's outcome; returns true when the step must be skipped.
  bool update(bool overflow) {
    if (overflow) {
      clean_steps_ = 0;
      if (dynamic_ && ++overflows_ >= hysteresis_) {
        scale_ = scale_ / 2 < min_ ? min_ : scale_ / 2;
        overflows_ = 0;
      }
      return true;
    }
    overflows_ = 0;
    if (dynamic_ && ++clean_steps_ >= growth_interval_) {
      scale_ *= 2;
      clean_steps_ = 0;
    }
    return false;
  }

  // State for checkpoints.
  int64_t clean_steps() const { return clean_steps_; }
  int64_t overflows() const { return overflows_; }
  void restore(double scale, int64_t clean_steps, int64_t overflows) {
    scale_ = scale;
    clean_steps_ = clean_steps;
    overflows_ = overflows;
  }

 private:
  bool dynamic_;
  double scale_, min_;
  int64_t growth_interval_, hysteresis_;
  int64_t clean_steps_ = 0, overflows_ = 0;
};

}  // namespace shardtrain::parallel
