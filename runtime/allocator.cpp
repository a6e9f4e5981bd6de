#include "runtime/allocator.h"

#include <chrono>
#include <cstdlib>
#include <cstring>

#include "runtime/error.h"
#include "runtime/log.h"

namespace shardtrain {
namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class HostRawAllocator final : public RawAllocator {
 public:
  void* allocate(int64_t bytes) override {
    // aligned_alloc wants a multiple of the alignment; 0 bytes still gets a unique pointer.
    size_t rounded = size_t((bytes + 63) / 64 * 64);
    if (rounded == 0) rounded = 64;
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) throw OutOfMemoryError(str_cat("host memory for ", bytes, " bytes"));
    return p;
  }
  void release(void* ptr, int64_t) override { std::free(ptr); }
};

class PoisoningHostAllocator final : public RawAllocator {
 public:
  void* allocate(int64_t bytes) override {
    void* p = host_raw_allocator().allocate(bytes);
    if (bytes > 0) std::memset(p, 0xFF, size_t(bytes));
    return p;
  }
  void release(void* ptr, int64_t bytes) override {
    if (bytes > 0) std::memset(ptr, 0xFF, size_t(bytes));
    host_raw_allocator().release(ptr, bytes);
  }
};

}  // namespace

const char* mem_category_name(MemCategory c) {
  switch (c) {
    case MemCategory::kParams:
      return "params";
    case MemCategory::kMasterParams:
      return "master_params";
    case MemCategory::kGrads:
      return "grads";
    case MemCategory::kOptimizerState:
      return "optimizer_state";
    case MemCategory::kActivations:
      return "activations";
    case MemCategory::kCommBuffers:
      return "comm_buffers";
    case MemCategory::kWorkspace:
      return "workspace";
    case MemCategory::kCount:
      break;
  }
  return "unknown";
}

RawAllocator& host_raw_allocator() {
  static HostRawAllocator a;
  return a;
}

RawAllocator& poisoning_host_allocator() {
  static PoisoningHostAllocator a;
  return a;
}

Storage::~Storage() { owner_->release(data_, bytes_, offset_, category_, tag_); }

TrackingAllocator::TrackingAllocator(RawAllocator& raw, bool record_timeline)
    : raw_(raw), record_timeline_(record_timeline), t0_ns_(now_ns()) {
  phases_.push_back("init");
  phase_ids_.emplace("init", 0);
  if (record_timeline_) timeline_.reserve(1 << 12);
}

TrackingAllocator::~TrackingAllocator() {
  // Storages must not outlive their allocator; a leak here is a bug, reported, not fatal.
  if (live_storages_ != 0) {
    log_error("tracking allocator destroyed with ", live_storages_, " live allocations (",
              stats_.live_total, " bytes)");
  }
}

uint16_t TrackingAllocator::intern(std::vector<std::string>& names,
                                   std::unordered_map<std::string, uint16_t>& ids,
                                   std::string_view name) {
  auto it = ids.find(std::string(name));
  if (it != ids.end()) return it->second;
  ST_CHECK(names.size() < 65535, "more than 65535 distinct allocation tags or phases");
  uint16_t id = uint16_t(names.size());
  names.emplace_back(name);
  ids.emplace(std::string(name), id);
  return id;
}

void TrackingAllocator::record(MemEventKind kind, int64_t delta, MemCategory category,
                               uint16_t tag) {
  int c = static_cast<int>(category);
  stats_.live[c] += delta;
  stats_.live_total += delta;
  if (stats_.live[c] > stats_.peak[c]) stats_.peak[c] = stats_.live[c];
  if (stats_.live_total > stats_.peak_total) {
    stats_.peak_total = stats_.live_total;
    stats_.at_peak = stats_.live;
  }
  if (record_timeline_)
    timeline_.push_back({now_ns() - t0_ns_, delta, kind, category, tag, phase_});
}

std::shared_ptr<Storage> TrackingAllocator::allocate(int64_t bytes, MemCategory category,
                                                     std::string_view tag) {
  ST_CHECK(bytes >= 0, "negative allocation size ", bytes);
  ST_CHECK(category != MemCategory::kCount, "allocation without a category");
  void* data = nullptr;
  int64_t offset;
  {
    std::lock_guard<std::mutex> lock(mu_);
    offset = start_offset_[size_t(category)];
  }
  try {
    data = static_cast<char*>(raw_.allocate(bytes + offset)) + offset;
  } catch (const OutOfMemoryError& e) {
    const MemStats now = stats();
    throw OutOfMemoryError(
        str_cat("out of memory: no ", e.what(), " (", mem_category_name(category), " '", tag,
                "') with ", now.live_total,
                " bytes held by this rank; `shardtrain memplan` predicts a "
                "layout's bytes per rank: lower data.micro_batch, raise parallel.zero_stage or "
                "parallel.tp, or set parallel.recompute"));
  }
  uint16_t tag_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tag_id = intern(tags_, tag_ids_, tag);
    record(MemEventKind::kAlloc, bytes, category, tag_id);
    ++stats_.num_allocations;
    ++live_storages_;
  }
  return std::make_shared<Storage>(this, data, bytes, category, tag_id, offset);
}

void TrackingAllocator::set_start_offset(MemCategory category, int64_t bytes) {
  ST_CHECK(category != MemCategory::kCount && bytes >= 0 && bytes < 64 && bytes % 16 == 0,
           "start offset must be 0, 16, 32 or 48 bytes, got ", bytes);
  std::lock_guard<std::mutex> lock(mu_);
  start_offset_[size_t(category)] = bytes;
}

void TrackingAllocator::release(void* data, int64_t bytes, int64_t offset, MemCategory category,
                                uint16_t tag) {
  raw_.release(static_cast<char*>(data) - offset, bytes + offset);
  std::lock_guard<std::mutex> lock(mu_);
  record(MemEventKind::kFree, -bytes, category, tag);
  --live_storages_;
}

void TrackingAllocator::set_record_timeline(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  record_timeline_ = on;
  if (!on) timeline_.clear();
}

void TrackingAllocator::set_phase(std::string_view phase) {
  std::lock_guard<std::mutex> lock(mu_);
  phase_ = intern(phases_, phase_ids_, phase);
  if (record_timeline_) {
    timeline_.push_back(
        {now_ns() - t0_ns_, 0, MemEventKind::kPhase, MemCategory::kWorkspace, 0, phase_});
  }
}

MemStats TrackingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

std::vector<MemEvent> TrackingAllocator::timeline() const {
  std::lock_guard<std::mutex> lock(mu_);
  return timeline_;
}

std::vector<std::string> TrackingAllocator::tags() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tags_;
}

std::vector<std::string> TrackingAllocator::phases() const {
  std::lock_guard<std::mutex> lock(mu_);
  return phases_;
}

void TrackingAllocator::reset_peaks() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak = stats_.live;
  stats_.at_peak = stats_.live;
  stats_.peak_total = stats_.live_total;
  timeline_.clear();
}

}  // namespace shardtrain
