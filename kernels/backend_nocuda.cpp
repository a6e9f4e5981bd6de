// backend_nocuda.cpp — make_cuda_backend() in builds without the CUDA toolkit.
#include "kernels/backend.h"
#include "runtime/error.h"

namespace shardtrain::kernels {

std::unique_ptr<Backend> make_cuda_backend(TrackingAllocator&) {
  throw UserError(
      "train.device cuda: this shardtrain was built without CUDA (nvcc was not found when it "
      "was configured; see -DSHARDTRAIN_CUDA)");
}

void* cuda_compute_stream(Backend& backend) {
  ST_CHECK(false, "cuda_compute_stream: '", backend.name(), "' is not the cuda backend");
  return nullptr;
}

}  // namespace shardtrain::kernels
