// device.h — the CUDA device as the runtime sees it: a probe, a caching allocator, streams
// and events.
//
// Why these pieces and no more: the rest of shardtrain talks to memory through RawAllocator
// (runtime/allocator.h) and to peers through Communicator (runtime/comm.h), so a GPU needs
// only (1) a way to ask whether a device exists that never crashes — the machines that build
// shardtrain have the toolkit and no GPU, and cudaGetDeviceCount then fails with error 35
// (insufficient driver) or 100 (no device), which must become "0 devices, because ..." —
// (2) a RawAllocator over device memory, so TrackingAllocator's accounting covers GPUs
// unchanged, and (3) RAII streams/events for the compute/communication overlap. cudaMalloc and
// cudaFree synchronise the device and cost tens of microseconds, so the allocator caches freed
// blocks in size-class free lists and gives them back only at destruction (as PyTorch's
// caching allocator does), and orders every reuse after the streams that may still use a block
// (PyTorch's record_stream, made coarse: see the contract below), so nobody waits on the host
// before releasing memory that a kernel or a collective may still read.
//
// Host-only code: compiled by g++ against the CUDA runtime headers, no nvcc needed.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/error.h"

namespace shardtrain {

struct CudaTraits {
  static constexpr const char* kName = "CUDA";
  static bool ok(cudaError_t status) { return status == cudaSuccess; }
  // "cudaErrorNoDevice (100): no CUDA-capable device is detected"; clears the sticky error.
  static std::string describe(cudaError_t status);
};
#define CUDA_CHECK(expr) ST_CHECK_STATUS(::shardtrain::CudaTraits, expr)

// What cudaGetDeviceCount says. count is 0 whenever error != cudaSuccess (0).
struct CudaDeviceCount {
  int count = 0;
  int error = 0;           // the cudaError_t number (35, 100, ... on machines without a GPU)
  std::string error_name;  // "cudaErrorNoDevice"; empty on success
  std::string reason;      // why no device can be used, readable; empty when count > 0
};

// Asks the driver once per call; never throws, never aborts, clears the error it reports.
CudaDeviceCount cuda_device_count();

// Device memory for TrackingAllocator.
// Contract: allocate() returns 256-byte aligned device memory of the current device at
// construction (0 bytes: a unique 256-byte block) or throws InternalError naming the size and
// the cached/reserved totals. Sizes are rounded up to a size class (multiples of 512 B below
// 1 MiB, of 2 MiB above); release() puts the block on its class's free list, and a later
// allocate() of the same class reuses it. On cudaErrorMemoryAllocation the cache is emptied
// (cudaFree) and the allocation retried once. Every block is cudaFree'd at destruction, so the
// allocator must outlive every Storage it backs.
// Stream order: set_streams() names the compute stream and the other streams (communication)
// that may use blocks. release() then records one event per stream (a fence: everything issued
// so far on any of them), and a later allocate() hands the block out only after its fences:
// at once when they have all passed (cudaEventQuery, no wait), else by making the compute
// stream wait for them (cudaStreamWaitEvent, no host wait). Blocks whose fences have passed
// are preferred. Whoever uses a fresh block on another stream must order that stream after the
// compute stream first (NcclCommunicator does, for every operation). Coarser than tracking
// each block's users: a reused block may wait for unrelated work issued before its release.
// Without set_streams (tests, one stream), a block is reused at once, which is safe when all
// its users run on one stream. Thread-safe (one mutex).
class CudaCachingAllocator final : public RawAllocator {
 public:
  explicit CudaCachingAllocator(int device = -1);  // -1: the current device
  ~CudaCachingAllocator() override;
  CudaCachingAllocator(const CudaCachingAllocator&) = delete;
  CudaCachingAllocator& operator=(const CudaCachingAllocator&) = delete;

  void* allocate(int64_t bytes) override;
  void release(void* ptr, int64_t bytes) override;
  // The streams blocks may be used on (see the contract); `compute` is the one that waits.
  void set_streams(cudaStream_t compute, std::vector<cudaStream_t> others);

  // The size a request of `bytes` is rounded up to (exposed for tests and the memory planner).
  static int64_t size_class(int64_t bytes);
  int64_t reserved_bytes() const;  // everything cudaMalloc'd and not yet freed
  int64_t cached_bytes() const;    // the part of it on free lists
  // Gives the cached (free) blocks back to the driver.
  void empty_cache();

 private:
  struct FreeBlock {
    void* ptr;
    std::vector<cudaEvent_t> fences;  // one per stream at release; empty without set_streams
  };
  void empty_cache_locked();
  cudaEvent_t take_event_locked();
  // Makes `block` safe to hand out (see the contract) and recycles its events.
  void order_reuse_locked(FreeBlock& block);

  int device_;
  mutable std::mutex mu_;
  std::unordered_map<int64_t, std::vector<FreeBlock>> free_;  // size class -> cached blocks
  cudaStream_t compute_ = nullptr;
  std::vector<cudaStream_t> streams_;  // compute first
  std::vector<cudaEvent_t> event_pool_;
  std::unordered_map<void*, int64_t> live_;  // block -> size class
  int64_t reserved_ = 0, cached_ = 0;
};

// A CUDA stream, owned. Non-blocking with respect to the legacy default stream.
class Stream {
 public:
  explicit Stream(int priority = 0);  // lower numbers are higher priority (communication)
  ~Stream();
  Stream(Stream&& other) noexcept : stream_(other.stream_) { other.stream_ = nullptr; }
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t get() const { return stream_; }
  void synchronize() const;
  // Work issued on this stream after the call waits for everything recorded in `event`.
  void wait(const class Event& event) const;

 private:
  cudaStream_t stream_ = nullptr;
};

// A CUDA event, owned. Without timing by default (cheaper to record and to wait on).
class Event {
 public:
  explicit Event(bool timing = false);
  ~Event();
  Event(Event&& other) noexcept : event_(other.event_) { other.event_ = nullptr; }
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  cudaEvent_t get() const { return event_; }
  void record(cudaStream_t stream);
  void synchronize() const;
  bool query() const;  // true once the recorded work completed
  // Milliseconds from `start` to this event (both recorded, both with timing).
  float elapsed_ms(const Event& start) const;

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace shardtrain
