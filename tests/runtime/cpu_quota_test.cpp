// The cgroup CPU quota (runtime/cpu_quota.h) read from fake /proc and /sys trees laid out under
// a temporary directory: cgroup v1 and v2 files, a limit set on an ancestor, a hierarchy whose
// mounted root is not "/", and no limit at all.
#include "runtime/cpu_quota.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace shardtrain {
namespace {

namespace fs = std::filesystem;

class FakeRoot {
 public:
  FakeRoot() : dir_(fs::temp_directory_path() / ("cpu_quota_test." + std::to_string(getpid()))) {
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "proc/self");
  }
  ~FakeRoot() { fs::remove_all(dir_); }
  void write(const std::string& path, const std::string& text) const {
    fs::create_directories((dir_ / path).parent_path());
    std::ofstream(dir_ / path) << text;
  }
  // A cgroup v1 directory's limit: cpu.cfs_quota_us (-1: none) over a period of 100 ms.
  void v1_limit(const std::string& dir, const std::string& quota_us) const {
    write(dir + "/cpu.cfs_quota_us", quota_us + "\n");
    write(dir + "/cpu.cfs_period_us", "100000\n");
  }
  std::string root() const { return dir_.string(); }
  uint64_t ino(const std::string& path) const {
    struct stat st {};
    stat((dir_ / path).c_str(), &st);
    return uint64_t(st.st_ino);
  }

 private:
  fs::path dir_;
};

// mountinfo lines as the kernel writes them (optional fields before " - ").
const char* kV1Mount =
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n";
const char* kV2Mount = "35 31 0:32 / /sys/fs/cgroup rw,nosuid shared:10 - cgroup2 cgroup2 rw\n";

TEST(CpuQuota, V1QuotaOverPeriodOfTheProcessCgroup) {
  FakeRoot r;
  r.write("proc/self/cgroup", "4:memory:/job\n3:cpu,cpuacct:/job/task\n");
  r.write("proc/self/mountinfo", kV1Mount);
  r.v1_limit("sys/fs/cgroup/cpu/job/task", "250000");
  const CpuQuota q = cpu_quota(r.root());
  EXPECT_DOUBLE_EQ(q.cpus, 2.5);
  EXPECT_EQ(q.ino, r.ino("sys/fs/cgroup/cpu/job/task"));
}

TEST(CpuQuota, TheTightestLimitOnThePathToTheRootApplies) {
  FakeRoot r;
  r.write("proc/self/cgroup", "3:cpu,cpuacct:/job/task\n");
  r.write("proc/self/mountinfo", kV1Mount);
  r.v1_limit("sys/fs/cgroup/cpu/job/task", "-1");  // none on the task
  r.v1_limit("sys/fs/cgroup/cpu/job", "200000");   // 2 CPUs on the job
  r.v1_limit("sys/fs/cgroup/cpu", "-1");
  const CpuQuota q = cpu_quota(r.root());
  EXPECT_DOUBLE_EQ(q.cpus, 2.0);
  EXPECT_EQ(q.ino, r.ino("sys/fs/cgroup/cpu/job"));
}

TEST(CpuQuota, V2CpuMax) {
  FakeRoot r;
  r.write("proc/self/cgroup", "0::/kubepods/pod1\n");
  r.write("proc/self/mountinfo", kV2Mount);
  r.write("sys/fs/cgroup/kubepods/pod1/cpu.max", "150000 100000\n");
  r.write("sys/fs/cgroup/kubepods/cpu.max", "max 100000\n");
  EXPECT_DOUBLE_EQ(cpu_quota(r.root()).cpus, 1.5);
  r.write("sys/fs/cgroup/kubepods/pod1/cpu.max", "max 100000\n");
  EXPECT_EQ(cpu_quota(r.root()).cpus, 0.0);
  r.write("sys/fs/cgroup/kubepods/pod1/cpu.max", "15x 100000\n");  // unreadable: no limit, no throw
  EXPECT_EQ(cpu_quota(r.root()).cpus, 0.0);
}

TEST(CpuQuota, AMountedSubtreeIsReadFromItsMountPoint) {
  // In a container the hierarchy's subtree /docker/abc is mounted at /sys/fs/cgroup/cpu and
  // /proc/self/cgroup still names the full path.
  FakeRoot r;
  r.write("proc/self/cgroup", "3:cpu:/docker/abc\n");
  r.write("proc/self/mountinfo",
          "40 31 0:29 /docker/abc /sys/fs/cgroup/cpu ro,nosuid - cgroup cgroup rw,cpu\n");
  r.v1_limit("sys/fs/cgroup/cpu", "300000");
  EXPECT_DOUBLE_EQ(cpu_quota(r.root()).cpus, 3.0);
}

TEST(CpuQuota, NoLimitNoCgroupsOrAMemoryOnlyHierarchy) {
  FakeRoot r;
  EXPECT_EQ(cpu_quota(r.root()).cpus, 0.0);  // no /proc/self/cgroup at all
  r.write("proc/self/cgroup", "4:memory:/job\n");
  r.write("proc/self/mountinfo",
          "33 31 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n");
  r.v1_limit("sys/fs/cgroup/memory/job", "100000");  // not a cpu hierarchy
  EXPECT_EQ(cpu_quota(r.root()).cpus, 0.0);
}

}  // namespace
}  // namespace shardtrain
