// The default thread count from affinity masks (runtime/cpu_affinity.h): the launchers' usual
// bindings on a 64-CPU node, written as masks by hand, and the mask read back from a thread
// pinned to one CPU.
#include "runtime/cpu_affinity.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>

#include <thread>

namespace shardtrain {
namespace {

CpuMask cpus(int first, int count) {  // CPUs first .. first + count - 1
  CpuMask m(kCpuMaskWords, 0);
  for (int c = first; c < first + count; ++c) m[size_t(c / 64)] |= uint64_t{1} << (c % 64);
  return m;
}

std::vector<RankCpus> ranks(const std::vector<CpuMask>& masks, CpuQuota quota = {}) {
  std::vector<RankCpus> r;
  for (const auto& m : masks) r.push_back({m, quota});
  return r;
}

CpuShare share(const std::vector<CpuMask>& masks, int self) {
  return cpu_share(ranks(masks), self);
}

int threads(const std::vector<CpuMask>& masks, int self) { return share(masks, self).threads; }

TEST(CpuShare, RanksBoundToOwnCoresKeepOneCoreEach) {
  // Open MPI's default for <= 2 ranks per node: each bound to one core. Counting the node
  // (64 / 2 = 32 threads on one core) was the bug this file exists for.
  const std::vector<CpuMask> m = {cpus(0, 1), cpus(1, 1)};
  EXPECT_EQ(threads(m, 0), 1);
  EXPECT_EQ(threads(m, 1), 1);
  EXPECT_EQ(share(m, 1).sharers, 1);
}

TEST(CpuShare, UnboundRanksDivideTheNode) {  // mpirun --bind-to none
  const std::vector<CpuMask> m = {cpus(0, 64), cpus(0, 64)};
  EXPECT_EQ(threads(m, 0), 32);
  EXPECT_EQ(share(m, 1).sharers, 2);
  EXPECT_EQ(share(m, 1).cpus, 64);
}

TEST(CpuShare, SocketBoundRanksDivideTheirSocket) {
  // Open MPI's default beyond 2 ranks: bound to a socket; 4 ranks on 2 sockets of 32 CPUs.
  const std::vector<CpuMask> m = {cpus(0, 32), cpus(32, 32), cpus(0, 32), cpus(32, 32)};
  for (int r = 0; r < 4; ++r) EXPECT_EQ(threads(m, r), 16) << r;
}

TEST(CpuShare, CpusetSharedUnevenlyRoundsDownAndNeverReachesZero) {
  EXPECT_EQ(threads({cpus(8, 8), cpus(8, 8), cpus(8, 8)}, 2), 2);  // a job cpuset of 8, 3 ranks
  EXPECT_EQ(threads({cpus(0, 2), cpus(0, 2), cpus(0, 2), cpus(0, 2)}, 3), 1);  // oversubscribed
}

TEST(CpuShare, OverlappingButUnequalMasksAreSeparateSets) {
  const std::vector<CpuMask> m = {cpus(0, 32), cpus(16, 32)};
  EXPECT_EQ(threads(m, 0), 32);
  EXPECT_EQ(threads(m, 1), 32);
}

TEST(CpuShare, HighCpuNumbersCount) {  // CPUs past the first 64-bit word
  const std::vector<CpuMask> m = {cpus(1000, 24), cpus(5000, 8)};
  EXPECT_EQ(threads(m, 0), 24);
  EXPECT_EQ(threads(m, 1), 8);
}

TEST(CpuShare, NoMaskFallsBackToTheNodeDividedByItsRanks) {
  const std::vector<CpuMask> m = {CpuMask(kCpuMaskWords, 0), CpuMask(kCpuMaskWords, 0)};
  const int node = int(std::thread::hardware_concurrency());
  EXPECT_EQ(share(m, 0).cpus, 0);
  EXPECT_EQ(threads(m, 0), std::max(1, node / 2));
}

TEST(CpuShare, AQuotaCapsTheThreadsOfTheRanksUnderIt) {
  // A container limited to 4 CPUs on a 64-CPU node, 2 unbound ranks in it: 2 threads each,
  // not 32 (the mask alone) that the scheduler would throttle to 4 CPUs' worth.
  const CpuQuota four{4.0, 7, 42};
  const auto r = ranks({cpus(0, 64), cpus(0, 64)}, four);
  EXPECT_EQ(cpu_share(r, 0).threads, 2);
  EXPECT_EQ(cpu_share(r, 1).quota_sharers, 2);
  // A fractional quota rounds down, never below one thread.
  EXPECT_EQ(cpu_share(ranks({cpus(0, 64)}, {1.5, 7, 42}), 0).threads, 1);
  EXPECT_EQ(cpu_share(ranks({cpus(0, 64), cpus(0, 64)}, {0.5, 7, 42}), 1).threads, 1);
  // Ranks in two containers of 4 CPUs each do not share a quota.
  auto two = ranks({cpus(0, 64), cpus(0, 64)}, four);
  two[1].quota.ino = 43;
  EXPECT_EQ(cpu_share(two, 0).threads, 4);
  EXPECT_EQ(cpu_share(two, 1).quota_sharers, 1);
  // A quota above the mask's share leaves the mask's share.
  EXPECT_EQ(cpu_share(ranks({cpus(0, 1), cpus(1, 1)}, four), 0).threads, 1);
}

TEST(CpuAffinityMask, ReadsTheCallingThreadsBinding) {
  const CpuMask all = cpu_affinity_mask();
  ASSERT_EQ(all.size(), size_t(kCpuMaskWords));
  ASSERT_GE(cpu_count(all), 1);
  int last = 0;  // the highest CPU this process may run on
  for (int c = 0; c < kCpuMaskWords * 64; ++c)
    if (all[size_t(c / 64)] >> (c % 64) & 1) last = c;
  if (last >= CPU_SETSIZE) GTEST_SKIP() << "CPU " << last << " is past cpu_set_t";
  CpuMask pinned;
  std::thread t([&] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(last, &one);
    if (pthread_setaffinity_np(pthread_self(), sizeof(one), &one) == 0)
      pinned = cpu_affinity_mask();
  });
  t.join();
  EXPECT_EQ(pinned, cpus(last, 1));
}

}  // namespace
}  // namespace shardtrain
