#include "runtime/mpi_comm.h"

#include <mpi.h>

#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/error.h"

namespace shardtrain {
namespace {

std::atomic<double> g_comm_timeout_s{600};

// How long an abort may take to end the job before the process ends itself: MPI_Abort asks the
// launcher, which a rank cut off from the network cannot reach.
constexpr auto kAbortGrace = std::chrono::seconds(5);

// Ends the job: the launcher kills every rank it can reach; a thread ends this process if the
// request does not get through.
// A job of one process has no one to tell: it just ends (MPI_Abort would add Open MPI's
// multi-line notice to the one-line error).
[[noreturn]] void abort_job(int code) {
  int size = 0;
  if (MPI_Comm_size(MPI_COMM_WORLD, &size) == MPI_SUCCESS && size == 1) {
    std::fflush(nullptr);
    std::_Exit(code);
  }
  std::thread([code] {
    std::this_thread::sleep_for(kAbortGrace);
    std::_Exit(code);
  }).detach();
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

struct MpiTraits {
  static constexpr const char* kName = "MPI";
  static bool ok(int status) { return status == MPI_SUCCESS; }
  static std::string describe(int status) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(status, text, &len);
    return std::string(text, size_t(len));
  }
};
#define MPI_CHECK(expr) ST_CHECK_STATUS(::shardtrain::MpiTraits, expr)

// ---- The communication thread -----------------------------------------------------------

struct Op {
  std::function<void()> body;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;
};

class OpWork final : public Work {
 public:
  explicit OpWork(std::shared_ptr<Op> op) : op_(std::move(op)) {}
  ~OpWork() override {
    // A Work dropped without wait() still must not outlive its buffers' operation.
    if (op_) wait_quietly();
  }
  void wait() override {
    wait_quietly();
    std::exception_ptr e = op_->error;
    op_.reset();
    if (e) std::rethrow_exception(e);
  }

 private:
  void wait_quietly() {
    std::unique_lock<std::mutex> lock(op_->mu);
    op_->cv.wait(lock, [&] { return op_->done; });
  }
  std::shared_ptr<Op> op_;
};

// Runs operations one at a time, in submission order, on its own thread.
class CommEngine {
 public:
  CommEngine() : thread_([this] { loop(); }) {}
  ~CommEngine() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

  std::unique_ptr<Work> submit(std::function<void()> body) {
    auto op = std::make_shared<Op>();
    op->body = std::move(body);
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(op);
    }
    cv_.notify_one();
    return std::make_unique<OpWork>(op);
  }

 private:
  void loop() {
    while (true) {
      std::shared_ptr<Op> op;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        op = queue_.front();
        queue_.pop_front();
      }
      try {
        op->body();
      } catch (...) {
        op->error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(op->mu);
        op->done = true;
      }
      op->cv.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Op>> queue_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members it uses exist
};

MPI_Datatype wire_type(DType t) {
  switch (t) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kBF16:
    case DType::kF16:
      return MPI_UINT16_T;  // bit patterns; arithmetic is ours
  }
  return MPI_BYTE;
}

// out[i] = in_a[i] + in_b[i], in fp32, rounded once into the wire type.
void add_into(void* out, const void* a, const void* b, int64_t n, DType t) {
  switch (t) {
    case DType::kF32: {
      auto* o = static_cast<float*>(out);
      auto* x = static_cast<const float*>(a);
      auto* y = static_cast<const float*>(b);
      for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
      break;
    }
    case DType::kBF16: {
      auto* o = static_cast<BFloat16*>(out);
      auto* x = static_cast<const BFloat16*>(a);
      auto* y = static_cast<const BFloat16*>(b);
      for (int64_t i = 0; i < n; ++i)
        o[i] = float_to_bf16(bf16_to_float(x[i]) + bf16_to_float(y[i]));
      break;
    }
    case DType::kF16: {
      auto* o = static_cast<Half*>(out);
      auto* x = static_cast<const Half*>(a);
      auto* y = static_cast<const Half*>(b);
      for (int64_t i = 0; i < n; ++i) o[i] = float_to_f16(f16_to_float(x[i]) + f16_to_float(y[i]));
      break;
    }
    case DType::kI32: {
      auto* o = static_cast<int32_t*>(out);
      auto* x = static_cast<const int32_t*>(a);
      auto* y = static_cast<const int32_t*>(b);
      for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
      break;
    }
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::shared_ptr<CommEngine> engine)
      : comm_(comm), engine_(std::move(engine)) {
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &size_));
    // The group's members as world ranks, for the watchdog's message.
    MPI_Group group, world;
    MPI_CHECK(MPI_Comm_group(comm_, &group));
    MPI_CHECK(MPI_Comm_group(MPI_COMM_WORLD, &world));
    std::vector<int> mine(size_t(size_), 0);
    for (int i = 0; i < size_; ++i) mine[size_t(i)] = i;
    world_ranks_.resize(size_t(size_));
    MPI_CHECK(MPI_Group_translate_ranks(group, size_, mine.data(), world, world_ranks_.data()));
    MPI_CHECK(MPI_Group_free(&group));
    MPI_CHECK(MPI_Group_free(&world));
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_));
  }
  ~MpiCommunicator() override {
    if (comm_ != MPI_COMM_WORLD) {
      // Freed on the communication thread, in order after this communicator's operations.
      MPI_Comm comm = comm_;
      engine_->submit([comm]() mutable { MPI_Comm_free(&comm); })->wait();
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int64_t bytes_sent() const override { return bytes_sent_.load(); }

  std::unique_ptr<Work> reduce_scatter_async(const void* send, void* recv, int64_t count,
                                             DType dtype, int64_t stride) override {
    return engine_->submit(
        [=, this] { ring_reduce_scatter(send, recv, count, dtype, stride ? stride : count); });
  }

  std::unique_ptr<Work> all_gather_async(const void* send, void* recv, int64_t count, DType dtype,
                                         int64_t stride) override {
    return engine_->submit(
        [=, this] { ring_all_gather(send, recv, count, dtype, stride ? stride : count); });
  }

  std::unique_ptr<Work> all_reduce_async(void* buf, int64_t count, DType dtype) override {
    return engine_->submit([=, this] {
      // reduce-scatter + all-gather over equal shards, padded to a multiple of the group.
      const int64_t n = size_, shard = (count + n - 1) / n, esz = dtype_bytes(dtype);
      std::vector<char>& padded = scratch_padded_;
      std::vector<char>& mine = scratch_shard_;
      void* full = buf;
      if (shard * n != count) {
        padded.assign(size_t(shard * n * esz), 0);
        std::memcpy(padded.data(), buf, size_t(count * esz));
        full = padded.data();
      }
      mine.resize(size_t(shard * esz));
      ring_reduce_scatter(full, mine.data(), shard, dtype, shard);
      ring_all_gather(mine.data(), full, shard, dtype, shard);
      if (full != buf) std::memcpy(buf, full, size_t(count * esz));
    });
  }

  std::unique_ptr<Work> broadcast_async(void* buf, int64_t count, DType dtype, int root) override {
    return engine_->submit([=, this] {
      // A chain from the root around the ring: each rank receives once and forwards once.
      const int pos = (rank_ - root + size_) % size_;
      const int left = (rank_ - 1 + size_) % size_, right = (rank_ + 1) % size_;
      const int n = checked_count(count, dtype);
      if (pos > 0) {
        MPI_Request r;
        MPI_CHECK(MPI_Irecv(buf, n, wire_type(dtype), left, kTag, comm_, &r));
        wait("broadcast", &r, 1, {left, kNoPeer});
      }
      if (pos < size_ - 1) {
        MPI_Request r;
        MPI_CHECK(MPI_Isend(buf, n, wire_type(dtype), right, kTag, comm_, &r));
        wait("broadcast", &r, 1, {kNoPeer, right});
        bytes_sent_ += count * dtype_bytes(dtype);
      }
    });
  }

  void barrier() override {
    engine_
        ->submit([this] {
          MPI_Request r;
          MPI_CHECK(MPI_Ibarrier(comm_, &r));
          wait("barrier", &r, 1, {kAnyPeer, kAnyPeer});
        })
        ->wait();
  }

  void all_reduce_f64(double* values, int64_t count, bool max) override {
    all_reduce_f64_async(values, count, max)->wait();
  }

  std::unique_ptr<Work> all_reduce_f64_async(double* values, int64_t count, bool max) override {
    return engine_->submit([=, this] {
      // Gather everything, then reduce locally in rank order: the same order on every rank.
      std::vector<double> all(size_t(count * size_));
      MPI_Request req;
      MPI_CHECK(MPI_Iallgather(values, int(count), MPI_DOUBLE, all.data(), int(count), MPI_DOUBLE,
                               comm_, &req));
      wait("all_reduce_f64", &req, 1, {kAnyPeer, kAnyPeer});
      bytes_sent_ += count * 8 * (size_ - 1);
      for (int64_t i = 0; i < count; ++i) {
        double acc = all[size_t(i)];
        for (int r = 1; r < size_; ++r) {
          double v = all[size_t(r * count + i)];
          acc = max ? (v > acc ? v : acc) : acc + v;
        }
        values[i] = acc;
      }
    });
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    engine_
        ->submit([&] {
          MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
          MPI_CHECK(MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN));
        })
        ->wait();
    // Each group gets its own communication thread, so that a tensor-parallel all-reduce
    // is never queued behind a data-parallel gradient reduction (MPI_THREAD_MULTIPLE).
    return std::make_unique<MpiCommunicator>(sub, std::make_shared<CommEngine>());
  }

 private:
  static constexpr int kTag = 7;
  // wait()'s peers: request i receives from peers[0] (i = 0) or sends to peers[1] (i = 1);
  // kNoPeer skips a direction, kAnyPeer is a collective of the whole group.
  static constexpr int kNoPeer = -1, kAnyPeer = -2;

  // Waits for requests by polling: spinning in MPI_Waitall would take a core from compute.
  // Yield for the first polls (latency), then sleep briefly. The watchdog: no completion for
  // comm_timeout_s ends the job with one line naming op, the group and the peers still owed.
  void wait(const char* op, MPI_Request* reqs, int n, std::array<int, 2> peers) {
    const double limit = g_comm_timeout_s.load();
    const auto start = std::chrono::steady_clock::now();
    for (int polls = 0;; ++polls) {
      int flag = 0;
      MPI_CHECK(MPI_Testall(n, reqs, &flag, MPI_STATUSES_IGNORE));
      if (flag) return;
      if (polls < 64) {
        std::this_thread::yield();
        continue;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
      if (polls % 1024 == 0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > limit) {
        timed_out(op, reqs, n, peers, limit);
      }
    }
  }

  [[noreturn]] void timed_out(const char* op, MPI_Request* reqs, int n, std::array<int, 2> peers,
                              double limit) {
    std::string members, waiting;
    for (int r : world_ranks_) members += str_cat(members.empty() ? "" : ",", r);
    if (peers[0] == kAnyPeer) {
      // A library collective does not say which member it waits for: name the others.
      for (int r : world_ranks_) {
        if (r != world_rank_) waiting += str_cat(waiting.empty() ? "waiting on rank(s) " : ",", r);
      }
    } else {
      std::vector<int> role;  // request index -> direction
      for (int d = 0; d < 2; ++d) {
        if (peers[size_t(d)] != kNoPeer) role.push_back(d);
      }
      for (int i = 0; i < n; ++i) {
        int done = 0;
        MPI_Test(&reqs[i], &done, MPI_STATUS_IGNORE);
        if (done) continue;
        const int d = role[size_t(i)];
        waiting +=
            str_cat(waiting.empty() ? "waiting " : ", ", d == 0 ? "to receive from" : "to send to",
                    " rank ", world_ranks_[size_t(peers[size_t(d)])]);
      }
    }
    std::fprintf(stderr,
                 "shardtrain: error: [rank %d] comm_timeout_s: %s in the group of world ranks "
                 "{%s} made no progress for %g s, %s; ending the job\n",
                 world_rank_, op, members.c_str(), limit, waiting.c_str());
    std::fflush(stderr);
    abort_job(kCommTimeoutExit);
  }

  static int checked_count(int64_t count, DType dtype) {
    ST_CHECK(count >= 0 && count <= INT_MAX, "message of ", count, " ", dtype_name(dtype),
             " elements exceeds MPI's int count");
    return int(count);
  }

  // Ring reduce-scatter. At step s (0 .. n-2) rank r sends the partial sum of chunk
  // (r - s - 1) mod n to its right neighbour and receives the partial sum of chunk
  // (r - s - 2) mod n from its left, adds its own contribution, and passes it on. After n-1
  // steps it holds chunk r summed over all ranks in the fixed order r+1, r+2, ..., r.
  void ring_reduce_scatter(const void* send, void* recv, int64_t count, DType dtype,
                           int64_t stride) {
    const int n = size_, r = rank_;
    const int64_t esz = dtype_bytes(dtype);
    const char* own = static_cast<const char*>(send);
    if (n == 1) {
      if (recv != send) std::memmove(recv, send, size_t(count * esz));
      return;
    }
    const int c = checked_count(count, dtype);
    std::vector<char>& out = scratch_a_;
    std::vector<char>& in = scratch_b_;
    out.resize(size_t(count * esz));
    in.resize(size_t(count * esz));
    const int left = (r - 1 + n) % n, right = (r + 1) % n;
    auto chunk = [&](int i) { return own + int64_t((i % n + n) % n) * stride * esz; };
    const void* to_send = chunk(r - 1);
    for (int s = 0; s < n - 1; ++s) {
      MPI_Request reqs[2];
      MPI_CHECK(MPI_Irecv(in.data(), c, wire_type(dtype), left, kTag, comm_, &reqs[0]));
      MPI_CHECK(MPI_Isend(to_send, c, wire_type(dtype), right, kTag, comm_, &reqs[1]));
      wait("reduce_scatter", reqs, 2, {left, right});
      bytes_sent_ += count * esz;
      void* dst = (s == n - 2) ? recv : out.data();
      add_into(dst, in.data(), chunk(r - s - 2), count, dtype);
      to_send = out.data();
    }
  }

  // Ring all-gather: at step s rank r forwards chunk (r - s) mod n and receives chunk
  // (r - s - 1) mod n, straight into place.
  void ring_all_gather(const void* send, void* recv, int64_t count, DType dtype, int64_t stride) {
    const int n = size_, r = rank_;
    const int64_t esz = dtype_bytes(dtype);
    char* out = static_cast<char*>(recv);
    auto chunk = [&](int i) { return out + int64_t((i % n + n) % n) * stride * esz; };
    if (send != chunk(r)) std::memmove(chunk(r), send, size_t(count * esz));
    if (n == 1) return;
    const int c = checked_count(count, dtype);
    const int left = (r - 1 + n) % n, right = (r + 1) % n;
    for (int s = 0; s < n - 1; ++s) {
      MPI_Request reqs[2];
      MPI_CHECK(MPI_Irecv(chunk(r - s - 1), c, wire_type(dtype), left, kTag, comm_, &reqs[0]));
      MPI_CHECK(MPI_Isend(chunk(r - s), c, wire_type(dtype), right, kTag, comm_, &reqs[1]));
      wait("all_gather", reqs, 2, {left, right});
      bytes_sent_ += count * esz;
    }
  }

  MPI_Comm comm_;
  std::shared_ptr<CommEngine> engine_;
  int rank_ = 0, size_ = 1, world_rank_ = 0;
  std::vector<int> world_ranks_;        // member i's world rank
  std::atomic<int64_t> bytes_sent_{0};  // written on the communication thread only
  std::vector<char> scratch_a_, scratch_b_, scratch_padded_, scratch_shard_;
};

}  // namespace

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int provided = 0;
  MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  if (provided < MPI_THREAD_SERIALIZED) {
    throw InternalError("the MPI library does not support calls from a communication thread");
  }
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  MPI_Comm local;
  MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local));
  MPI_CHECK(MPI_Comm_rank(local, &local_rank_));
  MPI_CHECK(MPI_Comm_size(local, &local_size_));
  // Default CPU threads: this rank's affinity mask and cgroup quota among its node's
  // (cpu_affinity.h), exchanged as the mask's words, the quota in millionths of a CPU and the
  // quota's cgroup (device, inode). A rank whose OS would not tell sends an empty mask.
  RankCpus own = this_rank_cpus();
  own.mask.resize(kCpuMaskWords, 0);
  constexpr int kWords = kCpuMaskWords + 3;
  std::vector<uint64_t> mine(own.mask);
  mine.push_back(uint64_t(own.quota.cpus * 1e6));
  mine.push_back(own.quota.dev);
  mine.push_back(own.quota.ino);
  std::vector<uint64_t> gathered(static_cast<size_t>(local_size_) * kWords);
  MPI_CHECK(MPI_Allgather(mine.data(), kWords, MPI_UINT64_T, gathered.data(), kWords, MPI_UINT64_T,
                          local));
  std::vector<RankCpus> ranks(static_cast<size_t>(local_size_));
  for (int r = 0; r < local_size_; ++r) {
    const auto block = gathered.begin() + r * kWords;
    ranks[size_t(r)].mask.assign(block, block + kCpuMaskWords);
    ranks[size_t(r)].quota = {double(block[kCpuMaskWords]) / 1e6, block[kCpuMaskWords + 1],
                              block[kCpuMaskWords + 2]};
  }
  MPI_CHECK(MPI_Comm_free(&local));
  cpu_share_ = shardtrain::cpu_share(ranks, local_rank_);
}

MpiRuntime::~MpiRuntime() {
  world_.reset();
  MPI_Finalize();
}

Communicator& MpiRuntime::world() {
  if (!world_)
    world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, std::make_shared<CommEngine>());
  return *world_;
}

void MpiRuntime::abort(int code) { abort_job(code); }

void set_comm_timeout_s(double seconds) { g_comm_timeout_s.store(seconds); }
double comm_timeout_s() { return g_comm_timeout_s.load(); }

}  // namespace shardtrain
