// memory_report.cpp — summarise, gather, compare with memplan, write (memory_report.h).
#include "launch/memory_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "launch/memory_report_page.h"
#include "launch/memplan.h"
#include "parallel/memplan.h"
#include "runtime/error.h"
#include "runtime/log.h"

namespace shardtrain::launch {
namespace {

namespace fs = std::filesystem;

// Timeline points per rank in the report: a 1200-pixel-wide chart shows no more, and 4000
// points x 8 numbers keep each rank's gathered summary near 300 KiB even on 64+ ranks.
constexpr int kMaxTimelinePoints = 4000;
// Phase changes kept per rank: three per step (forward_backward, optimizer, eval), so the
// first ~1300 steps are marked exactly; a longer run keeps the first ones and says so.
constexpr size_t kMaxPhaseMarks = 4096;
// Allocation tags listed per rank, by their own peak: enough to see what dominates.
constexpr size_t kTopTags = 12;

nlohmann::json categories_json(const std::array<int64_t, kNumMemCategories>& b) {
  nlohmann::json j = nlohmann::json::object();
  for (int c = 0; c < kNumMemCategories; ++c) j[mem_category_name(MemCategory(c))] = b[size_t(c)];
  return j;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc | std::ios::binary);
  out << text;
  out.close();
  if (!out) throw UserError(str_cat("--memory-report: cannot write ", path.string()));
}

}  // namespace

void prepare_memory_report_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  const fs::path probe = fs::path(dir) / ".memory_report_probe";
  std::ofstream out(probe);
  if (ec || !out) {
    throw UserError(str_cat("--memory-report ", dir, ": cannot create or write this directory",
                            ec ? str_cat(" (", ec.message(), ")") : std::string()));
  }
  out.close();
  fs::remove(probe, ec);
}

nlohmann::json memory_rank_summary(const TrackingAllocator& alloc, int rank, int max_points) {
  const MemStats s = alloc.stats();
  const std::vector<MemEvent> events = alloc.timeline();
  const std::vector<std::string> tags = alloc.tags();
  nlohmann::json j;
  j["rank"] = rank;
  j["live"] = categories_json(s.live);
  j["peak"] = categories_json(s.peak);
  j["at_peak"] = categories_json(s.at_peak);
  j["peak_total"] = s.peak_total;
  j["live_total"] = s.live_total;
  j["num_allocations"] = s.num_allocations;
  j["num_events"] = int64_t(events.size());
  j["timeline_recorded"] = !events.empty();
  j["phases"] = alloc.phases();

  // 1. Replay the events: category bytes after each, phase changes, per-tag peaks. The
  //    timeline is reduced on the fly to time buckets; each bucket keeps its highest point
  //    (by total) and its last one, so peaks and the level between them both survive.
  nlohmann::json t_ms = nlohmann::json::array(), phase = nlohmann::json::array(),
                 bytes = nlohmann::json::array(), marks = nlohmann::json::array();
  std::array<int64_t, kNumMemCategories> live{};
  std::vector<int64_t> tag_live(tags.size(), 0), tag_peak(tags.size(), 0);
  std::vector<int> tag_cat(tags.size(), 0);
  const int64_t t_first = events.empty() ? 0 : events.front().t_ns;
  const int64_t t_last = events.empty() ? 0 : events.back().t_ns;
  const int buckets = std::max(1, max_points / 2);
  const double width = std::max<double>(1.0, double(t_last - t_first) / buckets);
  struct Point {
    int64_t t = -1, total = -1;
    uint16_t phase = 0;
    std::array<int64_t, kNumMemCategories> b{};
  };
  Point best, last;
  int64_t bucket = -1;
  auto emit = [&](const Point& p) {
    t_ms.push_back(double(p.t) * 1e-6);
    phase.push_back(p.phase);
    bytes.push_back(p.b);
  };
  auto flush = [&]() {
    if (best.t < 0) return;
    emit(best);
    if (last.t != best.t || last.total != best.total) emit(last);
    best = last = Point{};
  };
  bool marks_truncated = false;
  for (const MemEvent& e : events) {
    if (e.kind == MemEventKind::kPhase) {
      if (marks.size() < kMaxPhaseMarks) {
        marks.push_back({double(e.t_ns) * 1e-6, e.phase});
      } else {
        marks_truncated = true;
      }
      continue;
    }
    live[size_t(e.category)] += e.delta_bytes;
    if (e.tag < tags.size()) {
      tag_live[e.tag] += e.delta_bytes;
      tag_peak[e.tag] = std::max(tag_peak[e.tag], tag_live[e.tag]);
      tag_cat[e.tag] = int(e.category);
    }
    const int64_t b = int64_t(double(e.t_ns - t_first) / width);
    if (b != bucket) {
      flush();
      bucket = b;
    }
    Point p;
    p.t = e.t_ns;
    p.phase = e.phase;
    p.b = live;
    p.total = 0;
    for (int64_t v : live) p.total += v;
    if (p.total > best.total) best = p;  // ties keep the earliest
    last = p;
  }
  flush();
  j["timeline"] = {{"t_ms", t_ms}, {"phase", phase}, {"bytes", bytes}};
  j["phase_marks"] = marks;
  j["phase_marks_truncated"] = marks_truncated;

  // 2. The tags with the highest peaks.
  std::vector<size_t> order(tags.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return tag_peak[a] != tag_peak[b] ? tag_peak[a] > tag_peak[b] : a < b;
  });
  nlohmann::json top = nlohmann::json::array();
  for (size_t i = 0; i < std::min(kTopTags, order.size()); ++i) {
    if (tag_peak[order[i]] == 0) break;
    top.push_back({{"tag", tags[order[i]]},
                   {"category", mem_category_name(MemCategory(tag_cat[order[i]]))},
                   {"peak", tag_peak[order[i]]}});
  }
  j["top_tags"] = top;
  return j;
}

void write_memory_report(const std::string& dir, const TrackingAllocator& alloc,
                         Communicator& world, const Config& config) {
  // 1. Each rank's summary as JSON text; agree on the longest; gather equal buffers.
  std::string mine = memory_rank_summary(alloc, world.rank(), kMaxTimelinePoints).dump();
  double longest = double(mine.size());
  world.all_reduce_f64(&longest, 1, /*max=*/true);
  const int64_t words = (int64_t(longest) + 3) / 4;  // gathered as int32 words
  mine.resize(size_t(words * 4), ' ');
  std::string all(size_t(words * 4 * world.size()), ' ');
  world.all_gather(mine.data(), all.data(), words, DType::kI32);
  if (world.rank() != 0) return;

  // 2. Rank 0: parse, compare with memplan's prediction for the same config and world.
  nlohmann::json report;
  report["world"] = world.size();
  report["config"] = config_to_text(config);
  const int64_t device = parallel::parse_byte_size(MemplanArgs{}.device_memory, "device memory");
  report["predicted"] = memplan_json(config, world.size(), device);
  nlohmann::json ranks = nlohmann::json::array();
  for (int r = 0; r < world.size(); ++r) {
    ranks.push_back(nlohmann::json::parse(all.substr(size_t(r * words * 4), size_t(words * 4))));
  }
  report["ranks"] = ranks;
  // Measured: the highest of the ranks, per category (their layouts hold the same sizes).
  nlohmann::json cmp = nlohmann::json::object();
  auto compare = [&](const std::string& name, int64_t predicted, int64_t measured) {
    cmp[name] = {{"predicted", predicted},
                 {"measured", measured},
                 {"difference", measured - predicted},
                 {"relative", predicted ? double(measured - predicted) / double(predicted) : 0.0}};
  };
  for (int c = 0; c < kNumMemCategories; ++c) {
    const std::string name = mem_category_name(MemCategory(c));
    int64_t measured = 0;
    for (const auto& r : ranks) measured = std::max(measured, r["peak"][name].get<int64_t>());
    compare(name, report["predicted"]["rank_bytes"][name].get<int64_t>(), measured);
  }
  int64_t measured_total = 0;
  for (const auto& r : ranks)
    measured_total = std::max(measured_total, r["peak_total"].get<int64_t>());
  compare("total", report["predicted"]["rank_bytes"]["total"].get<int64_t>(), measured_total);
  report["comparison"] = cmp;

  // 3. Files, then the table.
  const fs::path base(dir);
  write_file(base / "memory_report.json", report.dump(1) + "\n");
  write_file(base / "memory_report.html", memory_report_html(report));

  const char* short_names[kNumMemCategories] = {"params", "master", "grads", "optim",
                                                "activ",  "comm",   "work"};
  std::string table = str_cat("memory report: ", (base / "memory_report.json").string(), ", ",
                              (base / "memory_report.html").string(),
                              "\npeak bytes by category (each category's own peak) and the peak "
                              "total, per rank:\n");
  char cell[64];
  std::snprintf(cell, sizeof cell, "%9s", "rank");
  table += cell;
  for (const char* n : short_names) {
    std::snprintf(cell, sizeof cell, " %11s", n);
    table += cell;
  }
  table += "  peak total\n";
  auto row = [&](const std::string& label, const nlohmann::json& by_cat, int64_t total) {
    std::snprintf(cell, sizeof cell, "%9s", label.c_str());
    table += cell;
    for (int c = 0; c < kNumMemCategories; ++c) {
      const int64_t v = by_cat[mem_category_name(MemCategory(c))].get<int64_t>();
      std::snprintf(cell, sizeof cell, " %11s", parallel::format_bytes(v).c_str());
      table += cell;
    }
    table += str_cat("  ", parallel::format_bytes(total), "\n");
  };
  for (const auto& r : ranks) {
    row(std::to_string(r["rank"].get<int>()), r["peak"], r["peak_total"].get<int64_t>());
  }
  row("predicted", report["predicted"]["rank_bytes"],
      report["predicted"]["rank_bytes"]["total"].get<int64_t>());
  std::fputs(table.c_str(), stdout);
  std::fflush(stdout);
}

std::string memory_report_html(const nlohmann::json& report) {
  // The data goes into a <script type="application/json"> element: "</" is the only sequence
  // that could end it early, and JSON allows "<\/" for it.
  std::string data = report.dump();
  std::string safe;
  safe.reserve(data.size());
  for (size_t i = 0; i < data.size(); ++i) {
    if (data[i] == '<' && i + 1 < data.size() && data[i + 1] == '/') {
      safe += "<\\/";
      ++i;
    } else {
      safe += data[i];
    }
  }
  std::string page = kMemoryReportPage;
  const std::string marker = "@REPORT_DATA@";
  const size_t at = page.find(marker);
  ST_CHECK(at != std::string::npos, "memory report page has no data marker");
  page.replace(at, marker.size(), safe);
  return page;
}

}  // namespace shardtrain::launch
