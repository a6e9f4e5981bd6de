// profile_report.h — `train --profile FILE`: rank 0's op profile (kernels/profiler.h) as JSON
// and as a table in the log.
//
// Every step but the first is profiled (the first also builds oneDNN's GEMM kernels); a run of
// one step profiles that one. Shares are of the profiled steps' wall time; what no op accounts
// for is reported as "other" (host code between ops, data loading, waiting for communication).
#pragma once

#include <string>

#include "kernels/profiler.h"

namespace shardtrain::launch {

// Writes FILE (JSON: steps, step_ms, ops [{op, calls_per_step, ms_per_step, share, gflops}],
// other_ms_per_step, cpu) and logs the table. `cpu` names the machine (model, ISA).
void write_profile_report(const std::string& path, const kernels::OpProfile& profile,
                          const std::string& cpu);

}  // namespace shardtrain::launch
