// nccl_comm.h — the Communicator (runtime/comm.h) over NCCL, for device memory.
//
// Why NCCL beside the MPI rings: on GPUs the collectives must read and write device memory
// over NVLink/InfiniBand without a host copy, which only NCCL does well. The shape is the
// MPI communicator's: SPMD, async calls returning Work, sub-groups by split, bytes counted.
// Each communicator owns one communication stream (its "communication thread"): every
// operation is issued on it in call order, after the stream waits for the work already on
// the caller's compute stream (set_compute_stream; default: the legacy default stream), so
// gradients produced by a kernel are complete before NCCL reads them. The Work is an event
// recorded after the operation; wait() makes the compute stream wait for it
// (cudaStreamWaitEvent: the host does not wait) and checks ncclCommGetAsyncError, so whatever
// the compute stream does next, including the backend's copies to the host, sees the result.
// A Work dropped unwaited orders nothing. Sub-groups get their own stream, so a
// tensor-parallel all-reduce is never queued behind a data-parallel reduction.
//
// Contract, as comm.h, with these differences from the MPI implementation:
//  - Buffers passed to the collectives are device memory of this rank's GPU (one rank per
//    GPU: device = local rank on the node). all_reduce_f64 alone takes host memory, as in
//    comm.h (set-up agreements, checkpoint flags), copies it through the device and waits.
//  - The buffers of an operation may be released (to the caching allocator) as soon as it
//    is issued: the allocator hands a block out again only in stream order after this
//    communicator's stream (CudaCachingAllocator::set_streams), which is what makes waits on
//    the compute stream, rather than the host, safe.
//  - The host waits (runtime/host_sync.h counts them) only in barrier(), all_reduce_f64 and
//    when the scratch buffer grows.
//  - all_reduce is still reduce_scatter + all_gather over equal (padded) shards, issued as
//    ncclReduceScatter + ncclAllGather (not ncclAllReduce, whose tree/NVLS algorithms would
//    sum in another order), so ZeRO's bitwise stage equivalence holds within NCCL.
//  - The summation order is NCCL's own (its ring, its channels, its protocol), fixed for a
//    given NCCL version, topology and group size, but not the MPI rings' order: results are
//    bitwise reproducible run to run, and across ZeRO stages, only within one implementation.
//    16-bit data (ncclBfloat16, ncclHalf) is summed as NCCL sums it (fp32 inside its kernels,
//    rounded per hop on the wire).
//  - Strided reduce_scatter / all_gather pieces are packed into (or unpacked from) a
//    contiguous device scratch buffer with cudaMemcpy2DAsync: NCCL has no stride.
//  - bytes_sent() counts the ring volume: (n-1) x chunk bytes for reduce_scatter and
//    all_gather, twice the padded shard's for all_reduce, count bytes for every broadcast rank
//    but the last in ring order from the root — the MPI communicator's numbers — whatever
//    algorithm NCCL picks.
//  - barrier() is a one-element all-reduce waited on by the host.
//  - all_reduce_f64_async is one ncclAllReduce of ncclDouble (sum or max): for two ranks the
//    same bits as the MPI communicator's rank-order sum; for more, NCCL's order.
//  - The watchdog (parallel.comm_timeout_s) is a thread per communicator that polls the oldest
//    unfinished operation's event and ncclCommGetAsyncError; it names the operation and the
//    group's size (NCCL does not say which peer is missing), calls ncclCommAbort, then ends
//    the job.
// Not promised: progress of a Work before wait() (it usually runs), use from several host
// threads at once (one thread per communicator, as with MPI), Works outliving their
// communicator (wait for them first: wait() asks the NCCL communicator for async errors).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "runtime/comm.h"
#include "runtime/cuda/device.h"
#include "runtime/error.h"

namespace shardtrain {

class MpiRuntime;

struct NcclTraits {
  static constexpr const char* kName = "NCCL";
  static bool ok(ncclResult_t status) { return status == ncclSuccess; }
  static std::string describe(ncclResult_t status);
};
#define NCCL_CHECK(expr) ST_CHECK_STATUS(::shardtrain::NcclTraits, expr)

ncclDataType_t nccl_dtype(DType dtype);

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap` (host communicator, usually MPI world): rank 0 creates the
  // NCCL unique id and broadcasts it (as 32 kI32 words); every rank selects `device` and joins.
  // The NCCL rank equals bootstrap.rank().
  static std::unique_ptr<NcclCommunicator> create(Communicator& bootstrap, int device);
  // The usual layout: MPI world as bootstrap, device = the rank's index on its node. Throws
  // UserError when a node runs more ranks than it has GPUs.
  static std::unique_ptr<NcclCommunicator> create_for_node(MpiRuntime& mpi);

  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const { return device_; }
  int64_t bytes_sent() const override { return bytes_sent_.load(); }

  // Operations issued after this call wait for the work on `stream` issued before each of them.
  void set_compute_stream(cudaStream_t stream) { compute_stream_ = stream; }
  cudaStream_t comm_stream() const { return stream_.get(); }

  std::unique_ptr<Work> all_reduce_async(void* buf, int64_t count, DType dtype) override;
  std::unique_ptr<Work> reduce_scatter_async(const void* send, void* recv, int64_t count,
                                             DType dtype, int64_t stride = 0) override;
  std::unique_ptr<Work> all_gather_async(const void* send, void* recv, int64_t count, DType dtype,
                                         int64_t stride = 0) override;
  std::unique_ptr<Work> broadcast_async(void* buf, int64_t count, DType dtype, int root) override;
  void barrier() override;
  void all_reduce_f64(double* values, int64_t count, bool max) override;
  std::unique_ptr<Work> all_reduce_f64_async(double* buf, int64_t count, bool max) override;
  std::unique_ptr<Communicator> split(int color, int key) override;

 private:
  NcclCommunicator(ncclComm_t comm, int device, int world_rank);
  // Makes the communication stream wait for the compute stream's work so far.
  void order_after_compute();
  // Records the Work's event on the communication stream (and the watchdog's for `op`).
  std::unique_ptr<Work> finish(const char* op);
  void host_wait(const char* op);  // the host waits for the communication stream, then errors
  // The watchdog (comm.h, parallel.comm_timeout_s): `op`, just issued, is watched until done.
  void watch(const char* op);
  void watchdog_loop();
  // Device scratch of at least `bytes`, used only by work on the communication stream.
  void* scratch(int64_t bytes);

  ncclComm_t comm_ = nullptr;
  int device_ = 0, rank_ = 0, size_ = 1, world_rank_ = 0;
  Stream stream_;
  Event compute_done_;
  cudaStream_t compute_stream_ = nullptr;
  void* scratch_ = nullptr;
  int64_t scratch_bytes_ = 0;
  std::atomic<int64_t> bytes_sent_{0};
  struct Watched {
    Event done;
    const char* op;
    std::chrono::steady_clock::time_point issued;
  };
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  std::deque<Watched> watched_;  // issued, not yet seen complete, oldest first
  bool stop_ = false;
  std::thread watchdog_;  // last: starts after the members it uses exist
};

}  // namespace shardtrain
