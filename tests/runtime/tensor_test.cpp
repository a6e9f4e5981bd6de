#include "runtime/tensor.h"

#include <gtest/gtest.h>

#include "runtime/error.h"

namespace shardtrain {
namespace {

TEST(Tensor, ShapeAndBytes) {
  TrackingAllocator alloc;
  Tensor t = Tensor::zeros({2, 3, 5}, DType::kBF16, alloc, MemCategory::kActivations, "x");
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.size(1), 3);
  EXPECT_EQ(t.numel(), 30);
  EXPECT_EQ(t.bytes(), 60);
  EXPECT_EQ(t.data<BFloat16>()[29].bits, 0);
  EXPECT_EQ(shape_str(t.shape()), "[2, 3, 5]");
}

TEST(Tensor, MisuseIsAnInternalError) {
  TrackingAllocator alloc;
  Tensor t = Tensor::empty({4}, DType::kF32, alloc, MemCategory::kWorkspace, "t");
  EXPECT_THROW(t.data<Half>(), InternalError);
  EXPECT_THROW(t.view(2, {3}), InternalError);
  EXPECT_THROW(t.reshape({5}), InternalError);
  EXPECT_THROW(t.size(1), InternalError);
}

}  // namespace
}  // namespace shardtrain
