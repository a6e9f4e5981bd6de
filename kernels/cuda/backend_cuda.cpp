// backend_cuda.cpp — the `cuda` Backend: kernels/gpu_backend.inc with the kernels/cuda op set
// compiled by nvcc, device memory, cuBLASLt GEMMs (kernels/cuda/gemm_lt.h) and one compute
// stream the backend owns. Host code (g++ against the CUDA headers); nothing here runs
// without a GPU, and the same .inc runs under `cuda-emu` in CI.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "kernels/backend_dispatch.h"
#include "kernels/cuda/gemm_lt.h"
#include "kernels/cuda/ops.h"
#include "runtime/cuda/device.h"
#include "runtime/error.h"
#include "runtime/host_sync.h"
#include "runtime/tensor.h"

namespace shardtrain::kernels {
namespace {

namespace gpu = cuda;

struct World {
  static constexpr const char* kName = "cuda";
  // Shared so World stays movable; the stream and the cuBLASLt handle live as long as the
  // backend.
  std::shared_ptr<Stream> compute = std::make_shared<Stream>();
  std::shared_ptr<cuda::GemmLt> lt = std::make_shared<cuda::GemmLt>();

  gpu::Stream stream() const { return compute->get(); }
  void check(gpu::Status status, const char* op) const {
    ST_CHECK(status == cudaSuccess, op, ": ", CudaTraits::describe(status));
  }
  void copy(void* dst, const void* src, int64_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDeviceToDevice, stream()));
  }
  void upload(void* dst, const void* host, int64_t bytes) {
    // Pageable host memory: the copy is staged by the driver before the call returns, so the
    // caller may reuse `host` at once.
    CUDA_CHECK(cudaMemcpyAsync(dst, host, size_t(bytes), cudaMemcpyHostToDevice, stream()));
  }
  void download(void* host, const void* src, int64_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(host, src, size_t(bytes), cudaMemcpyDeviceToHost, stream()));
    synchronize();
  }
  void zero(void* dst, int64_t bytes) {
    CUDA_CHECK(cudaMemsetAsync(dst, 0, size_t(bytes), stream()));
  }
  void synchronize() { compute->synchronize(); }
  void copy_async(void* dst, const void* src, int64_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDefault, stream()));
  }
  void* host_alloc(int64_t bytes) {  // pinned, so that copies from and to it are asynchronous
    void* p = nullptr;
    CUDA_CHECK(cudaHostAlloc(&p, size_t(bytes), cudaHostAllocDefault));
    return p;
  }
  void host_free(void* p) { CUDA_CHECK(cudaFreeHost(p)); }
  void gemm(const GemmDesc& d, const void* a, const void* b, void* c, const void* bias) {
    lt->gemm(d, a, b, c, bias, stream());
  }
};

#include "kernels/gpu_backend.inc"

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(TrackingAllocator& alloc) {
  const CudaDeviceCount probe = cuda_device_count();
  if (probe.count == 0) {
    throw UserError(str_cat("train.device cuda: no GPU: ", probe.reason,
                            " (use 'cpu', or 'cuda-emu' to run the CUDA kernels on the CPU)"));
  }
  return std::make_unique<GpuBackend>(World{}, alloc);
}

void* cuda_compute_stream(Backend& backend) {
  auto* gpu = dynamic_cast<GpuBackend*>(&backend);
  ST_CHECK(gpu != nullptr, "cuda_compute_stream: '", backend.name(), "' is not the cuda backend");
  return gpu->world().stream();
}

}  // namespace shardtrain::kernels
