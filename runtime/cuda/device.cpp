// device.cpp — the CUDA probe, caching allocator, streams and events (see device.h).
#include "runtime/cuda/device.h"

#include <cstddef>
#include <cstdio>

namespace shardtrain {

std::string CudaTraits::describe(cudaError_t status) {
  // Reporting a failure clears CUDA's last error, so that a later, unrelated check does not
  // see it again (STYLE practice 5). Sticky (context-corrupting) errors stay, as they must.
  (void)cudaGetLastError();
  return str_cat(cudaGetErrorName(status), " (", int(status), "): ", cudaGetErrorString(status));
}

CudaDeviceCount cuda_device_count() {
  CudaDeviceCount out;
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    out.error = int(e);
    out.error_name = cudaGetErrorName(e);
    out.reason = str_cat("no usable CUDA device: cudaGetDeviceCount returned error ", int(e), " (",
                         out.error_name, ": ", cudaGetErrorString(e), ")");
    return out;
  }
  out.count = count;
  if (count == 0) out.reason = "no CUDA device: cudaGetDeviceCount returned 0 devices";
  return out;
}

// ---- CudaCachingAllocator ----------------------------------------------------------------

namespace {
// Small blocks in 512-byte steps (a multiple of the 256-byte alignment, and what cudaMalloc
// hands out at least anyway); large ones in 2 MiB steps, the driver's large-page granularity,
// so that rounding wastes at most one page and repeated layer shapes hit the same class.
constexpr int64_t kSmallStep = 512;
constexpr int64_t kLargeThreshold = int64_t(1) << 20;
constexpr int64_t kLargeStep = int64_t(2) << 20;
}  // namespace

int64_t CudaCachingAllocator::size_class(int64_t bytes) {
  if (bytes <= 0) return kSmallStep;
  const int64_t step = bytes < kLargeThreshold ? kSmallStep : kLargeStep;
  return (bytes + step - 1) / step * step;
}

CudaCachingAllocator::CudaCachingAllocator(int device) : device_(device) {
  if (device_ < 0) CUDA_CHECK(cudaGetDevice(&device_));
}

CudaCachingAllocator::~CudaCachingAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  if (cudaSetDevice(device_) != cudaSuccess) {
    (void)cudaGetLastError();
    return;  // no context left to free into (process teardown): the driver reclaims it
  }
  empty_cache_locked();
  for (cudaEvent_t e : event_pool_) (void)cudaEventDestroy(e);
  for (auto& [ptr, size] : live_) (void)cudaFree(ptr);
  if (!live_.empty()) {
    std::fprintf(stderr, "shardtrain: CudaCachingAllocator destroyed with %zu live blocks\n",
                 live_.size());
  }
  (void)cudaGetLastError();
}

void* CudaCachingAllocator::allocate(int64_t bytes) {
  const int64_t size = size_class(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  // 1. Reuse a cached block of the same class: the newest whose fences have all passed, else
  //    the oldest (its fences are the likeliest to be near), after the compute stream waits.
  auto it = free_.find(size);
  if (it != free_.end() && !it->second.empty()) {
    std::vector<FreeBlock>& blocks = it->second;
    size_t pick = 0;
    for (size_t i = blocks.size(); i-- > 0;) {
      bool passed = true;
      for (cudaEvent_t e : blocks[i].fences) {
        const cudaError_t q = cudaEventQuery(e);
        if (q == cudaErrorNotReady) {
          (void)cudaGetLastError();
          passed = false;
          break;
        }
        CUDA_CHECK(q);
      }
      if (passed) {
        pick = i;
        break;
      }
    }
    FreeBlock block = std::move(blocks[pick]);
    blocks.erase(blocks.begin() + std::ptrdiff_t(pick));
    order_reuse_locked(block);
    cached_ -= size;
    live_.emplace(block.ptr, size);
    return block.ptr;
  }
  // 2. Ask the driver; if it is out of memory, give the cache back and ask once more.
  CUDA_CHECK(cudaSetDevice(device_));
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, size_t(size));
  if (e == cudaErrorMemoryAllocation && cached_ > 0) {
    (void)cudaGetLastError();
    empty_cache_locked();
    e = cudaMalloc(&p, size_t(size));
  }
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    (void)cudaMemGetInfo(&free_bytes, &total_bytes);
    (void)cudaGetLastError();
    throw OutOfMemoryError(str_cat("device ", device_, " memory for ", bytes, " bytes (",
                                   free_bytes, " of ", total_bytes, " free; shardtrain reserves ",
                                   reserved_, ")"));
  }
  if (e != cudaSuccess) {
    const std::string detail = CudaTraits::describe(e);
    throw InternalError(str_cat("device allocation of ", bytes, " bytes (size class ", size,
                                ") on device ", device_, " failed: ", detail, "; reserved ",
                                reserved_, " bytes, of which cached ", cached_));
  }
  reserved_ += size;
  live_.emplace(p, size);
  return p;
}

void CudaCachingAllocator::release(void* ptr, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  ST_CHECK(it != live_.end(), "CudaCachingAllocator::release of a pointer it did not allocate");
  ST_CHECK(it->second == size_class(bytes), "CudaCachingAllocator::release with ", bytes,
           " bytes, but the block was allocated in size class ", it->second);
  FreeBlock block{ptr, {}};
  for (cudaStream_t stream : streams_) {
    cudaEvent_t e = take_event_locked();
    CUDA_CHECK(cudaEventRecord(e, stream));
    block.fences.push_back(e);
  }
  free_[it->second].push_back(std::move(block));
  cached_ += it->second;
  live_.erase(it);
}

void CudaCachingAllocator::set_streams(cudaStream_t compute, std::vector<cudaStream_t> others) {
  std::lock_guard<std::mutex> lock(mu_);
  compute_ = compute;
  streams_ = {compute};
  for (cudaStream_t s : others) {
    if (s != compute) streams_.push_back(s);
  }
}

cudaEvent_t CudaCachingAllocator::take_event_locked() {
  if (!event_pool_.empty()) {
    cudaEvent_t e = event_pool_.back();
    event_pool_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

void CudaCachingAllocator::order_reuse_locked(FreeBlock& block) {
  // A wait is captured when it is enqueued, so the events may be recorded again afterwards.
  for (cudaEvent_t e : block.fences) {
    CUDA_CHECK(cudaStreamWaitEvent(compute_, e, 0));
    event_pool_.push_back(e);
  }
  block.fences.clear();
}

int64_t CudaCachingAllocator::reserved_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reserved_;
}

int64_t CudaCachingAllocator::cached_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_;
}

void CudaCachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  CUDA_CHECK(cudaSetDevice(device_));
  empty_cache_locked();
}

void CudaCachingAllocator::empty_cache_locked() {
  for (auto& [size, blocks] : free_) {
    for (FreeBlock& b : blocks) {
      (void)cudaFree(b.ptr);  // synchronises the device: the fences have passed
      for (cudaEvent_t e : b.fences) event_pool_.push_back(e);
    }
    reserved_ -= size * int64_t(blocks.size());
    cached_ -= size * int64_t(blocks.size());
  }
  free_.clear();
}

// ---- Stream and Event --------------------------------------------------------------------

Stream::Stream(int priority) {
  CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, priority));
}

Stream::~Stream() {
  if (stream_ != nullptr && cudaStreamDestroy(stream_) != cudaSuccess) (void)cudaGetLastError();
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr && cudaStreamDestroy(stream_) != cudaSuccess) (void)cudaGetLastError();
    stream_ = other.stream_;
    other.stream_ = nullptr;
  }
  return *this;
}

void Stream::synchronize() const { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void Stream::wait(const Event& event) const {
  CUDA_CHECK(cudaStreamWaitEvent(stream_, event.get(), 0));
}

Event::Event(bool timing) {
  CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
}

Event::~Event() {
  if (event_ != nullptr && cudaEventDestroy(event_) != cudaSuccess) (void)cudaGetLastError();
}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr && cudaEventDestroy(event_) != cudaSuccess) (void)cudaGetLastError();
    event_ = other.event_;
    other.event_ = nullptr;
  }
  return *this;
}

void Event::record(cudaStream_t stream) { CUDA_CHECK(cudaEventRecord(event_, stream)); }

void Event::synchronize() const { CUDA_CHECK(cudaEventSynchronize(event_)); }

bool Event::query() const {
  const cudaError_t e = cudaEventQuery(event_);
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  CUDA_CHECK(e);
  return true;
}

float Event::elapsed_ms(const Event& start) const {
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
  return ms;
}

}  // namespace shardtrain
