// device_test.cpp — runtime/cuda/device.h: the probe, CUDA_CHECK, the caching allocator under
// TrackingAllocator, streams and events. Label `gpu`, built whenever nvcc is found.
// The probe and error-path tests run everywhere and pass both with and without a GPU: on the
// machines here cudaGetDeviceCount fails with 35 (insufficient driver) or 100 (no device) and
// the probe must turn that into "0 devices" with a readable reason. Tests that need device
// memory GTEST_SKIP() with that reason.
#include "runtime/cuda/device.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/allocator.h"
#include "tests/gpu_skip.h"

namespace shardtrain {
namespace {

const CudaDeviceCount& probe() {
  static const CudaDeviceCount p = cuda_device_count();
  return p;
}

#define SKIP_WITHOUT_DEVICE \
  if (probe().count == 0) ST_GPU_UNAVAILABLE(probe().reason)

TEST(CudaDeviceProbe, ReportsDevicesOrAReadableReason) {
  const CudaDeviceCount p = cuda_device_count();
  if (p.count > 0) {
    EXPECT_EQ(p.error, 0);
    EXPECT_TRUE(p.reason.empty());
    return;
  }
  // No device: never a crash, an error number and name, and a sentence that names both.
  if (p.error == 0) {
    EXPECT_NE(p.reason.find("0 devices"), std::string::npos) << p.reason;
    return;
  }
  EXPECT_TRUE(p.error == int(cudaErrorInsufficientDriver) || p.error == int(cudaErrorNoDevice))
      << "unexpected error " << p.error << ": " << p.reason;
  EXPECT_EQ(p.error_name.rfind("cudaError", 0), 0u) << p.error_name;
  EXPECT_NE(p.reason.find(std::to_string(p.error)), std::string::npos) << p.reason;
  EXPECT_NE(p.reason.find(p.error_name), std::string::npos) << p.reason;
  // (No check that the error was cleared: without a driver the runtime fails to initialise
  // and every later call reports the same error again, which is its state, not a leftover.)
}

TEST(CudaDeviceProbe, RepeatedProbesAgree) {
  const CudaDeviceCount a = cuda_device_count(), b = cuda_device_count();
  EXPECT_EQ(a.count, b.count);
  EXPECT_EQ(a.error, b.error);
}

TEST(CudaCheck, ThrowsInternalErrorNamingTheCallAndTheError) {
  // An invalid device ordinal fails with or without a GPU (without: the driver error).
  try {
    CUDA_CHECK(cudaSetDevice(probe().count + 1000));
    FAIL() << "cudaSetDevice of a nonexistent device succeeded";
  } catch (const InternalError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("CUDA check failed: cudaSetDevice"), std::string::npos) << msg;
    EXPECT_NE(msg.find("device_test.cpp"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cudaError"), std::string::npos) << msg;
  }
  // Cleared after reporting. Only meaningful with a driver: without one every runtime call,
  // cudaPeekAtLastError included, reports the failed initialisation.
  if (probe().count > 0) {
    EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess);
  }
}

TEST(CudaCachingAllocator, SizeClasses) {
  using A = CudaCachingAllocator;
  EXPECT_EQ(A::size_class(0), 512);
  EXPECT_EQ(A::size_class(1), 512);
  EXPECT_EQ(A::size_class(512), 512);
  EXPECT_EQ(A::size_class(513), 1024);
  EXPECT_EQ(A::size_class((1 << 20) - 1), 1 << 20);
  EXPECT_EQ(A::size_class(1 << 20), 2 << 20);
  EXPECT_EQ(A::size_class((2 << 20) + 1), 4 << 20);
  for (int64_t b : {1, 100, 4096, 999999, 3000000, 123456789}) {
    EXPECT_GE(A::size_class(b), b);
    EXPECT_EQ(A::size_class(b) % 256, 0) << b;  // the alignment promise holds for every class
  }
}

TEST(CudaCachingAllocator, ConstructionWithoutADeviceIsAnError) {
  if (probe().count > 0) GTEST_SKIP() << "a device exists";
  EXPECT_THROW(CudaCachingAllocator alloc, InternalError);
}

TEST(CudaCachingAllocator, RoundTripsThroughTrackingAllocator) {
  SKIP_WITHOUT_DEVICE;
  CudaCachingAllocator raw;
  {
    TrackingAllocator tracking(raw);
    std::vector<float> host(1000), back(1000);
    for (size_t i = 0; i < host.size(); ++i) host[i] = float(i) * 0.5f;
    auto s = tracking.allocate(int64_t(host.size() * 4), MemCategory::kParams, "w");
    EXPECT_EQ(reinterpret_cast<uintptr_t>(s->data()) % 256, 0u);
    ASSERT_EQ(cudaMemcpy(s->data(), host.data(), host.size() * 4, cudaMemcpyHostToDevice),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(back.data(), s->data(), back.size() * 4, cudaMemcpyDeviceToHost),
              cudaSuccess);
    EXPECT_EQ(host, back);
    EXPECT_EQ(tracking.stats().live[int(MemCategory::kParams)], 4000);
    void* first = s->data();
    s.reset();
    EXPECT_EQ(raw.cached_bytes(), 4096);  // 4000 bytes -> the 4096-byte class, cached
    // The same class comes back from the cache; another class is a new block.
    auto again = tracking.allocate(3900, MemCategory::kGrads, "g");
    EXPECT_EQ(again->data(), first);
    EXPECT_EQ(raw.cached_bytes(), 0);
    auto big = tracking.allocate(3 << 20, MemCategory::kActivations, "a");
    EXPECT_EQ(raw.reserved_bytes(), 4096 + (4 << 20));
    auto empty = tracking.allocate(0, MemCategory::kWorkspace, "z");
    EXPECT_NE(empty->data(), nullptr);
  }
  raw.empty_cache();
  EXPECT_EQ(raw.cached_bytes(), 0);
  EXPECT_EQ(raw.reserved_bytes(), 0);
}

// Stream-ordered reuse: a block released while another registered stream still has work on it
// queued is handed out again (the same block) only after that work, so a write on the compute
// stream lands last. Without the fences the compute stream's one memset would overtake the
// fifty queued on the other stream, and the block would end as 1s.
TEST(CudaCachingAllocator, ReuseIsOrderedAfterEveryRegisteredStream) {
  SKIP_WITHOUT_DEVICE;
  CudaCachingAllocator raw;
  Stream compute, comm(-1);
  raw.set_streams(compute.get(), {comm.get()});
  const int64_t bytes = int64_t(64) << 20;
  void* a = raw.allocate(bytes);
  for (int i = 0; i < 50; ++i) {
    ASSERT_EQ(cudaMemsetAsync(a, i % 2 == 1 ? 1 : 3, size_t(bytes), comm.get()), cudaSuccess);
  }
  raw.release(a, bytes);
  void* b = raw.allocate(bytes);
  ASSERT_EQ(b, a);
  ASSERT_EQ(cudaMemsetAsync(b, 2, size_t(bytes), compute.get()), cudaSuccess);
  compute.synchronize();
  comm.synchronize();
  unsigned char first = 0, last = 0;
  ASSERT_EQ(cudaMemcpy(&first, b, 1, cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(&last, static_cast<char*>(b) + bytes - 1, 1, cudaMemcpyDeviceToHost),
            cudaSuccess);
  EXPECT_EQ(first, 2);
  EXPECT_EQ(last, 2);
  raw.release(b, bytes);
}

TEST(CudaCachingAllocator, ReleaseOfAForeignPointerIsAnInvariantFailure) {
  SKIP_WITHOUT_DEVICE;
  CudaCachingAllocator raw;
  int x = 0;
  EXPECT_THROW(raw.release(&x, 4), InternalError);
}

// More than any GPU has: a user error naming the device and the bytes asked for (exit 2 in
// train), and the allocator stays usable (the sticky error is cleared).
TEST(CudaCachingAllocator, OutOfMemoryIsAUserErrorAndRecoverable) {
  SKIP_WITHOUT_DEVICE;
  CudaCachingAllocator raw;
  const int64_t huge = int64_t(1) << 50;  // 1 PiB
  try {
    raw.allocate(huge);
    FAIL() << "a 1 PiB allocation succeeded";
  } catch (const OutOfMemoryError& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(huge) + " bytes"), std::string::npos)
        << e.what();
  }
  void* p = raw.allocate(1 << 20);
  EXPECT_NE(p, nullptr);
  raw.release(p, 1 << 20);
}

TEST(CudaStreamEvent, OrderAndTiming) {
  SKIP_WITHOUT_DEVICE;
  Stream producer, consumer(-1);
  Event ready(/*timing=*/true), start(/*timing=*/true);
  void* buf = nullptr;
  ASSERT_EQ(cudaMalloc(&buf, 1 << 20), cudaSuccess);
  start.record(producer.get());
  ASSERT_EQ(cudaMemsetAsync(buf, 7, 1 << 20, producer.get()), cudaSuccess);
  ready.record(producer.get());
  consumer.wait(ready);  // the copy below sees the memset
  std::vector<unsigned char> host(1 << 20);
  ASSERT_EQ(cudaMemcpyAsync(host.data(), buf, host.size(), cudaMemcpyDeviceToHost, consumer.get()),
            cudaSuccess);
  consumer.synchronize();
  EXPECT_TRUE(ready.query());
  EXPECT_GE(ready.elapsed_ms(start), 0.0f);
  EXPECT_EQ(host[0], 7);
  EXPECT_EQ(host.back(), 7);
  Stream moved = std::move(producer);
  EXPECT_NE(moved.get(), nullptr);
  EXPECT_EQ(producer.get(), nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state
  ASSERT_EQ(cudaFree(buf), cudaSuccess);
}

}  // namespace
}  // namespace shardtrain
