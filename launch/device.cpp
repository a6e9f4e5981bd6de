#include "launch/device.h"

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
  d.alloc = std::make_unique<TrackingAllocator>(host_raw_allocator(), record_timeline);
  if (device == "cuda-emu") {
    d.owned = kernels::make_emu_backend(*d.alloc);
    d.backend = d.owned.get();
  } else {
    d.backend = &kernels::cpu_backend();
  }
  d.dp = mpi.world().split(w % tp, w / tp);
  if (tp > 1) d.tp = mpi.world().split(w / tp, w % tp);
  return d;
}

#if !defined(SHARDTRAIN_GPU_TRAINING)
void make_cuda_device(RunDevice&, MpiRuntime&, int, bool) {
  throw UserError(
      "train.device cuda: this shardtrain was built without CUDA and NCCL (both must be found "
      "when it is configured; see -DSHARDTRAIN_CUDA)");
}
#endif

}  // namespace shardtrain::launch
