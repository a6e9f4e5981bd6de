// cpu_quota.cpp — the tightest CFS quota over this process's cgroups (cpu_quota.h says why).
#include "runtime/cpu_quota.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

namespace shardtrain {
namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, sep);) parts.push_back(part);
  return parts;
}

bool has(const std::vector<std::string>& list, const std::string& x) {
  for (const auto& s : list)
    if (s == x) return true;
  return false;
}

// A hierarchy that can limit CPU time: v1 with the cpu controller, or v2.
struct Hierarchy {
  bool v2;
  std::string cgroup;  // this process's path in the hierarchy (/proc/self/cgroup)
  std::string root;    // the hierarchy path mounted (mountinfo field 4)
  std::string mount;   // where (mountinfo field 5)
};

// The limit a cgroup directory sets, in CPUs (0: none or unreadable).
double limit_of(const std::string& dir, bool v2) {
  if (v2) {
    std::ifstream f(dir + "/cpu.max");
    std::string quota;
    double period = 0;
    if (!(f >> quota >> period) || period <= 0) return 0;
    char* end = nullptr;
    const double q = std::strtod(quota.c_str(), &end);  // "max": no limit
    return end != quota.c_str() && *end == '\0' && q > 0 ? q / period : 0;
  }
  std::ifstream q(dir + "/cpu.cfs_quota_us"), p(dir + "/cpu.cfs_period_us");
  double quota = -1, period = 0;
  if (!(q >> quota) || !(p >> period) || quota <= 0 || period <= 0) return 0;
  return quota / period;
}

std::vector<Hierarchy> cpu_hierarchies(const std::string& root) {
  // "ID:controllers:path"; v2's line is "0::path".
  std::vector<Hierarchy> found;
  std::ifstream cgroups(root + "/proc/self/cgroup");
  std::vector<std::pair<bool, std::string>> paths;  // (v2, path)
  for (std::string line; std::getline(cgroups, line);) {
    const auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    if (controllers.empty() || has(split(controllers, ','), "cpu"))
      paths.emplace_back(controllers.empty(), line.substr(b + 1));
  }
  // "ID PARENT MAJ:MIN ROOT MOUNT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS".
  std::ifstream mounts(root + "/proc/self/mountinfo");
  for (std::string line; std::getline(mounts, line);) {
    const auto fields = split(line, ' ');
    const auto dash = line.find(" - ");
    if (fields.size() < 5 || dash == std::string::npos) continue;
    const auto tail = split(line.substr(dash + 3), ' ');
    if (tail.size() < 3) continue;
    const bool v2 = tail[0] == "cgroup2";
    if (!v2 && !(tail[0] == "cgroup" && has(split(tail[2], ','), "cpu"))) continue;
    for (const auto& [path_v2, path] : paths)
      if (path_v2 == v2) found.push_back({v2, path, fields[3], root + fields[4]});
  }
  return found;
}

}  // namespace

CpuQuota cpu_quota(const std::string& root) {
  CpuQuota tightest;
  for (const Hierarchy& h : cpu_hierarchies(root)) {
    // The process's directory under the mount: its path less the mounted root; a path outside
    // that root (another cgroup namespace's view) leaves the mount's root itself.
    std::string rel;
    if (h.root == "/") {
      rel = h.cgroup == "/" ? "" : h.cgroup;
    } else if (h.cgroup.rfind(h.root, 0) == 0 &&
               (h.cgroup.size() == h.root.size() || h.cgroup[h.root.size()] == '/')) {
      rel = h.cgroup.substr(h.root.size());
    }
    // From the cgroup up to the mount's root: a limit anywhere above applies too.
    for (std::string dir = h.mount + rel;; dir = dir.substr(0, dir.rfind('/'))) {
      const double cpus = limit_of(dir, h.v2);
      struct stat st {};
      if (cpus > 0 && (tightest.cpus == 0 || cpus < tightest.cpus) && stat(dir.c_str(), &st) == 0) {
        tightest = {cpus, uint64_t(st.st_dev), uint64_t(st.st_ino)};
      }
      if (dir.size() <= h.mount.size()) break;
    }
  }
  return tightest;
}

}  // namespace shardtrain
