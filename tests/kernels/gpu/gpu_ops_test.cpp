// gpu_ops_test.cpp — the GPU op set on a real GPU (namespace cuda, device memory), against the
// CPU backend on the same table of cases the emulator runs (tests/kernels/gpu_ops_cases.inc).
// Built only when nvcc is found (SHARDTRAIN_HAVE_CUDA), labelled `gpu`. Without a usable GPU
// every case GTEST_SKIP()s (fails with SHARDTRAIN_REQUIRE_GPU=1) with the reason:
// cudaGetDeviceCount's error (35, insufficient driver, or 100, no device, on the machines here) is
// detected, reported and cleared, never treated as a crash.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/cuda/ops.h"
#include "tests/gpu_skip.h"

namespace shardtrain::kernels {
namespace {

// Why this process cannot run CUDA kernels, or "" if it can. Asked once.
const std::string& device_unavailable_reason() {
  static const std::string reason = [] {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // clear the (sticky) error after reporting it
      return "no usable CUDA device: cudaGetDeviceCount returned error " + std::to_string(int(e)) +
             " (" + cudaGetErrorName(e) + ": " + cudaGetErrorString(e) + ")";
    }
    if (count == 0) return std::string("no CUDA device: cudaGetDeviceCount returned 0 devices");
    return std::string();
  }();
  return reason;
}

// A device buffer initialised from host data; host() copies it back (synchronising).
template <class T>
class DeviceVec {
 public:
  explicit DeviceVec(const std::vector<T>& host) : n_(host.size()) {
    EXPECT_EQ(cudaMalloc(&ptr_, bytes()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(ptr_, host.data(), bytes(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceVec() { cudaFree(ptr_); }
  DeviceVec(const DeviceVec&) = delete;
  DeviceVec& operator=(const DeviceVec&) = delete;
  T* ptr() { return static_cast<T*>(ptr_); }
  std::vector<T> host() const {
    std::vector<T> out(n_);
    EXPECT_EQ(cudaMemcpy(out.data(), ptr_, bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }

 private:
  size_t bytes() const { return (n_ == 0 ? 1 : n_) * sizeof(T); }
  void* ptr_ = nullptr;
  size_t n_;
};

}  // namespace
}  // namespace shardtrain::kernels

#define ST_OPS cuda
#define ST_CHECK_RERUN_BITS 1
#define ST_CALL(expr)                                \
  do {                                               \
    ASSERT_EQ((expr), cudaSuccess);                  \
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess); \
  } while (0)
#define ST_SKIP_WITHOUT_DEVICE \
  if (!device_unavailable_reason().empty()) ST_GPU_UNAVAILABLE(device_unavailable_reason())
#include "tests/kernels/gpu_ops_cases.inc"
