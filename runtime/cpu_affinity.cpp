// cpu_affinity.cpp — the affinity mask from sched_getaffinity, and the share of it a rank takes
// (cpu_affinity.h says why).
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

CpuShare cpu_share(const std::vector<CpuMask>& local_masks, int self) {
  const CpuMask& own = local_masks.at(size_t(self));
  CpuShare share;
  share.cpus = cpu_count(own);
  share.sharers = int(std::count(local_masks.begin(), local_masks.end(), own));
  const int local = int(local_masks.size());
  share.threads = share.cpus > 0 ? std::max(1, share.cpus / share.sharers)
                                 : std::max(1, int(std::thread::hardware_concurrency()) / local);
  return share;
}

}  // namespace shardtrain
