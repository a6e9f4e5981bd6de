// cpu_affinity.cpp — the affinity mask from sched_getaffinity, and the share of it (and of the
// cgroup's quota) a rank takes (cpu_affinity.h says why).
#include "runtime/cpu_affinity.h"

#include <sched.h>

#include <algorithm>
#include <bit>
#include <thread>

namespace shardtrain {

CpuMask cpu_affinity_mask() {
  CpuMask mask(kCpuMaskWords, 0);
  // The kernel fills as many bytes as its CPU mask has (at most the buffer) and fails with
  // EINVAL when the buffer is shorter than that, i.e. past 16,384 possible CPUs.
  if (sched_getaffinity(0, mask.size() * sizeof(uint64_t),
                        reinterpret_cast<cpu_set_t*>(mask.data())) != 0) {
    return {};
  }
  return mask;
}

int cpu_count(const CpuMask& mask) {
  int n = 0;
  for (uint64_t word : mask) n += std::popcount(word);
  return n;
}

RankCpus this_rank_cpus() { return {cpu_affinity_mask(), cpu_quota()}; }

CpuShare cpu_share(const std::vector<RankCpus>& local, int self) {
  const RankCpus& own = local.at(size_t(self));
  CpuShare share;
  share.cpus = cpu_count(own.mask);
  share.sharers = int(std::count_if(local.begin(), local.end(),
                                    [&](const RankCpus& r) { return r.mask == own.mask; }));
  share.threads = share.cpus > 0
                      ? std::max(1, share.cpus / share.sharers)
                      : std::max(1, int(std::thread::hardware_concurrency()) / int(local.size()));
  if (own.quota.cpus > 0) {
    share.quota_cpus = own.quota.cpus;
    share.quota_sharers = int(std::count_if(local.begin(), local.end(), [&](const RankCpus& r) {
      return r.quota.dev == own.quota.dev && r.quota.ino == own.quota.ino && r.quota.cpus > 0;
    }));
    share.threads =
        std::min(share.threads, std::max(1, int(share.quota_cpus / share.quota_sharers)));
  }
  return share;
}

}  // namespace shardtrain
