// cpu_quota.h — the CPU time a container or cgroup may use (its CFS quota), for the default
// thread count (runtime/cpu_affinity.h).
//
// A container's CPU limit (docker --cpus, a Kubernetes CPU limit, systemd's CPUQuota) is a
// quota, not an affinity: every CPU of the node stays in the mask, and the scheduler stops the
// whole group once it has used quota / period CPUs' worth of time in a period. OpenMP threads
// meet at a barrier after every op, so one throttled thread stalls its whole team: the default
// thread count stays within the quota. /proc/self/cgroup names this process's cgroup in each
// hierarchy, /proc/self/mountinfo where each hierarchy is mounted; the limit is the tightest
// along the path from the cgroup up to the mount's root — cgroup v2's cpu.max ("max PERIOD"
// or "QUOTA PERIOD"), v1's cpu.cfs_quota_us (-1: none) over cpu.cfs_period_us — in both kinds of
// hierarchy where both are mounted.
#pragma once

#include <cstdint>
#include <string>

namespace shardtrain {

struct CpuQuota {
  double cpus = 0;  // quota / period of the tightest limit; 0: no limit found
  // The limiting cgroup directory (device, inode): ranks with the same one share the quota.
  uint64_t dev = 0, ino = 0;
};

// `root` stands for "/" (tests lay out a fake /proc and /sys under a directory).
CpuQuota cpu_quota(const std::string& root = "");

}  // namespace shardtrain
