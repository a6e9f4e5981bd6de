// host_sync.h — the count of host synchronisations with a GPU, for the `host_syncs` metric.
//
// Why a counter: a GPU step is fast only while the host keeps queueing work ahead of the
// device; every point where the host waits for the device (a stream, event or device
// synchronisation, a blocking copy to the host) drains that queue. The GPU code paths call
// count_host_sync() at each such point, and the trainer reports the difference per optimizer
// step (train.cuda_emu asserts it; kernels/cuda/README.md states the bound).
//
// Who counts: kernels/gpu_backend.inc at its waits (synchronize, download, buffer growth),
// so `cuda` and `cuda-emu` count the same points of the same code; runtime/cuda's NCCL
// communicator at its own host waits (barrier, host-memory reductions, scratch growth), which
// only `cuda` has (cuda-emu's groups are MPI over host memory, which has no device to wait
// for). The CPU backend counts nothing. Process-wide and thread-safe (one atomic).
#pragma once

#include <cstdint>

namespace shardtrain {

void count_host_sync();
int64_t host_sync_count();  // since the process started

}  // namespace shardtrain
