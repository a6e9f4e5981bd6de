// allocator.h — every byte a rank holds, by category, live, peak and over time.
//
// The memory profiler ([memory]) and the ZeRO memory tests read this, so every long-lived
// buffer in shardtrain is allocated through a TrackingAllocator with a category and a tag.
// Design for low cost per allocation: counters are plain integers updated under one mutex;
// the timeline is an append-only vector of 24-byte events (tags and phases interned to ids);
// nothing is formatted until a report is asked for. Views (runtime/tensor.h) never allocate,
// so they are never counted twice.
//
// Raw memory comes from a RawAllocator (host: 64-byte aligned malloc; CUDA: a caching
// device allocator, [cuda]), so the same accounting covers every device.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace shardtrain {

// The categories of ARCHITECTURE.md's memory report, in report order.
enum class MemCategory : uint8_t {
  kParams = 0,      // compute-dtype parameters (full, or the ZeRO-3 shard + gathered units)
  kMasterParams,    // fp32 master copy of the owned shard
  kGrads,           // gradients (full buffer, or the owned shard for ZeRO-2/3)
  kOptimizerState,  // AdamW moments
  kActivations,     // saved for backward
  kCommBuffers,     // reduction buckets, gather buffers
  kWorkspace,       // scratch that dies within an op
  kCount
};
constexpr int kNumMemCategories = static_cast<int>(MemCategory::kCount);
const char* mem_category_name(MemCategory c);  // "params", "master_params", ...

// Where raw bytes come from. Contract: allocate() returns memory aligned to 64 bytes or throws
// InternalError; release() takes exactly what allocate() returned, with the same size.
class RawAllocator {
 public:
  virtual ~RawAllocator() = default;
  virtual void* allocate(int64_t bytes) = 0;
  virtual void release(void* ptr, int64_t bytes) = 0;
};

// Host memory, 64-byte aligned (a cache line; also what AVX-512 loads like).
RawAllocator& host_raw_allocator();
// Host memory as above, filled with 0xFF bytes (a NaN in fp32, bf16 and f16; -1 in int32) when
// handed out and again when released, so that reading memory never written, or read after its
// release, shows in the results. cuda-emu computes in it: a GPU's device memory holds garbage
// in both cases, which host memory fresh from the kernel (zeros) would hide.
RawAllocator& poisoning_host_allocator();

enum class MemEventKind : uint8_t { kAlloc, kFree, kPhase };

struct MemEvent {
  int64_t t_ns;         // since the allocator was created
  int64_t delta_bytes;  // +bytes for kAlloc, -bytes for kFree, 0 for kPhase
  MemEventKind kind;
  MemCategory category;  // meaningless for kPhase
  uint16_t tag;          // index into tags()
  uint16_t phase;        // index into phases(): the phase in force when the event happened
};

struct MemStats {
  std::array<int64_t, kNumMemCategories> live{};     // bytes held now
  std::array<int64_t, kNumMemCategories> peak{};     // each category's own maximum
  std::array<int64_t, kNumMemCategories> at_peak{};  // the categories at the moment of peak_total
  int64_t live_total = 0;
  int64_t peak_total = 0;
  int64_t num_allocations = 0;
};

class TrackingAllocator;

// One tracked allocation. Released (and accounted) when the last owner drops it.
class Storage {
 public:
  Storage(TrackingAllocator* owner, void* data, int64_t bytes, MemCategory category, uint16_t tag,
          int64_t offset)
      : owner_(owner),
        data_(data),
        bytes_(bytes),
        offset_(offset),
        category_(category),
        tag_(tag) {}
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  MemCategory category() const { return category_; }

 private:
  TrackingAllocator* owner_;
  void* data_;
  int64_t bytes_;
  int64_t offset_;  // data_ - the raw allocator's block (TrackingAllocator::set_start_offset)
  MemCategory category_;
  uint16_t tag_;
};

class TrackingAllocator {
 public:
  explicit TrackingAllocator(RawAllocator& raw = host_raw_allocator(), bool record_timeline = true);
  ~TrackingAllocator();
  TrackingAllocator(const TrackingAllocator&) = delete;
  TrackingAllocator& operator=(const TrackingAllocator&) = delete;

  // Allocates `bytes` (0 allowed) under `category`, labelled `tag` (e.g. "block3.attn.qkv").
  std::shared_ptr<Storage> allocate(int64_t bytes, MemCategory category, std::string_view tag);

  // Later allocations of `category` start `bytes` (0..48, a multiple of 16) past the raw
  // allocator's 64-byte-aligned block; accounting still counts only what was asked for. A
  // placement choice for a library that is slow at some alignments: the cpu device
  // (launch/device.cpp) sets what kernels::gemm_host_start_offset asks for.
  void set_start_offset(MemCategory category, int64_t bytes);

  // Turns the timeline on or off (counters and peaks are always kept). Call before allocating:
  // a timeline that misses early events would not add up.
  void set_record_timeline(bool on);

  // Marks the start of a phase ("forward", "backward", "optimizer", ...) in the timeline.
  void set_phase(std::string_view phase);

  MemStats stats() const;
  std::vector<MemEvent> timeline() const;
  std::vector<std::string> tags() const;
  std::vector<std::string> phases() const;
  // Forgets peaks (set to the live values) and the timeline; live bytes are kept.
  void reset_peaks();

 private:
  friend class Storage;
  void release(void* data, int64_t bytes, int64_t offset, MemCategory category, uint16_t tag);
  uint16_t intern(std::vector<std::string>& names, std::unordered_map<std::string, uint16_t>& ids,
                  std::string_view name);
  void record(MemEventKind kind, int64_t delta, MemCategory category, uint16_t tag);

  RawAllocator& raw_;
  bool record_timeline_;
  int64_t t0_ns_;
  mutable std::mutex mu_;
  MemStats stats_;
  int64_t live_storages_ = 0;
  std::array<int64_t, kNumMemCategories> start_offset_{};
  uint16_t phase_ = 0;
  std::vector<MemEvent> timeline_;
  std::vector<std::string> tags_, phases_;
  std::unordered_map<std::string, uint16_t> tag_ids_, phase_ids_;
};

}  // namespace shardtrain
