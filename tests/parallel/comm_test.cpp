// Collectives of the MPI communicator, run under mpirun with 2 and 4 ranks. Closed-form
// expectations: rank r contributes (r + 1) + (i % 3) at element i, so every sum is a small
// integer, exact in fp32, bf16 and f16, and the expected value is known without a reference.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "runtime/dtype.h"
#include "tests/parallel/mpi_test_main.h"

namespace shardtrain {
namespace {

using testing::g_mpi;

Communicator& world() { return g_mpi->world(); }

float contribution(int rank, int64_t i) { return float(rank + 1) + float(i % 3); }
float expected_sum(int n, int64_t i) { return float(n * (n + 1) / 2) + float(n) * float(i % 3); }

template <class S>
std::vector<S> filled(int64_t count, int rank, int64_t offset = 0) {
  std::vector<S> v(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) v[size_t(i)] = from_float<S>(contribution(rank, offset + i));
  return v;
}

const int64_t kCounts[] = {1, 7, 1000, 12345};

template <class S>
void check_all_reduce(bool async) {
  Communicator& c = world();
  for (int64_t count : kCounts) {
    std::vector<S> buf = filled<S>(count, c.rank());
    if (async) {
      auto work = c.all_reduce_async(buf.data(), count, dtype_of<S>());
      work->wait();
    } else {
      c.all_reduce(buf.data(), count, dtype_of<S>());
    }
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_EQ(to_float(buf[size_t(i)]), expected_sum(c.size(), i))
          << "count " << count << " i " << i;
    }
  }
}

template <class S>
void check_reduce_scatter(bool async) {
  Communicator& c = world();
  for (int64_t count : kCounts) {
    std::vector<S> send = filled<S>(count * c.size(), c.rank()), recv(static_cast<size_t>(count));
    auto work = c.reduce_scatter_async(send.data(), recv.data(), count, dtype_of<S>());
    if (!async)
      work->wait();
    else
      work->wait();
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_EQ(to_float(recv[size_t(i)]), expected_sum(c.size(), c.rank() * count + i));
    }
  }
}

template <class S>
void check_all_gather() {
  Communicator& c = world();
  for (int64_t count : kCounts) {
    std::vector<S> send = filled<S>(count, c.rank()), recv(size_t(count * c.size()));
    c.all_gather(send.data(), recv.data(), count, dtype_of<S>());
    for (int r = 0; r < c.size(); ++r) {
      for (int64_t i = 0; i < count; ++i) {
        ASSERT_EQ(to_float(recv[size_t(r * count + i)]), contribution(r, i));
      }
    }
    // In place: the send buffer is this rank's slot of the output.
    std::vector<S> inplace(size_t(count * c.size()));
    std::vector<S> mine = filled<S>(count, c.rank());
    std::copy(mine.begin(), mine.end(), inplace.begin() + c.rank() * count);
    c.all_gather(inplace.data() + c.rank() * count, inplace.data(), count, dtype_of<S>());
    EXPECT_EQ(0, std::memcmp(inplace.data(), recv.data(), recv.size() * sizeof(S)));
  }
}

TEST(Comm, AllReduceF32) { check_all_reduce<float>(false); }
TEST(Comm, AllReduceBF16) { check_all_reduce<BFloat16>(false); }
TEST(Comm, AllReduceF16) { check_all_reduce<Half>(false); }
TEST(Comm, AllReduceAsync) {
  check_all_reduce<float>(true);
  check_all_reduce<BFloat16>(true);
}
TEST(Comm, ReduceScatterF32) { check_reduce_scatter<float>(false); }
TEST(Comm, ReduceScatterBF16) { check_reduce_scatter<BFloat16>(true); }
TEST(Comm, ReduceScatterF16) { check_reduce_scatter<Half>(true); }
TEST(Comm, AllGatherF32) { check_all_gather<float>(); }
TEST(Comm, AllGatherBF16) { check_all_gather<BFloat16>(); }
TEST(Comm, AllGatherF16) { check_all_gather<Half>(); }

// 16-bit data: each hop adds in fp32 and rounds the partial sum once to bf16. Rank 0 holds 256,
// the others 1 (bf16 spacing at 256 is 2). Element 0 is shard 0, summed in ring order starting
// at rank 1 and ending at rank 0: n = 2: 1 + 256 = 257, a tie, rounds to even 256; n = 4:
// ((1 + 1) + 1) + 256 = 259, a tie between 258 and 260, rounds to even 260. The exact result
// pins both the order and the per-hop rounding.
TEST(Comm, BF16RoundsOncePerHop) {
  Communicator& c = world();
  std::vector<BFloat16> buf = {from_float<BFloat16>(c.rank() == 0 ? 256.0f : 1.0f)};
  // Element 0 belongs to shard 0 (one shard per rank after padding); its ring order starts
  // at rank 1 and ends at rank 0: ((1 + 1) + 1) + 256 for n = 4, (1) + 256 for n = 2.
  c.all_reduce(buf.data(), 1, DType::kBF16);
  float want = c.size() == 2 ? 256.0f /* 257 -> 256 */ : 260.0f /* 3 + 256 = 259 -> 260 */;
  EXPECT_EQ(to_float(buf[0]), want);
}

TEST(Comm, Broadcast) {
  Communicator& c = world();
  for (int root = 0; root < c.size(); ++root) {
    std::vector<float> buf = filled<float>(1001, c.rank());
    c.broadcast(buf.data(), 1001, DType::kF32, root);
    for (int64_t i = 0; i < 1001; ++i) ASSERT_EQ(buf[size_t(i)], contribution(root, i));
  }
}

TEST(Comm, ManyAsyncInFlightCompleteInOrder) {
  Communicator& c = world();
  std::vector<std::vector<float>> bufs;
  std::vector<std::unique_ptr<Work>> works;
  for (int k = 0; k < 8; ++k) bufs.push_back(filled<float>(333 + k, c.rank()));
  for (int k = 0; k < 8; ++k)
    works.push_back(c.all_reduce_async(bufs[size_t(k)].data(), 333 + k, DType::kF32));
  for (int k = 7; k >= 0; --k) works[size_t(k)]->wait();  // waiting out of order is fine
  for (int k = 0; k < 8; ++k) {
    for (int64_t i = 0; i < 333 + k; ++i)
      ASSERT_EQ(bufs[size_t(k)][size_t(i)], expected_sum(c.size(), i));
  }
}

TEST(Comm, BytesSentMatchRingTheory) {
  Communicator& c = world();
  const int64_t n = c.size(), count = 4000 * n;  // divisible: no padding
  std::vector<float> buf = filled<float>(count, c.rank());
  int64_t before = c.bytes_sent();
  c.all_reduce(buf.data(), count, DType::kF32);
  // Ring all-reduce: 2 (N-1)/N x the buffer's bytes per rank.
  EXPECT_EQ(c.bytes_sent() - before, 2 * (n - 1) * count * 4 / n);
}

TEST(Comm, SplitGroupsAndF64) {
  Communicator& c = world();
  auto sub = c.split(c.rank() % 2, c.rank());
  EXPECT_EQ(sub->size(), (c.size() + 1 - c.rank() % 2) / 2);
  double v[2] = {double(c.rank()), double(c.rank())};
  sub->all_reduce_f64(v, 1, false);
  sub->all_reduce_f64(v + 1, 1, true);
  double sum = 0, mx = 0;
  for (int r = c.rank() % 2; r < c.size(); r += 2) {
    sum += r;
    mx = r;
  }
  EXPECT_EQ(v[0], sum);
  EXPECT_EQ(v[1], mx);
  std::vector<float> buf = filled<float>(10, sub->rank());
  sub->all_reduce(buf.data(), 10, DType::kF32);
  EXPECT_EQ(buf[4], expected_sum(sub->size(), 4));
  c.barrier();
}

}  // namespace
}  // namespace shardtrain

int main(int argc, char** argv) { return shardtrain::testing::run_mpi_tests(argc, argv); }
