// The MFU peak table: the names nvidia-smi / cudaGetDeviceProperties give each GPU map to the
// datasheet's dense bf16/fp16 peak; look-alike names, unknown GPUs and fp32 have none.
#include "runtime/gpu_peak.h"

#include <gtest/gtest.h>

namespace shardtrain {
namespace {

TEST(GpuPeak, KnownNamesMapToTheirDatasheetPeak) {
  struct Case {
    const char* name;
    double tflops;
  };
  for (const Case& c : {Case{"NVIDIA H100 80GB HBM3", 989.0}, Case{"NVIDIA H200", 989.0},
                        Case{"NVIDIA H100 PCIe", 756.0}, Case{"NVIDIA H100 NVL", 835.0},
                        Case{"NVIDIA H200 NVL", 835.0}, Case{"NVIDIA A100-SXM4-80GB", 312.0},
                        Case{"NVIDIA A100-PCIE-40GB", 312.0}, Case{"NVIDIA A100 80GB PCIe", 312.0},
                        Case{"nvidia h100 pcie", 756.0}}) {
    for (DType t : {DType::kBF16, DType::kF16}) {
      const auto peak = gpu_dense_peak_tflops(c.name, t);
      ASSERT_TRUE(peak.has_value()) << c.name << " " << dtype_name(t);
      EXPECT_EQ(*peak, c.tflops) << c.name << " " << dtype_name(t);
    }
  }
}

TEST(GpuPeak, UnknownAndLookAlikeNamesHaveNone) {
  for (const char* name : {"", "NVIDIA GeForce RTX 4090", "NVIDIA RTX A1000", "NVIDIA GH200 480GB",
                           "NVIDIA H20", "Tesla V100-SXM2-16GB", "cpu", "cuda-emu", "H1000"}) {
    EXPECT_FALSE(gpu_dense_peak_tflops(name, DType::kBF16).has_value()) << name;
  }
}

TEST(GpuPeak, Fp32HasNone) {
  EXPECT_FALSE(gpu_dense_peak_tflops("NVIDIA H100 80GB HBM3", DType::kF32).has_value());
  EXPECT_FALSE(gpu_dense_peak_tflops("NVIDIA A100-SXM4-80GB", DType::kF32).has_value());
}

}  // namespace
}  // namespace shardtrain
