// The memory report's per-rank summary (timeline reduction keeps every peak, phases, tags)
// and the HTML page's data embedding. The multi-rank report itself is exercised by
// tests/launch/memory_checks.py.
#include "launch/memory_report.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "runtime/allocator.h"

namespace shardtrain::launch {
namespace {

TEST(MemoryReport, SummaryKeepsThePeakThroughReduction) {
  TrackingAllocator alloc;
  auto params = alloc.allocate(1000, MemCategory::kParams, "w");
  alloc.set_phase("forward_backward");
  // Many short-lived buffers with one much larger in the middle: the reduced timeline must
  // still contain the moment of the peak, with the exact bytes.
  for (int i = 0; i < 2000; ++i) {
    auto a = alloc.allocate(i == 777 ? 50000 : 10 + i % 7, MemCategory::kActivations, "act");
    if (i % 100 == 0) alloc.set_phase(i % 200 == 0 ? "optimizer" : "forward_backward");
  }
  const nlohmann::json s = memory_rank_summary(alloc, 3, 100);
  EXPECT_EQ(s["rank"], 3);
  EXPECT_EQ(s["peak_total"], 51000);
  EXPECT_EQ(s["peak"]["activations"], 50000);
  EXPECT_EQ(s["live"]["params"], 1000);
  EXPECT_EQ(s["num_events"], 1 + 1 + 2 * 2000 + 20);
  const auto& bytes = s["timeline"]["bytes"];
  EXPECT_LE(bytes.size(), 100u + 2u);
  EXPECT_EQ(s["timeline"]["t_ms"].size(), bytes.size());
  int64_t top = 0;
  for (const auto& p : bytes) {
    int64_t total = 0;
    for (const auto& v : p) total += v.get<int64_t>();
    top = std::max(top, total);
  }
  EXPECT_EQ(top, 51000);
  EXPECT_EQ(s["phase_marks"].size(), 21u);
  EXPECT_EQ(s["phases"][0], "init");
  EXPECT_EQ(s["top_tags"][0]["tag"], "act");
  EXPECT_EQ(s["top_tags"][0]["peak"], 50000);
  EXPECT_EQ(s["top_tags"][1]["tag"], "w");
}

TEST(MemoryReport, NoTimelineStillReportsPeaks) {
  TrackingAllocator alloc;
  alloc.set_record_timeline(false);
  { auto a = alloc.allocate(64, MemCategory::kWorkspace, "x"); }
  const nlohmann::json s = memory_rank_summary(alloc, 0, 100);
  EXPECT_FALSE(s["timeline_recorded"].get<bool>());
  EXPECT_EQ(s["peak"]["workspace"], 64);
  EXPECT_TRUE(s["timeline"]["bytes"].empty());
}

TEST(MemoryReport, PageEmbedsDataSafely) {
  nlohmann::json report = {{"config", "name: \"</script><script>alert(1)</script>\""}};
  const std::string page = memory_report_html(report);
  EXPECT_EQ(page.find("@REPORT_DATA@"), std::string::npos);
  EXPECT_EQ(page.find("alert(1)</script>"), std::string::npos);
  EXPECT_NE(page.find("alert(1)<\\/script>"), std::string::npos);
  // The only URL is the SVG namespace name (not fetched): nothing refers to the network.
  const size_t ns = page.find("http://www.w3.org/2000/svg");
  EXPECT_EQ(ns, page.find("http"));
  EXPECT_EQ(page.find("http", ns + 1), std::string::npos);
}

}  // namespace
}  // namespace shardtrain::launch
