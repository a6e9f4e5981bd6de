#include "launch/device.h"

#include "kernels/gemm.h"
#include "runtime/cpu_features.h"
#include "runtime/error.h"

namespace shardtrain::launch {

RunDevice make_run_device(const std::string& device, MpiRuntime& mpi, int tp,
                          bool record_timeline) {
  RunDevice d;
  const int w = mpi.world_rank();
  if (device == "cuda") {
    make_cuda_device(d, mpi, tp, record_timeline);
    return d;
  }
  d.alloc = std::make_unique<TrackingAllocator>(
      device == "cuda-emu" ? poisoning_host_allocator() : host_raw_allocator(), record_timeline);
  if (device == "cuda-emu") {
    d.owned = kernels::make_emu_backend(*d.alloc);
    d.backend = d.owned.get();
  } else {
    d.backend = &kernels::cpu_backend();
    for (int i = 0; i < kNumMemCategories; ++i) {
      const auto c = static_cast<MemCategory>(i);
      d.alloc->set_start_offset(c, kernels::gemm_host_start_offset(c));
    }
  }
  d.dp = mpi.world().split(w % tp, w / tp);
  if (tp > 1) d.tp = mpi.world().split(w / tp, w % tp);
  return d;
}

void require_cpu_kernels() {
#if defined(SHARDTRAIN_REQUIRE_X86_64_V3)
  const std::string missing = missing_x86_64_v3_features();
  if (!missing.empty()) {
    throw UserError(
        str_cat("this CPU (", cpu_features().model, ") lacks ", missing,
                ", which shardtrain's CPU kernels need (x86-64-v3); build it on this machine "
                "with -DSHARDTRAIN_NATIVE=ON"));
  }
#endif
}

#if !defined(SHARDTRAIN_GPU_TRAINING)
void make_cuda_device(RunDevice&, MpiRuntime&, int, bool) {
  throw UserError(
      "train.device cuda: this shardtrain was built without CUDA and NCCL (both must be found "
      "when it is configured; see -DSHARDTRAIN_CUDA)");
}
#endif

}  // namespace shardtrain::launch
