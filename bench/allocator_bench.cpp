// allocator_bench.cpp — what the TrackingAllocator's bookkeeping costs per event, with the
// timeline on and off.
//
// Raw memory comes from a null RawAllocator (one static buffer), so only the accounting is
// timed: tag interning, counters and peaks under the mutex, and — with the timeline — a clock
// read and a 24-byte append. Training pays this per allocation and per release; multiplied by
// the events per step (bench/memory_bench.py reads them from a real run's memory report) it
// gives the recording overhead per step without the noise of timing whole steps.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "runtime/allocator.h"

namespace {

using shardtrain::MemCategory;
using shardtrain::TrackingAllocator;

class NullRaw final : public shardtrain::RawAllocator {
 public:
  void* allocate(int64_t) override { return buffer_; }
  void release(void*, int64_t) override {}

 private:
  alignas(64) static inline char buffer_[64];
};

// Nanoseconds per event (an allocation or a release), best of `rounds` rounds.
double ns_per_event(bool timeline, int events_per_round, int rounds) {
  NullRaw raw;
  // Tags like training's: a few dozen distinct names ("h.3.grad_work", ...), reused.
  std::vector<std::string> tags;
  for (int i = 0; i < 40; ++i) tags.push_back("h." + std::to_string(i) + ".grad_work");
  double best = 1e30;
  for (int r = 0; r < rounds; ++r) {
    TrackingAllocator alloc(raw, timeline);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < events_per_round / 2; ++i) {
      auto s = alloc.allocate(4096, MemCategory(i % 7), tags[size_t(i % 40)]);
    }
    const double ns =
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, ns / events_per_round);
  }
  return best;
}

}  // namespace

int main() {
  // 200k events per round: long enough for a stable clock, short enough for a few ms each;
  // the best of 20 rounds filters out the other processes of a shared machine.
  const int events = 200000, rounds = 20;
  const double off = ns_per_event(false, events, rounds);
  const double on = ns_per_event(true, events, rounds);
  std::printf(
      "{\"ns_per_event_timeline_off\": %.2f, \"ns_per_event_timeline_on\": %.2f, "
      "\"ns_per_event_timeline_cost\": %.2f}\n",
      off, on, on - off);
  return 0;
}
