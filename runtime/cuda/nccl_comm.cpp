// nccl_comm.cpp — NcclCommunicator (see nccl_comm.h for the contract and its differences from
// the MPI rings).
#include "runtime/cuda/nccl_comm.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "runtime/host_sync.h"
#include "runtime/mpi_comm.h"

namespace shardtrain {

std::string NcclTraits::describe(ncclResult_t status) {
  return str_cat(ncclGetErrorString(status), " (", int(status), ")");
}

ncclDataType_t nccl_dtype(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclHalf;
    case DType::kI32:
      return ncclInt32;
  }
  throw InternalError("nccl_dtype: unknown dtype");
}

namespace {

// The Work of an operation: an event recorded on the communication stream after it. wait()
// makes the compute stream wait for the event (stream order, no host wait); dropping a Work
// without wait() waits for nothing: its buffers are safe from reuse because the caching
// allocator orders every reuse after the streams that may touch a block (device.h).
class NcclWork final : public Work {
 public:
  NcclWork(Event event, ncclComm_t comm, cudaStream_t compute)
      : event_(std::move(event)), comm_(comm), compute_(compute) {}
  void wait() override {
    CUDA_CHECK(cudaStreamWaitEvent(compute_, event_.get(), 0));
    // Errors of the network side (a peer died, a timeout) surface here, not in the event; the
    // query does not block.
    ncclResult_t async_error = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(comm_, &async_error));
    NCCL_CHECK(async_error);
  }

 private:
  Event event_;
  ncclComm_t comm_;
  cudaStream_t compute_;
};

}  // namespace

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(Communicator& bootstrap, int device) {
  // 1. Rank 0 makes the id; everyone gets it over the host communicator (128 bytes = 32 words).
  static_assert(sizeof(ncclUniqueId) % 4 == 0, "ncclUniqueId is broadcast as int32 words");
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (bootstrap.rank() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  bootstrap.broadcast(&id, int64_t(sizeof id / 4), DType::kI32, 0);
  // 2. Bind this rank to its GPU and join.
  CUDA_CHECK(cudaSetDevice(device));
  ncclComm_t comm = nullptr;
  NCCL_CHECK(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()));
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(comm, device, bootstrap.rank()));
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::create_for_node(MpiRuntime& mpi) {
  const CudaDeviceCount devices = cuda_device_count();
  ST_USER_CHECK(devices.count > 0, "NCCL communicator: ", devices.reason);
  ST_USER_CHECK(mpi.local_size() <= devices.count, "NCCL communicator: ", mpi.local_size(),
                " ranks on this node but only ", devices.count,
                " GPUs (one rank per GPU: start fewer ranks per node)");
  return create(mpi.world(), mpi.local_rank());
}

NcclCommunicator::NcclCommunicator(ncclComm_t comm, int device, int world_rank)
    : comm_(comm), device_(device), world_rank_(world_rank), stream_(/*priority=*/-1) {
  // Communication gets the higher stream priority, so its kernels are scheduled ahead of
  // compute kernels and overlap stays effective.
  NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
  NCCL_CHECK(ncclCommCount(comm_, &size_));
  watchdog_ = std::thread([this] { watchdog_loop(); });
}

void NcclCommunicator::watch(const char* op) {
  Event e;
  e.record(stream_.get());
  std::lock_guard<std::mutex> lock(watch_mu_);
  watched_.push_back({std::move(e), op, std::chrono::steady_clock::now()});
}

// PyTorch's NCCL watchdog, in short: the oldest operation not yet complete on the
// communication stream, and NCCL's asynchronous error, checked every 100 ms. An operation that
// stays the oldest for comm_timeout_s (counted from its issue or from the completion of the one
// before it, whichever is later), or an error NCCL reports, ends the job: one line, then
// ncclCommAbort (which frees the GPU's kernels stuck in this communicator) and the job abort.
void NcclCommunicator::watchdog_loop() {
  (void)cudaSetDevice(device_);
  auto progress = std::chrono::steady_clock::now();
  while (true) {
    std::string failure;
    {
      std::unique_lock<std::mutex> lock(watch_mu_);
      if (watch_cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stop_; })) return;
      try {
        while (!watched_.empty() && watched_.front().done.query()) {
          watched_.pop_front();
          progress = std::chrono::steady_clock::now();
        }
      } catch (const std::exception& e) {  // the device failed (a sticky CUDA error)
        failure = str_cat("NCCL watchdog: ", watched_.front().op, ": ", e.what());
      }
      if (watched_.empty()) {
        progress = std::chrono::steady_clock::now();
      } else if (failure.empty()) {
        const Watched& w = watched_.front();
        const auto since = std::max(progress, w.issued);
        const double waited =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
        if (waited > comm_timeout_s()) {
          failure =
              str_cat("comm_timeout_s: ", w.op, " made no progress for ", comm_timeout_s(), " s");
        }
      }
    }
    ncclResult_t async_error = ncclSuccess;
    if (ncclCommGetAsyncError(comm_, &async_error) == ncclSuccess && async_error != ncclSuccess &&
        async_error != ncclInProgress) {
      failure = str_cat("NCCL watchdog: NCCL reports ", NcclTraits::describe(async_error));
    }
    if (failure.empty()) continue;
    std::fprintf(stderr,
                 "shardtrain: error: [rank %d] %s in an NCCL group of %d ranks "
                 "(this rank is %d of it), waiting on one or more of the other %d; ending the "
                 "job\n",
                 world_rank_, failure.c_str(), size_, rank_, size_ - 1);
    std::fflush(stderr);
    (void)ncclCommAbort(comm_);
    MpiRuntime::abort(kCommTimeoutExit);
  }
}

NcclCommunicator::~NcclCommunicator() {
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    stop_ = true;
  }
  watch_cv_.notify_all();
  watchdog_.join();
  // Outstanding work first; then the communicator (local, not collective) and the scratch.
  if (cudaStreamSynchronize(stream_.get()) != cudaSuccess) (void)cudaGetLastError();
  if (comm_ != nullptr) (void)ncclCommDestroy(comm_);
  if (scratch_ != nullptr && cudaFree(scratch_) != cudaSuccess) (void)cudaGetLastError();
}

void NcclCommunicator::order_after_compute() {
  compute_done_.record(compute_stream_);
  stream_.wait(compute_done_);
}

std::unique_ptr<Work> NcclCommunicator::finish(const char* op) {
  watch(op);
  Event done;
  done.record(stream_.get());
  return std::make_unique<NcclWork>(std::move(done), comm_, compute_stream_);
}

void* NcclCommunicator::scratch(int64_t bytes) {
  if (bytes > scratch_bytes_) {
    // Grows rarely (the largest bucket); the old buffer may still be read by queued work.
    if (scratch_ != nullptr) {
      count_host_sync();
      stream_.synchronize();
      CUDA_CHECK(cudaFree(scratch_));
      scratch_ = nullptr;
    }
    CUDA_CHECK(cudaMalloc(&scratch_, size_t(bytes)));
    scratch_bytes_ = bytes;
  }
  return scratch_;
}

std::unique_ptr<Work> NcclCommunicator::reduce_scatter_async(const void* send, void* recv,
                                                             int64_t count, DType dtype,
                                                             int64_t stride) {
  ST_CHECK(stride == 0 || stride >= count, "reduce_scatter: stride ", stride, " < count ", count);
  CUDA_CHECK(cudaSetDevice(device_));
  order_after_compute();
  const int64_t esz = dtype_bytes(dtype);
  const void* input = send;
  if (stride != 0 && stride != count && size_ > 1) {
    // 1. Pack the size() strided chunks into one contiguous (size(), count) block.
    void* packed = scratch(int64_t(size_) * count * esz);
    CUDA_CHECK(cudaMemcpy2DAsync(packed, size_t(count * esz), send, size_t(stride * esz),
                                 size_t(count * esz), size_t(size_), cudaMemcpyDeviceToDevice,
                                 stream_.get()));
    input = packed;
  }
  // 2. Reduce; chunk rank() of the sum lands in recv.
  NCCL_CHECK(ncclReduceScatter(input, recv, size_t(count), nccl_dtype(dtype), ncclSum, comm_,
                               stream_.get()));
  bytes_sent_ += int64_t(size_ - 1) * count * esz;
  return finish("reduce_scatter");
}

std::unique_ptr<Work> NcclCommunicator::all_gather_async(const void* send, void* recv,
                                                         int64_t count, DType dtype,
                                                         int64_t stride) {
  ST_CHECK(stride == 0 || stride >= count, "all_gather: stride ", stride, " < count ", count);
  CUDA_CHECK(cudaSetDevice(device_));
  order_after_compute();
  const int64_t esz = dtype_bytes(dtype);
  if (stride == 0 || stride == count || size_ == 1) {
    // Packed: straight into place (NCCL's in-place rule is exactly send == recv + rank*count).
    if (size_ == 1 && send != recv) {
      CUDA_CHECK(cudaMemcpyAsync(recv, send, size_t(count * esz), cudaMemcpyDeviceToDevice,
                                 stream_.get()));
    } else {
      NCCL_CHECK(ncclAllGather(send, recv, size_t(count), nccl_dtype(dtype), comm_, stream_.get()));
    }
  } else {
    // 1. Gather packed into scratch; 2. scatter the chunks to their strided places. send may
    // alias recv's own chunk: it is read by step 1 before step 2 rewrites it (stream order).
    void* packed = scratch(int64_t(size_) * count * esz);
    NCCL_CHECK(ncclAllGather(send, packed, size_t(count), nccl_dtype(dtype), comm_, stream_.get()));
    CUDA_CHECK(cudaMemcpy2DAsync(recv, size_t(stride * esz), packed, size_t(count * esz),
                                 size_t(count * esz), size_t(size_), cudaMemcpyDeviceToDevice,
                                 stream_.get()));
  }
  bytes_sent_ += int64_t(size_ - 1) * count * esz;
  return finish("all_gather");
}

std::unique_ptr<Work> NcclCommunicator::all_reduce_async(void* buf, int64_t count, DType dtype) {
  CUDA_CHECK(cudaSetDevice(device_));
  order_after_compute();
  const int64_t n = size_, shard = (count + n - 1) / n, esz = dtype_bytes(dtype);
  // reduce-scatter + all-gather over equal shards, padded to a multiple of the group size,
  // both in place (recv = full + rank * shard), as comm.h defines all_reduce.
  void* full = buf;
  if (shard * n != count) {
    full = scratch(shard * n * esz);
    CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(full) + count * esz, 0,
                               size_t((shard * n - count) * esz), stream_.get()));
    CUDA_CHECK(
        cudaMemcpyAsync(full, buf, size_t(count * esz), cudaMemcpyDeviceToDevice, stream_.get()));
  }
  if (n > 1 && count > 0) {
    char* mine = static_cast<char*>(full) + int64_t(rank_) * shard * esz;
    NCCL_CHECK(ncclReduceScatter(full, mine, size_t(shard), nccl_dtype(dtype), ncclSum, comm_,
                                 stream_.get()));
    NCCL_CHECK(ncclAllGather(mine, full, size_t(shard), nccl_dtype(dtype), comm_, stream_.get()));
    bytes_sent_ += 2 * (n - 1) * shard * esz;
  }
  if (full != buf) {
    CUDA_CHECK(
        cudaMemcpyAsync(buf, full, size_t(count * esz), cudaMemcpyDeviceToDevice, stream_.get()));
  }
  return finish("all_reduce");
}

std::unique_ptr<Work> NcclCommunicator::broadcast_async(void* buf, int64_t count, DType dtype,
                                                        int root) {
  ST_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " outside the group of ", size_);
  CUDA_CHECK(cudaSetDevice(device_));
  order_after_compute();
  NCCL_CHECK(ncclBroadcast(buf, buf, size_t(count), nccl_dtype(dtype), root, comm_, stream_.get()));
  // Ring volume: every rank but the last after the root forwards the whole buffer.
  const int pos = (rank_ - root + size_) % size_;
  if (pos < size_ - 1) bytes_sent_ += count * dtype_bytes(dtype);
  return finish("broadcast");
}

void NcclCommunicator::barrier() {
  CUDA_CHECK(cudaSetDevice(device_));
  void* one = scratch(4);
  CUDA_CHECK(cudaMemsetAsync(one, 0, 4, stream_.get()));
  NCCL_CHECK(ncclAllReduce(one, one, 1, ncclInt32, ncclSum, comm_, stream_.get()));
  host_wait("barrier");
}

void NcclCommunicator::host_wait(const char* op) {
  watch(op);
  count_host_sync();
  stream_.synchronize();
  ncclResult_t async_error = ncclSuccess;
  NCCL_CHECK(ncclCommGetAsyncError(comm_, &async_error));
  NCCL_CHECK(async_error);
}

void NcclCommunicator::all_reduce_f64(double* values, int64_t count, bool max) {
  if (count <= 0) return;
  CUDA_CHECK(cudaSetDevice(device_));
  void* dev = scratch(count * 8);
  CUDA_CHECK(
      cudaMemcpyAsync(dev, values, size_t(count * 8), cudaMemcpyHostToDevice, stream_.get()));
  NCCL_CHECK(ncclAllReduce(dev, dev, size_t(count), ncclDouble, max ? ncclMax : ncclSum, comm_,
                           stream_.get()));
  CUDA_CHECK(
      cudaMemcpyAsync(values, dev, size_t(count * 8), cudaMemcpyDeviceToHost, stream_.get()));
  host_wait("all_reduce_f64");
  const int64_t shard = (count + size_ - 1) / size_;
  bytes_sent_ += 2 * int64_t(size_ - 1) * shard * 8;
}

std::unique_ptr<Work> NcclCommunicator::all_reduce_f64_async(double* buf, int64_t count, bool max) {
  CUDA_CHECK(cudaSetDevice(device_));
  order_after_compute();
  if (count > 0) {
    NCCL_CHECK(ncclAllReduce(buf, buf, size_t(count), ncclDouble, max ? ncclMax : ncclSum, comm_,
                             stream_.get()));
    const int64_t shard = (count + size_ - 1) / size_;
    bytes_sent_ += 2 * int64_t(size_ - 1) * shard * 8;
  }
  return finish("all_reduce_f64");
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  CUDA_CHECK(cudaSetDevice(device_));
  // Collective over this communicator; a negative color (MPI_UNDEFINED style) joins no group.
  ncclComm_t sub = nullptr;
  NCCL_CHECK(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, nullptr));
  if (sub == nullptr) return nullptr;
  return std::unique_ptr<Communicator>(new NcclCommunicator(sub, device_, world_rank_));
}

}  // namespace shardtrain
