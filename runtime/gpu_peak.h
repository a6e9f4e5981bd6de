// gpu_peak.h — the dense tensor-core peak of the GPUs shardtrain knows, by name, for MFU.
//
// MFU (model FLOPs utilisation, PaLM appendix B) = achieved model TFLOP/s per device / the
// device's peak. The peak is the datasheet's dense (no 2:4 sparsity) bf16/fp16 tensor-core
// figure, i.e. half the "with sparsity" number NVIDIA prints:
//
//   name contains   peak TFLOP/s   source
//   H100 PCIe       756            NVIDIA H100 Tensor Core GPU datasheet (1,513 with sparsity)
//   H100 NVL        835            same datasheet, H100 NVL column (1,671 with sparsity)
//   H200 NVL        835            NVIDIA H200 Tensor Core GPU datasheet (1,671 with sparsity)
//   H100            989            H100 datasheet, SXM column (1,979 with sparsity); nvidia-smi
//                                  calls it "NVIDIA H100 80GB HBM3"
//   H200            989            H200 datasheet, SXM column (1,979 with sparsity); "NVIDIA H200"
//   A100            312            NVIDIA A100 Tensor Core GPU datasheet, SXM4 and PCIe alike
//
// Matching is by whole words (case and '-' vs ' ' ignored), most specific first, so "NVIDIA
// H100 PCIe" is 756, "NVIDIA A100-SXM4-80GB" 312, and "NVIDIA RTX A1000" or "NVIDIA GH200
// 480GB" are unknown rather than mistaken for an A100 or H200. Unknown names have no peak, and
// then no MFU is reported: a wrong peak would be worse than none. Only bf16/f16 compute has a
// peak here (the CUDA attention kernels take nothing else; fp32 GEMMs would run at the
// TF32 or the CUDA-core rate depending on cuBLAS's math mode).
//
// Host-only and GPU-free: the name comes from cudaGetDeviceProperties in launch/, the table is
// tested without a GPU (tests/runtime/gpu_peak_test.cpp).
#pragma once

#include <optional>
#include <string_view>

#include "runtime/dtype.h"

namespace shardtrain {

// The dense tensor-core peak in TFLOP/s of the GPU called `device_name` (as
// cudaDeviceProp::name gives it) for `compute`; nullopt when the GPU is not in the table or
// the dtype has no tensor-core peak here (fp32, int32).
std::optional<double> gpu_dense_peak_tflops(std::string_view device_name, DType compute);

}  // namespace shardtrain
