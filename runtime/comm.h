// comm.h — the Communicator interface: collectives over a group of ranks.
//
// Contract (MPI implementation here; NCCL, [cuda], fits the same shape):
//  - Every rank of the group issues the same collectives in the same order (SPMD). Async
//    calls return a Work handle at once; the operation runs in the background, in issue
//    order, and the buffers belong to it until wait() returns.
//  - all_reduce is *defined* as reduce_scatter followed by all_gather over equal shards
//    (count padded up to a multiple of the group size inside), so a gradient reduced by
//    all_reduce is bitwise the gradient ZeRO gets by reduce_scatter + all_gather.
//  - Reductions are deterministic for a fixed group size: each shard is summed in a fixed
//    ring order. 16-bit data is summed in fp32 and rounded once per hop.
//  - Every call counts the bytes this rank sends (bytes_sent()), for benchmarks and reports.
// Not promised: any particular algorithm beyond the ring, or progress without a wait().
#pragma once

#include <cstdint>
#include <memory>

#include "runtime/dtype.h"

namespace shardtrain {

// The collective watchdog (parallel.comm_timeout_s, default 600 s): an operation of any
// communicator that makes no progress for this long ends the job. The waiting rank prints one
// line, `shardtrain: error: [rank R] comm_timeout_s ...`, naming the operation, its group (world
// ranks) and the peers it was waiting on, then aborts the job (exit code kCommTimeoutExit; the
// process ends itself if the abort cannot reach the launcher). Process-wide; set once the
// config is read.
void set_comm_timeout_s(double seconds);
double comm_timeout_s();
constexpr int kCommTimeoutExit = 3;

class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;  // rethrows a failure of the operation
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: buf (count) becomes the elementwise sum over the group.
  virtual std::unique_ptr<Work> all_reduce_async(void* buf, int64_t count, DType dtype) = 0;
  // send: this rank's contribution, size() chunks of count elements, chunk i starting
  // i * stride elements in (stride 0 means count: packed); recv (count): chunk rank() of the
  // sum. A stride lets a large shard be reduced in pieces (buckets) without changing any
  // element's reduction order: piece j of every chunk is one call.
  virtual std::unique_ptr<Work> reduce_scatter_async(const void* send, void* recv, int64_t count,
                                                     DType dtype, int64_t stride = 0) = 0;
  // send (count): this rank's chunk; recv: every rank's chunk in rank order, chunk i at
  // i * stride elements (0: packed). send may alias recv + rank() * stride.
  virtual std::unique_ptr<Work> all_gather_async(const void* send, void* recv, int64_t count,
                                                 DType dtype, int64_t stride = 0) = 0;
  // buf (count) takes root's values.
  virtual std::unique_ptr<Work> broadcast_async(void* buf, int64_t count, DType dtype,
                                                int root) = 0;
  virtual void barrier() = 0;
  // Small reductions of doubles (losses, norms, flags): sum or max, in place, in host memory;
  // the host waits for the result.
  virtual void all_reduce_f64(double* values, int64_t count, bool max) = 0;
  // The same reduction (same order, same bits) on doubles in the memory this communicator moves
  // (host memory for MPI, the GPU's for NCCL), asynchronous like the other collectives: a step's
  // statistics are reduced where they were computed and read back once.
  virtual std::unique_ptr<Work> all_reduce_f64_async(double* buf, int64_t count, bool max) = 0;

  // A sub-group: ranks with the same color, ordered by key (MPI_Comm_split semantics).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  virtual int64_t bytes_sent() const = 0;

  // Blocking forms.
  void all_reduce(void* buf, int64_t count, DType dtype) {
    all_reduce_async(buf, count, dtype)->wait();
  }
  void reduce_scatter(const void* send, void* recv, int64_t count, DType dtype,
                      int64_t stride = 0) {
    reduce_scatter_async(send, recv, count, dtype, stride)->wait();
  }
  void all_gather(const void* send, void* recv, int64_t count, DType dtype, int64_t stride = 0) {
    all_gather_async(send, recv, count, dtype, stride)->wait();
  }
  void broadcast(void* buf, int64_t count, DType dtype, int root) {
    broadcast_async(buf, count, dtype, root)->wait();
  }
};

}  // namespace shardtrain
