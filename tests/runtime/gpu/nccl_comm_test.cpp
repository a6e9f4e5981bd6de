// nccl_comm_test.cpp — NcclCommunicator under mpirun (2 ranks; ctest label `gpu`), with the
// MPI tests' closed-form expectations: rank r contributes (r + 1) + (i % 3) at element i, so
// every sum is a small integer, exact in fp32, bf16 and f16, whatever order NCCL sums in.
// One GPU per rank is needed; otherwise every test GTEST_SKIP()s with the reason (here:
// cudaGetDeviceCount's error), on every rank alike, and the binary passes.
#include "runtime/cuda/nccl_comm.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "runtime/cuda/device.h"
#include "runtime/dtype.h"
#include "tests/gpu_skip.h"
#include "tests/parallel/mpi_test_main.h"

namespace shardtrain {
namespace {

using testing::g_mpi;

// Why NCCL cannot run here, or "" (asked once; the same answer on every rank of a node).
const std::string& unavailable_reason() {
  static const std::string reason = [] {
    const CudaDeviceCount d = cuda_device_count();
    if (d.count == 0) return d.reason;
    if (d.count < g_mpi->local_size()) {
      return str_cat(g_mpi->local_size(), " ranks on this node but ", d.count,
                     " GPUs: NCCL needs one GPU per rank");
    }
    return std::string();
  }();
  return reason;
}

// One communicator for all tests, made on first use and destroyed by the environment below
// while MPI and the CUDA runtime are still up (a static destructor would run after both).
std::unique_ptr<NcclCommunicator>& nccl_slot() {
  static std::unique_ptr<NcclCommunicator> comm;
  return comm;
}
NcclCommunicator& nccl() {
  if (!nccl_slot()) nccl_slot() = NcclCommunicator::create_for_node(*g_mpi);
  return *nccl_slot();
}
class NcclEnvironment final : public ::testing::Environment {
 public:
  void TearDown() override { nccl_slot().reset(); }
};

#define SKIP_WITHOUT_GPUS \
  if (!unavailable_reason().empty()) ST_GPU_UNAVAILABLE(unavailable_reason())

float contribution(int rank, int64_t i) { return float(rank + 1) + float(i % 3); }
float expected_sum(int n, int64_t i) { return float(n * (n + 1) / 2) + float(n) * float(i % 3); }

template <class S>
std::vector<S> filled(int64_t count, int rank, int64_t offset = 0) {
  std::vector<S> v(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) v[size_t(i)] = from_float<S>(contribution(rank, offset + i));
  return v;
}

// A device copy of a host vector; host() reads it back.
template <class S>
class Dev {
 public:
  explicit Dev(const std::vector<S>& h) : n_(h.size()) {
    EXPECT_EQ(cudaMalloc(&p_, bytes()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p_, h.data(), n_ * sizeof(S), cudaMemcpyHostToDevice), cudaSuccess);
  }
  explicit Dev(size_t n) : Dev(std::vector<S>(n)) {}
  ~Dev() { (void)cudaFree(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  S* get() { return static_cast<S*>(p_); }
  std::vector<S> host() const {
    std::vector<S> h(n_);
    EXPECT_EQ(cudaMemcpy(h.data(), p_, n_ * sizeof(S), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }

 private:
  size_t bytes() const { return n_ == 0 ? 1 : n_ * sizeof(S); }
  void* p_ = nullptr;
  size_t n_;
};

const int64_t kCounts[] = {1, 7, 1000, 12345};

template <class S>
void check_all_reduce() {
  Communicator& c = nccl();
  for (int64_t count : kCounts) {
    Dev<S> buf(filled<S>(count, c.rank()));
    const int64_t before = c.bytes_sent();
    c.all_reduce_async(buf.get(), count, dtype_of<S>())->wait();
    const std::vector<S> out = buf.host();
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_EQ(to_float(out[size_t(i)]), expected_sum(c.size(), i)) << "count " << count;
    }
    const int64_t n = c.size(), shard = (count + n - 1) / n;
    EXPECT_EQ(c.bytes_sent() - before, 2 * (n - 1) * shard * dtype_bytes(dtype_of<S>()));
  }
}

TEST(NcclComm, AllReduceF32) {
  SKIP_WITHOUT_GPUS;
  check_all_reduce<float>();
}
TEST(NcclComm, AllReduceBF16) {
  SKIP_WITHOUT_GPUS;
  check_all_reduce<BFloat16>();
}
TEST(NcclComm, AllReduceF16) {
  SKIP_WITHOUT_GPUS;
  check_all_reduce<Half>();
}

TEST(NcclComm, AllReduceEqualsReduceScatterThenAllGather) {
  SKIP_WITHOUT_GPUS;
  // comm.h's definition, bitwise, on values whose sums round (not small integers).
  Communicator& c = nccl();
  const int64_t n = c.size(), shard = 333, count = shard * n;
  std::vector<BFloat16> h(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i)
    h[size_t(i)] = float_to_bf16(0.1f * float(i % 17) + 0.013f * float(c.rank() + 1));
  Dev<BFloat16> a(h), b(h);
  c.all_reduce(a.get(), count, DType::kBF16);
  c.reduce_scatter(b.get(), b.get() + c.rank() * shard, shard, DType::kBF16);
  c.all_gather(b.get() + c.rank() * shard, b.get(), shard, DType::kBF16);
  const auto x = a.host(), y = b.host();
  for (int64_t i = 0; i < count; ++i) ASSERT_EQ(x[size_t(i)].bits, y[size_t(i)].bits) << i;
}

TEST(NcclComm, ReduceScatterStrided) {
  SKIP_WITHOUT_GPUS;
  Communicator& c = nccl();
  const int64_t n = c.size(), count = 100, stride = 160;
  // Each chunk i sits at i*stride; the gap holds garbage that must not leak into the result.
  std::vector<float> h(size_t(n * stride), -1000.0f);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < count; ++i)
      h[size_t(r * stride + i)] = contribution(c.rank(), r * count + i);
  Dev<float> send(h), recv(static_cast<size_t>(count));
  const int64_t before = c.bytes_sent();
  c.reduce_scatter_async(send.get(), recv.get(), count, DType::kF32, stride)->wait();
  const auto out = recv.host();
  for (int64_t i = 0; i < count; ++i)
    ASSERT_EQ(out[size_t(i)], expected_sum(int(n), c.rank() * count + i)) << i;
  EXPECT_EQ(c.bytes_sent() - before, (n - 1) * count * 4);
}

TEST(NcclComm, AllGatherStridedInPlace) {
  SKIP_WITHOUT_GPUS;
  Communicator& c = nccl();
  const int64_t n = c.size(), count = 50, stride = 64;
  std::vector<Half> h(size_t(n * stride), float_to_f16(-7.0f));
  for (int64_t i = 0; i < count; ++i)
    h[size_t(c.rank() * stride + i)] = float_to_f16(float(c.rank() * 1000 + i));
  Dev<Half> buf(h);
  c.all_gather(buf.get() + c.rank() * stride, buf.get(), count, DType::kF16, stride);
  const auto out = buf.host();
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < count; ++i)
      ASSERT_EQ(f16_to_float(out[size_t(r * stride + i)]), float(r * 1000 + i));
    for (int64_t i = count; i < stride; ++i)  // the gaps are untouched
      ASSERT_EQ(f16_to_float(out[size_t(r * stride + i)]), -7.0f);
  }
}

TEST(NcclComm, BroadcastAndF64Reductions) {
  SKIP_WITHOUT_GPUS;
  Communicator& c = nccl();
  const int root = c.size() - 1;
  Dev<int32_t> buf(std::vector<int32_t>(77, c.rank() == root ? 42 : 0));
  c.broadcast(buf.get(), 77, DType::kI32, root);
  for (int32_t v : buf.host()) ASSERT_EQ(v, 42);
  double v[2] = {double(c.rank() + 1), double(c.rank()) * 0.5};
  c.all_reduce_f64(v, 2, /*max=*/false);
  const double n = c.size();
  EXPECT_EQ(v[0], n * (n + 1) / 2);
  double m[1] = {double(c.rank())};
  c.all_reduce_f64(m, 1, /*max=*/true);
  EXPECT_EQ(m[0], n - 1);
  // The device-memory form, as a step's statistics use it: wait() orders the default stream
  // (this communicator's compute stream) after it, so the synchronous copy below sees it.
  Dev<double> d(std::vector<double>{double(c.rank() + 1), double(c.rank()) * 0.5});
  c.all_reduce_f64_async(d.get(), 2, /*max=*/false)->wait();
  EXPECT_EQ(d.host(), (std::vector<double>{n * (n + 1) / 2, n * (n - 1) / 4}));
  Dev<double> dm(std::vector<double>{double(c.rank())});
  c.all_reduce_f64_async(dm.get(), 1, /*max=*/true)->wait();
  EXPECT_EQ(dm.host()[0], n - 1);
  c.barrier();
}

TEST(NcclComm, SplitIntoEvenAndOddRanks) {
  SKIP_WITHOUT_GPUS;
  Communicator& c = nccl();
  auto sub = c.split(c.rank() % 2, c.rank());
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->size(), (c.size() - c.rank() % 2 + 1) / 2);
  EXPECT_EQ(sub->rank(), c.rank() / 2);
  Dev<float> buf(std::vector<float>(10, 1.0f));
  sub->all_reduce(buf.get(), 10, DType::kF32);
  for (float x : buf.host()) ASSERT_EQ(x, float(sub->size()));
}

}  // namespace
}  // namespace shardtrain

int main(int argc, char** argv) {
  ::testing::AddGlobalTestEnvironment(new shardtrain::NcclEnvironment);  // gtest owns it
  return shardtrain::testing::run_mpi_tests(argc, argv);
}
