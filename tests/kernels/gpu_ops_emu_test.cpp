// gpu_ops_emu_test.cpp — the GPU op set as kernels/emu runs it (the kernels/cuda sources
// compiled by g++), against the CPU backend on the one table of cases in gpu_ops_cases.inc.
// Host memory stands in for device memory; an emulator fault (race, bad mask, out-of-bounds
// shared access) throws emu::Fault, which fails the case with its message.
#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include "kernels/emu/ops.h"

namespace shardtrain::kernels {
namespace {

template <class T>
class DeviceVec {
 public:
  explicit DeviceVec(std::vector<T> host) : data_(std::move(host)) {}
  T* ptr() { return data_.data(); }
  std::vector<T> host() const { return data_; }

 private:
  std::vector<T> data_;
};

}  // namespace
}  // namespace shardtrain::kernels

#define ST_OPS cuda_emu
#define ST_CALL(expr) EXPECT_EQ((expr), emu::Status::kOk)
#define ST_SKIP_WITHOUT_DEVICE (void)0
#include "tests/kernels/gpu_ops_cases.inc"

namespace shardtrain::kernels {
namespace {

// Shapes the tensor-core attention does not cover are refused, not silently mis-computed (on a
// GPU: cudaErrorInvalidValue; under the emulator: a Fault naming the reason).
TEST(AttentionEmu, UnsupportedHeadDimIsRefused) {
  const AttentionShape s{1, 4, 1, 32};
  std::vector<BFloat16> qkv(size_t(4 * 3 * 32)), out(size_t(4 * 32)), dqkv(qkv.size());
  std::vector<float> lse(4), ws(4);
  EXPECT_THROW(
      cuda_emu::attention_forward<BFloat16>(out.data(), lse.data(), qkv.data(), s, nullptr),
      emu::Fault);
  EXPECT_THROW(
      cuda_emu::attention_backward<BFloat16>(dqkv.data(), out.data(), qkv.data(), out.data(),
                                             lse.data(), ws.data(), s, nullptr),
      emu::Fault);
}

// The forward's tile shapes: 1 or 2 m-tiles per warp at head_dim 64, only 1 at 128 (2 would
// spill); anything else is refused.
TEST(AttentionEmu, UnsupportedTileShapeIsRefused) {
  for (const auto [d, m] : {std::pair{64, 3}, std::pair{64, -1}, std::pair{128, 2}}) {
    const AttentionShape s{1, 4, 1, d};
    std::vector<BFloat16> qkv(size_t(4 * 3 * d)), out(size_t(4 * d));
    std::vector<float> lse(4);
    EXPECT_THROW(
        cuda_emu::attention_forward<BFloat16>(out.data(), lse.data(), qkv.data(), s, nullptr, m),
        emu::Fault)
        << "head_dim " << d << ", m_tiles " << m;
  }
}

}  // namespace
}  // namespace shardtrain::kernels
