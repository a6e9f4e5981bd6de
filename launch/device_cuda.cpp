// device_cuda.cpp — train.device cuda: one GPU per rank, NCCL groups, device memory.
// Built only where CUDA and NCCL were found (launch/CMakeLists.txt).
#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "launch/device.h"
#include "runtime/cuda/device.h"
#include "runtime/cuda/nccl_comm.h"
#include "runtime/error.h"

namespace shardtrain::launch {
namespace {

// Orders the group's operations after the compute stream, and registers its stream with the
// allocator (blocks it touches are reused only after it).
std::unique_ptr<Communicator> on_stream(std::unique_ptr<Communicator> c, void* stream,
                                        std::vector<cudaStream_t>& comm_streams) {
  auto* nccl = dynamic_cast<NcclCommunicator*>(c.get());
  ST_CHECK(nccl != nullptr, "a cuda group must be an NCCL communicator");
  nccl->set_compute_stream(static_cast<cudaStream_t>(stream));
  comm_streams.push_back(nccl->comm_stream());
  return c;
}

}  // namespace

void make_cuda_device(RunDevice& d, MpiRuntime& mpi, int tp, bool record_timeline) {
  // Every rank must know whether all ranks have a GPU before the first NCCL collective: a
  // rank without one would otherwise leave its peers waiting in the id broadcast.
  const CudaDeviceCount probe = cuda_device_count();
  double missing[2] = {probe.count > mpi.local_rank() ? -1e9 : -double(mpi.world_rank()),
                       probe.count > mpi.local_rank() ? 0.0 : 1.0};
  mpi.world().all_reduce_f64(missing, 2, /*max=*/true);
  if (missing[1] != 0) {
    if (probe.count > mpi.local_rank()) {
      throw UserError(str_cat("train.device cuda: rank ", int(-missing[0]), " has no GPU"));
    }
    throw UserError(str_cat("train.device cuda: ",
                            probe.count == 0
                                ? probe.reason
                                : str_cat("node has ", probe.count, " GPUs for ", mpi.local_size(),
                                          " ranks (one GPU per rank)"),
                            "; 'cuda-emu' runs the CUDA kernels on the CPU"));
  }
  // The kernels are compiled for sm_80 and sm_90 (mma.sync with bf16 needs Ampere or later):
  // an older GPU would fail at its first launch with "no kernel image". Agreed like the above.
  cudaDeviceProp prop{};
  const bool have_prop = cudaGetDeviceProperties(&prop, mpi.local_rank()) == cudaSuccess;
  const bool too_old = have_prop && prop.major < 8;
  double old_gpu[1] = {too_old ? double(mpi.world_rank()) : -1.0};
  mpi.world().all_reduce_f64(old_gpu, 1, /*max=*/true);
  if (old_gpu[0] >= 0) {
    throw UserError(str_cat(
        "train.device cuda: rank ", int(old_gpu[0]), "'s GPU",
        too_old ? str_cat(" (", prop.name, ", sm_", prop.major, prop.minor, ")") : std::string(),
        " is older than sm_80, the oldest shardtrain's CUDA kernels are built "
        "for; 'cuda-emu' runs them on the CPU"));
  }
  // The NCCL world selects this rank's GPU (its index on the node) before anything is
  // allocated or a stream is made.
  std::unique_ptr<NcclCommunicator> world = NcclCommunicator::create_for_node(mpi);
  auto memory = std::make_unique<CudaCachingAllocator>();
  CudaCachingAllocator& cache = *memory;
  d.memory = std::move(memory);
  d.alloc = std::make_unique<TrackingAllocator>(*d.memory, record_timeline);
  d.owned = kernels::make_cuda_backend(*d.alloc);
  d.backend = d.owned.get();
  void* stream = kernels::cuda_compute_stream(*d.backend);
  world->set_compute_stream(static_cast<cudaStream_t>(stream));
  std::vector<cudaStream_t> comm_streams = {world->comm_stream()};
  const int w = mpi.world_rank();
  d.dp = on_stream(world->split(w % tp, w / tp), stream, comm_streams);
  if (tp > 1) d.tp = on_stream(world->split(w / tp, w % tp), stream, comm_streams);
  cache.set_streams(static_cast<cudaStream_t>(stream), comm_streams);
  d.world = std::move(world);
  if (have_prop) d.gpu_name = prop.name;
}

}  // namespace shardtrain::launch
