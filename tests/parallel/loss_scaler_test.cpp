// LossScaler (parallel/loss_scaler.h): growth after growth_interval clean steps, halving after
// hysteresis consecutive overflows, the min floor, the fixed scale of bf16/fp32, and restore.
// Every expected value is counted by hand from the rules in the header.
#include "parallel/loss_scaler.h"

#include <gtest/gtest.h>

#include <vector>

namespace shardtrain::parallel {
namespace {

proto::LossScaleConfig config(double initial, int64_t growth_interval, int64_t hysteresis,
                              double min) {
  proto::LossScaleConfig c;
  c.set_initial(initial);
  c.set_growth_interval(growth_interval);
  c.set_hysteresis(hysteresis);
  c.set_min(min);
  return c;
}

// Feeds `overflows` (one flag per step) and returns the scale after each step.
std::vector<double> scales(LossScaler& s, const std::vector<bool>& overflows) {
  std::vector<double> out;
  for (bool o : overflows) {
    EXPECT_EQ(s.update(o), o) << "a step is skipped exactly when it overflowed";
    out.push_back(s.scale());
  }
  return out;
}

TEST(LossScaler, DoublesAfterGrowthIntervalCleanSteps) {
  LossScaler s(config(1024, 3, 1, 1), /*dynamic=*/true);
  EXPECT_EQ(s.scale(), 1024);
  // Clean steps 1, 2 keep 1024; the 3rd doubles; the count restarts, so the 6th doubles again.
  EXPECT_EQ(scales(s, {false, false, false, false, false, false, false}),
            (std::vector<double>{1024, 1024, 2048, 2048, 2048, 4096, 4096}));
  EXPECT_EQ(s.clean_steps(), 1);
}

TEST(LossScaler, AnOverflowRestartsTheGrowthCount) {
  LossScaler s(config(1024, 3, 1, 1), true);
  // Two clean steps, an overflow (halves, count restarts), then three clean steps to double.
  EXPECT_EQ(scales(s, {false, false, true, false, false, false}),
            (std::vector<double>{1024, 1024, 512, 512, 512, 1024}));
}

TEST(LossScaler, HysteresisHalvesOnlyAfterThatManyConsecutiveOverflows) {
  LossScaler s(config(1024, 100, 3, 1), true);
  // Overflows 1 and 2 are skipped without halving; the 3rd halves and restarts the count.
  EXPECT_EQ(scales(s, {true, true, true, true}), (std::vector<double>{1024, 1024, 512, 512}));
  EXPECT_EQ(s.overflows(), 1);
  // A clean step breaks the run: two more overflows are again not enough.
  EXPECT_EQ(scales(s, {false, true, true, true}), (std::vector<double>{512, 512, 512, 256}));
  EXPECT_EQ(s.overflows(), 0);
}

TEST(LossScaler, NeverBelowMin) {
  LossScaler s(config(8, 100, 1, 3), true);
  // 8 -> 4 -> 3 (4 / 2 = 2 is below the floor) -> 3.
  EXPECT_EQ(scales(s, {true, true, true}), (std::vector<double>{4, 3, 3}));
}

TEST(LossScaler, StaticForBf16AndFp32) {
  LossScaler s(config(65536, 1, 1, 1), /*dynamic=*/false);
  EXPECT_EQ(s.scale(), 1);
  // Still skips a non-finite step, but the scale never moves.
  EXPECT_EQ(scales(s, {false, true, false, false}), (std::vector<double>{1, 1, 1, 1}));
}

TEST(LossScaler, RestoreContinuesExactlyLikeTheOriginal) {
  const auto c = config(1024, 3, 2, 1);
  const std::vector<bool> head = {false, false, false, false, true};  // 4 clean, 1 overflow
  const std::vector<bool> tail = {true, false, false, false, true, true, false};
  LossScaler straight(c, true);
  scales(straight, head);
  LossScaler restored(c, true);
  restored.restore(straight.scale(), straight.clean_steps(), straight.overflows());
  EXPECT_EQ(restored.scale(), 2048);
  EXPECT_EQ(restored.clean_steps(), 0);
  EXPECT_EQ(restored.overflows(), 1);
  // The saved overflow count decides the next step: with it, one more overflow halves.
  EXPECT_EQ(scales(restored, tail), scales(straight, tail));
  LossScaler fresh_counts(c, true);
  fresh_counts.restore(2048, 0, 0);  // a restore that dropped the counter
  LossScaler again(c, true);
  scales(again, head);
  EXPECT_NE(scales(fresh_counts, tail), scales(again, tail));
}

}  // namespace
}  // namespace shardtrain::parallel
