// Accounting of the tracking allocator: per-category live and peak bytes, the at-peak
// breakdown, timeline order and phases, and views that share storage without being counted.
#include "runtime/allocator.h"

#include <gtest/gtest.h>

#include <map>

#include "runtime/tensor.h"

namespace shardtrain {
namespace {

constexpr int kParams = int(MemCategory::kParams);
constexpr int kGrads = int(MemCategory::kGrads);
constexpr int kActs = int(MemCategory::kActivations);

TEST(TrackingAllocator, LiveAndPeakPerCategory) {
  TrackingAllocator alloc;
  auto p = alloc.allocate(1000, MemCategory::kParams, "w");
  auto g = alloc.allocate(1000, MemCategory::kGrads, "dw");
  {
    auto a1 = alloc.allocate(300, MemCategory::kActivations, "a1");
    auto a2 = alloc.allocate(200, MemCategory::kActivations, "a2");
    MemStats s = alloc.stats();
    EXPECT_EQ(s.live[kActs], 500);
    EXPECT_EQ(s.live_total, 2500);
  }
  g.reset();
  auto a3 = alloc.allocate(100, MemCategory::kActivations, "a3");
  MemStats s = alloc.stats();
  EXPECT_EQ(s.live[kParams], 1000);
  EXPECT_EQ(s.live[kGrads], 0);
  EXPECT_EQ(s.live[kActs], 100);
  EXPECT_EQ(s.peak[kGrads], 1000);
  EXPECT_EQ(s.peak[kActs], 500);
  EXPECT_EQ(s.peak_total, 2500);
  // The breakdown at the overall peak: params 1000, grads 1000, activations 500.
  EXPECT_EQ(s.at_peak[kParams], 1000);
  EXPECT_EQ(s.at_peak[kGrads], 1000);
  EXPECT_EQ(s.at_peak[kActs], 500);
  EXPECT_EQ(s.num_allocations, 5);
}

// Category peaks are each category's own maximum, not the value at the overall peak.
TEST(TrackingAllocator, CategoryPeaksAreIndependent) {
  TrackingAllocator alloc;
  { auto g = alloc.allocate(800, MemCategory::kGrads, "g"); }
  auto a = alloc.allocate(500, MemCategory::kActivations, "a");
  auto b = alloc.allocate(500, MemCategory::kActivations, "b");
  MemStats s = alloc.stats();
  EXPECT_EQ(s.peak[kGrads], 800);
  EXPECT_EQ(s.peak_total, 1000);
  EXPECT_EQ(s.at_peak[kGrads], 0);
  EXPECT_EQ(s.at_peak[kActs], 1000);
}

TEST(TrackingAllocator, TimelineInOrderWithPhases) {
  TrackingAllocator alloc;
  alloc.set_phase("forward");
  auto a = alloc.allocate(64, MemCategory::kActivations, "x");
  alloc.set_phase("backward");
  a.reset();
  auto g = alloc.allocate(32, MemCategory::kGrads, "dx");
  std::vector<MemEvent> t = alloc.timeline();
  ASSERT_EQ(t.size(), 5u);
  std::vector<std::string> phases = alloc.phases(), tags = alloc.tags();
  EXPECT_EQ(t[0].kind, MemEventKind::kPhase);
  EXPECT_EQ(phases[t[0].phase], "forward");
  EXPECT_EQ(t[1].kind, MemEventKind::kAlloc);
  EXPECT_EQ(t[1].delta_bytes, 64);
  EXPECT_EQ(tags[t[1].tag], "x");
  EXPECT_EQ(phases[t[1].phase], "forward");
  EXPECT_EQ(t[2].kind, MemEventKind::kPhase);
  EXPECT_EQ(t[3].kind, MemEventKind::kFree);
  EXPECT_EQ(t[3].delta_bytes, -64);
  EXPECT_EQ(phases[t[3].phase], "backward");
  EXPECT_EQ(t[4].category, MemCategory::kGrads);
  for (size_t i = 1; i < t.size(); ++i) EXPECT_LE(t[i - 1].t_ns, t[i].t_ns);
}

TEST(TrackingAllocator, ViewsAreNotCountedTwice) {
  TrackingAllocator alloc;
  Tensor w = Tensor::empty({4, 8}, DType::kF32, alloc, MemCategory::kParams, "w");
  EXPECT_EQ(alloc.stats().live[kParams], 4 * 8 * 4);
  Tensor row = w.view(8, {8});
  Tensor flat = w.reshape({32});
  EXPECT_EQ(alloc.stats().live[kParams], 4 * 8 * 4);
  EXPECT_EQ(alloc.stats().num_allocations, 1);
  EXPECT_EQ(row.data<float>(), w.data<float>() + 8);
  // The view keeps the storage alive after the owner is gone; released with the last view.
  w = Tensor();
  flat = Tensor();
  EXPECT_EQ(alloc.stats().live[kParams], 4 * 8 * 4);
  row = Tensor();
  EXPECT_EQ(alloc.stats().live[kParams], 0);
}

TEST(TrackingAllocator, FromBlobIsNotTracked) {
  TrackingAllocator alloc;
  float buf[16];
  Tensor t = Tensor::from_blob(buf, {16}, DType::kF32);
  EXPECT_FALSE(t.owns_storage());
  EXPECT_EQ(alloc.stats().live_total, 0);
  EXPECT_EQ(t.bytes(), 64);
}

TEST(TrackingAllocator, ResetPeaksKeepsLive) {
  TrackingAllocator alloc;
  auto p = alloc.allocate(100, MemCategory::kParams, "p");
  { auto w = alloc.allocate(1000, MemCategory::kWorkspace, "w"); }
  alloc.reset_peaks();
  MemStats s = alloc.stats();
  EXPECT_EQ(s.peak_total, 100);
  EXPECT_EQ(s.live[kParams], 100);
  EXPECT_TRUE(alloc.timeline().empty());
}

TEST(TrackingAllocator, AlignedAndZeroSized) {
  TrackingAllocator alloc;
  auto a = alloc.allocate(3, MemCategory::kWorkspace, "odd");
  auto z = alloc.allocate(0, MemCategory::kWorkspace, "empty");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % 64, 0u);
  EXPECT_NE(z->data(), nullptr);
  EXPECT_EQ(alloc.stats().live_total, 3);
}

// Hands out host memory and checks that every release is exactly an earlier allocate.
class CheckingRaw final : public RawAllocator {
 public:
  void* allocate(int64_t bytes) override {
    void* p = host_raw_allocator().allocate(bytes);
    blocks[p] = bytes;
    return p;
  }
  void release(void* ptr, int64_t bytes) override {
    auto it = blocks.find(ptr);
    ASSERT_NE(it, blocks.end()) << "released a pointer never handed out";
    EXPECT_EQ(it->second, bytes);
    blocks.erase(it);
    host_raw_allocator().release(ptr, bytes);
  }
  std::map<void*, int64_t> blocks;
};

TEST(TrackingAllocator, StartOffsetPlacesButDoesNotCount) {
  CheckingRaw raw;
  {
    TrackingAllocator alloc(raw);
    alloc.set_start_offset(MemCategory::kActivations, 16);
    auto act = alloc.allocate(100, MemCategory::kActivations, "act");
    auto par = alloc.allocate(100, MemCategory::kParams, "par");
    EXPECT_EQ(reinterpret_cast<uintptr_t>(act->data()) % 64, 16u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(par->data()) % 64, 0u);
    // Only what was asked for is counted; the raw block holds the offset too.
    EXPECT_EQ(alloc.stats().live[kActs], 100);
    EXPECT_EQ(alloc.stats().live_total, 200);
    EXPECT_EQ(raw.blocks.at(static_cast<char*>(act->data()) - 16), 116);
    // A later change applies to later allocations; the earlier block is released as it was made.
    alloc.set_start_offset(MemCategory::kActivations, 48);
    auto act2 = alloc.allocate(8, MemCategory::kActivations, "act2");
    EXPECT_EQ(reinterpret_cast<uintptr_t>(act2->data()) % 64, 48u);
    act.reset();
    EXPECT_EQ(alloc.stats().live[kActs], 8);
    EXPECT_ANY_THROW(alloc.set_start_offset(MemCategory::kActivations, 8));
    EXPECT_ANY_THROW(alloc.set_start_offset(MemCategory::kActivations, 64));
  }
  EXPECT_TRUE(raw.blocks.empty());
}

}  // namespace
}  // namespace shardtrain
