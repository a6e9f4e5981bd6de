// gpu_backend_emu_test.cpp — kernels/gpu_backend.inc's memory rules as cuda-emu runs them: the
// staged uploads and queued downloads, and which calls count as host synchronisations
// (runtime/host_sync.h). The same .inc is the cuda backend, so these are its rules too.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/backend.h"
#include "runtime/allocator.h"
#include "runtime/host_sync.h"
#include "runtime/tensor.h"

namespace shardtrain::kernels {
namespace {

struct EmuBackend : ::testing::Test {
  TrackingAllocator alloc{host_raw_allocator(), false};
  std::unique_ptr<Backend> be = make_emu_backend(alloc);
  Tensor buf = Tensor::empty({64}, DType::kF32, alloc, MemCategory::kWorkspace, "test");
  float* dev() { return buf.data<float>(); }
};

// A queued download lands in host memory at the next synchronize(), not before; the two
// downloads and the wait are one host synchronisation.
TEST_F(EmuBackend, DownloadAsyncLandsAtTheNextSynchronize) {
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 4.0f};
  be->upload(dev(), values.data(), 16);
  be->synchronize();
  float a[2] = {-7.0f, -7.0f}, b[2] = {-7.0f, -7.0f};
  const int64_t before = host_sync_count();
  be->download_async(a, dev(), 8);
  be->download_async(b, dev() + 2, 8);
  EXPECT_EQ(a[0], -7.0f) << "a queued download must not be visible before the wait";
  EXPECT_EQ(b[1], -7.0f);
  be->synchronize();
  EXPECT_EQ(host_sync_count() - before, 1);
  EXPECT_EQ(a[0], 1.5f);
  EXPECT_EQ(a[1], -2.0f);
  EXPECT_EQ(b[0], 3.25f);
  EXPECT_EQ(b[1], 4.0f);
}

// A small upload copies the caller's bytes at once (the caller may reuse its buffer) and does
// not wait for the device; download() does, once.
TEST_F(EmuBackend, StagedUploadsDoNotWait) {
  std::vector<float> host = {10.0f, 20.0f, 30.0f};
  be->upload(dev(), host.data(), 12);  // makes the staging buffer (its growth waits once)
  be->synchronize();
  const int64_t before = host_sync_count();
  be->upload(dev(), host.data(), 12);
  host.assign(3, -1.0f);  // reused at once
  be->upload(dev() + 3, host.data(), 12);
  EXPECT_EQ(host_sync_count() - before, 0);
  float back[6];
  be->download(back, dev(), 24);
  EXPECT_EQ(host_sync_count() - before, 1);
  EXPECT_EQ(back[0], 10.0f);
  EXPECT_EQ(back[2], 30.0f);
  EXPECT_EQ(back[3], -1.0f);
}

// Many queued reads outgrow the first staging buffer: it is replaced after one wait, and every
// read still lands.
TEST_F(EmuBackend, StagingGrowsWithoutLosingReads) {
  Tensor big = Tensor::empty({1 << 16}, DType::kF32, alloc, MemCategory::kWorkspace, "big");
  std::vector<float> ramp(size_t(1) << 16);
  for (size_t i = 0; i < ramp.size(); ++i) ramp[i] = float(i);
  be->upload(big.raw(), ramp.data(), int64_t(ramp.size()) * 4);
  std::vector<float> got(ramp.size(), -1.0f);
  const int64_t chunk = 4096;  // 16 KiB each, 256 KiB in all: past the 64 KiB first buffer
  for (int64_t i = 0; i < int64_t(ramp.size()); i += chunk) {
    be->download_async(got.data() + i, big.data<float>() + i, chunk * 4);
  }
  be->synchronize();
  EXPECT_EQ(got, ramp);
}

// The cuda-emu allocator poisons: fresh blocks read as NaN, so a kernel reading memory nobody
// wrote gives NaN results instead of zeros. (Released blocks are poisoned too; reading one is
// undefined behaviour, so that half is shown by the training runs, not here.)
TEST(PoisoningAllocator, FreshBlocksAreNaN) {
  RawAllocator& raw = poisoning_host_allocator();
  auto* p = static_cast<float*>(raw.allocate(64));
  EXPECT_TRUE(std::isnan(p[0]));
  EXPECT_TRUE(std::isnan(p[15]));
  p[3] = 1.0f;
  raw.release(p, 64);
  auto* q = static_cast<uint16_t*>(raw.allocate(8));
  EXPECT_EQ(q[0], 0xFFFF);  // a NaN in bf16 and f16
  raw.release(q, 8);
}

}  // namespace
}  // namespace shardtrain::kernels
