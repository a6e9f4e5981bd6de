// mpi_comm.h — the Communicator over MPI (host memory), with real overlap.
//
// Open MPI does not progress nonblocking collectives while the caller computes, so async
// operations here run on one communication thread per process, executing a FIFO queue of
// operations in issue order (the same on every rank, by the SPMD contract). The collectives
// are rings written over point-to-point messages, which is what makes the reduction order,
// the fp32 accumulation of 16-bit data and the byte counts ours rather than the library's.
// The thread polls with a short sleep instead of spinning, so it leaves the cores to compute.
#pragma once

#include <memory>

#include "runtime/comm.h"
#include "runtime/cpu_affinity.h"

namespace shardtrain {

// MPI_Init (asking for MPI_THREAD_MULTIPLE) on construction, MPI_Finalize on destruction.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const { return rank_; }
  int world_size() const { return size_; }
  // Ranks on this node and this rank's index among them (MPI shared-memory split).
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  // The CPUs this rank may run on and its default thread count: that set divided among the
  // local ranks bound to the same one (runtime/cpu_affinity.h).
  const CpuShare& cpu_share() const { return cpu_share_; }
  // The world communicator (its communication thread starts on first use).
  Communicator& world();
  // Ends every rank of the job at once: for failures that are not collective.
  [[noreturn]] static void abort(int code);

 private:
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  CpuShare cpu_share_;
  std::unique_ptr<Communicator> world_;
};

}  // namespace shardtrain
