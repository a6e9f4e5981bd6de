#include "launch/profile_report.h"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/error.h"
#include "runtime/log.h"

namespace shardtrain::launch {

void write_profile_report(const std::string& path, const kernels::OpProfile& profile,
                          const std::string& cpu) {
  const int64_t steps = profile.steps();
  if (steps == 0) {  // no step ran (a resume at the last step): say so, in the file too
    log_info("profile: no step ran, nothing profiled");
    std::ofstream out(path, std::ios::trunc);
    out << nlohmann::json({{"cpu", cpu}, {"steps", 0}, {"ops", nlohmann::json::array()}}).dump(1)
        << "\n";
    if (!out) throw UserError(str_cat("--profile ", path, ": cannot write"));
    return;
  }
  const double step_ms = double(profile.step_ns()) / 1e6 / double(steps);
  nlohmann::json ops = nlohmann::json::array();
  std::string table =
      str_cat("profile of ", steps, " step(s), ", step_ms, " ms per step (", cpu, "):\n");
  char line[256];
  std::snprintf(line, sizeof line, "  %-44s %10s %10s %7s %9s\n", "op", "calls/step", "ms/step",
                "share", "GFLOP/s");
  table += line;
  double op_ms = 0;
  for (const kernels::OpProfile::Entry& e : profile.entries()) {
    const double ms = double(e.ns) / 1e6 / double(steps);
    const double share = ms / step_ms;
    const double gflops = e.ns > 0 ? e.flops / double(e.ns) : 0.0;  // FLOP per ns = GFLOP/s
    op_ms += ms;
    nlohmann::json op = {{"op", e.key},
                         {"calls_per_step", double(e.calls) / double(steps)},
                         {"ms_per_step", ms},
                         {"share", share}};
    if (e.flops > 0) op["gflops"] = gflops;
    ops.push_back(op);
    std::snprintf(line, sizeof line, "  %-44s %10.1f %10.3f %6.1f%% %9s\n", e.key.c_str(),
                  double(e.calls) / double(steps), ms, 100 * share,
                  e.flops > 0 ? str_cat(int64_t(gflops + 0.5)).c_str() : "");
    table += line;
  }
  const double other_ms = step_ms - op_ms;
  std::snprintf(line, sizeof line, "  %-44s %10s %10.3f %6.1f%%", "other (host code, data, comm)",
                "", other_ms, 100 * other_ms / step_ms);
  table += line;
  log_info(table);
  const nlohmann::json report = {{"cpu", cpu},
                                 {"steps", steps},
                                 {"step_ms", step_ms},
                                 {"ops", ops},
                                 {"other_ms_per_step", other_ms}};
  std::ofstream out(path, std::ios::trunc);
  out << report.dump(1) << "\n";
  if (!out) throw UserError(str_cat("--profile ", path, ": cannot write"));
}

}  // namespace shardtrain::launch
