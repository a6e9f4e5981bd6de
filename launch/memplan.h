// memplan.h — the `memplan` subcommand: bytes per rank by category for a config and a world
// size, and a table of layouts (ZeRO stage x tensor parallel) that fit a device. The analysis
// itself is parallel/memplan.h; this file is flags, validation and printing (text, JSON).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/config.h"

namespace shardtrain::launch {

struct MemplanArgs {
  std::string config;
  std::vector<std::string> sets;
  int world = 0;
  // 80 GiB: the largest common training accelerator (A100-80GB, H100 SXM).
  std::string device_memory = "80GiB";
  std::string format = "text";  // text | json
};

int run_memplan(const MemplanArgs& args);

// The prediction for a validated config on `world` ranks, in memplan --format json's shape
// (ARCHITECTURE.md): rank_bytes (each category's peak; total = the peak of the sum),
// steady_bytes, at_peak_bytes, layout, candidates. The memory report embeds it.
nlohmann::json memplan_json(const Config& config, int world, int64_t device_bytes);

}  // namespace shardtrain::launch
