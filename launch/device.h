// device.h — what a training run computes on (train.device): the backend, the memory its
// buffers live in, and the communicators that move that memory.
//
//   cpu       CPU backend, host memory, MPI rings.
//   cuda-emu  the kernels/cuda source run by kernels/emu, host memory, MPI rings: the GPU
//             code path (kernels/gpu_backend.inc) exercised without a GPU.
//   cuda      one GPU per rank (device = the rank's index on its node), device memory from
//             the caching allocator, kernels/cuda + cuBLASLt on a compute stream, NCCL
//             communicators (dp/tp groups by ncclCommSplit) ordered after that stream.
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"
#include "runtime/allocator.h"
#include "runtime/comm.h"
#include "runtime/mpi_comm.h"

namespace shardtrain::launch {

// Declaration order is destruction order reversed: communicators go first, then the backend
// (its workspace), the allocator, and the device memory last.
struct RunDevice {
  std::unique_ptr<RawAllocator> memory;      // device memory (cuda); null: host memory
  std::unique_ptr<TrackingAllocator> alloc;  // counts every buffer of the model and engine
  std::unique_ptr<kernels::Backend> owned;   // the cuda-emu / cuda backend
  kernels::Backend* backend = nullptr;       // owned, or the CPU singleton
  std::unique_ptr<Communicator> world;       // cuda: the NCCL world the groups split from
  std::unique_ptr<Communicator> dp, tp;      // tp: null when tp == 1
  // cuda: this rank's GPU as cudaGetDeviceProperties names it ("NVIDIA H100 80GB HBM3"), which
  // picks the MFU peak (runtime/gpu_peak.h); empty on cpu and cuda-emu, which have no peak.
  std::string gpu_name;
};

// Collective over the MPI world. World = dp x tp with the tp ranks of a group adjacent: world
// rank w is tp rank w % tp of dp rank w / tp. Throws UserError (on every rank alike) when
// `cuda` has no GPU or the build has no CUDA/NCCL.
RunDevice make_run_device(const std::string& device, MpiRuntime& mpi, int tp, bool record_timeline);

// Throws UserError when this CPU cannot run the CPU kernels of this build: the default build's
// baseline is x86-64-v3 (AVX2, FMA, ...), and an older CPU would die on its first illegal
// instruction. Every command that computes (train, sample, export) asks first. (Builds with
// -DSHARDTRAIN_NATIVE=ON run where they were built, and are not checked.)
void require_cpu_kernels();

// The cuda part, groups included (launch/device_cuda.cpp, built with CUDA and NCCL).
void make_cuda_device(RunDevice& d, MpiRuntime& mpi, int tp, bool record_timeline);

}  // namespace shardtrain::launch
