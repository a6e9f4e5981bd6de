// cpu_affinity.h — how many CPU threads a rank runs by default: the CPUs it may run on,
// divided among the ranks of its node that may run on exactly the same ones.
//
// The launcher decides where ranks run. Open MPI binds each rank to a core when it starts at
// most two per node and to a socket (or NUMA domain) beyond; `srun --cpu-bind` binds tasks to
// their own cores; a Slurm job is confined to its cpuset; `--bind-to none` leaves the whole
// node to every rank. The node's CPU count (std::thread::hardware_concurrency) sees none of it:
// two ranks bound to one core each on a 64-core node would each start 32 threads on their
// single core. So each rank reads its own affinity mask, the ranks of a node exchange theirs
// (MpiRuntime), and a rank's threads are its CPUs divided by the number of local ranks whose
// mask equals its own: an unbound or cpuset-confined job shares its set, ranks bound to their
// own cores or sockets keep theirs. Masks that overlap without being equal (a hand-made
// binding) count as separate sets. A container's CPU quota caps the count the same way,
// divided among the local ranks under the same quota (cpu_quota.h). train.threads overrides
// the default.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/cpu_quota.h"

namespace shardtrain {

// Bit i set: the calling thread may run on CPU i. A fixed length (kCpuMaskWords words, 16,384
// CPUs) so that ranks can exchange masks as equal-sized blocks. Empty where the OS would not
// say (then the caller falls back to the node's CPU count).
inline constexpr int kCpuMaskWords = 256;
using CpuMask = std::vector<uint64_t>;
CpuMask cpu_affinity_mask();

// The CPUs in a mask.
int cpu_count(const CpuMask& mask);

// What one rank may use: its affinity mask and its cgroup's CPU quota (runtime/cpu_quota.h).
struct RankCpus {
  CpuMask mask;
  CpuQuota quota;
};
RankCpus this_rank_cpus();

// The share of the CPUs that the rank at index `self` of its node's ranks takes by default,
// given every local rank's RankCpus.
struct CpuShare {
  int cpus = 0;           // CPUs in its mask (0: the OS would not say)
  int sharers = 1;        // local ranks, itself included, whose mask is exactly the same
  double quota_cpus = 0;  // its cgroup's CPU quota (0: none)
  int quota_sharers = 1;  // local ranks, itself included, under that same quota
  // cpus / sharers rounded down (with no mask, the node's CPU count, hardware_concurrency,
  // divided by the local ranks), and at most quota_cpus / quota_sharers rounded down; at least 1.
  int threads = 1;
};
CpuShare cpu_share(const std::vector<RankCpus>& local, int self);

}  // namespace shardtrain
