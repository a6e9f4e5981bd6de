// train.h — the `train` and `export` subcommands.
#pragma once

#include <string>
#include <vector>

namespace shardtrain::launch {

struct TrainArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string resume;
  std::string metrics;
  std::string memory_report;
  std::string export_final;
  bool dry_run = false;
};

int run_train(const TrainArgs& args);

struct ExportArgs {
  std::string in;      // checkpoint directory
  std::string config;  // or: a config, exporting its initial weights (init_from or seeded)
  std::vector<std::string> sets;
  std::string out;
};

int run_export(const ExportArgs& args);

}  // namespace shardtrain::launch
