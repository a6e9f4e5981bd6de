// backend_emu.cpp — the `cuda-emu` Backend: kernels/gpu_backend.inc with the kernels/cuda
// sources as compiled against the emulator, host memory, and the CPU backend's GEMM (the
// emulator routes GEMMs there; cuBLASLt cannot run without a GPU).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "kernels/backend_dispatch.h"
#include "kernels/emu/ops.h"
#include "runtime/error.h"
#include "runtime/host_sync.h"
#include "runtime/tensor.h"

namespace shardtrain::kernels {
namespace {

namespace gpu = cuda_emu;

struct World {
  static constexpr const char* kName = "cuda-emu";
  gpu::Stream stream() const { return nullptr; }  // every emulated launch completes at once
  void check(gpu::Status status, const char* op) const {
    ST_CHECK(status == gpu::Status::kOk, "emulated ", op, " failed");  // faults throw
  }
  void copy(void* dst, const void* src, int64_t bytes) { std::memcpy(dst, src, size_t(bytes)); }
  void upload(void* dst, const void* host, int64_t bytes) { copy(dst, host, bytes); }
  void download(void* host, const void* src, int64_t bytes) { copy(host, src, bytes); }
  void zero(void* dst, int64_t bytes) { std::memset(dst, 0, size_t(bytes)); }
  void synchronize() {}
  void copy_async(void* dst, const void* src, int64_t bytes) { copy(dst, src, bytes); }
  void* host_alloc(int64_t bytes) {
    void* p = std::aligned_alloc(64, size_t((bytes + 63) / 64 * 64));
    ST_CHECK(p != nullptr, "staging allocation of ", bytes, " bytes failed");
    return p;
  }
  void host_free(void* p) { std::free(p); }
  void gemm(const GemmDesc& d, const void* a, const void* b, void* c, const void* bias) {
    cpu_backend().gemm(d, a, b, c, bias);
  }
};

#include "kernels/gpu_backend.inc"

}  // namespace

std::unique_ptr<Backend> make_emu_backend(TrackingAllocator& alloc) {
  return std::make_unique<GpuBackend>(World{}, alloc);
}

}  // namespace shardtrain::kernels
