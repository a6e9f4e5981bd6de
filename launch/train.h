// train.h — the `train` and `export` subcommands.
#pragma once

#include <string>
#include <vector>

#include "runtime/log.h"

namespace shardtrain::launch {

struct TrainArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string resume;
  std::string metrics;
  std::string memory_report;
  std::string profile;       // --profile FILE: time per op (launch/profile_report.h); cpu only
  std::string export_final;  // a .safetensors file or a model directory (launch/hf_export.h)
  bool dry_run = false;
  // Hidden: no allocator timeline (peaks and counters are still kept), to measure its cost.
  bool no_memory_timeline = false;
  // Test-only fault injection (hidden flags): rank fault_rank throws at step fault_step, or
  // makes its gradients non-finite at step overflow_step.
  int64_t fault_step = -1;
  int64_t overflow_step = -1;
  int64_t save_fault_step = -1;  // fault_rank dies during this step's checkpoint save,
  std::string save_fault_point = "mid_piece";  // at this point (parallel::SaveFault)
  int fault_rank = 0;
  bool save_fault_stall = false;  // the save fault stops the rank instead of killing it
};

int run_train(const TrainArgs& args, LogLevel level, bool log_all_ranks);

struct ExportArgs {
  std::string in;      // checkpoint directory
  std::string config;  // or: a config, exporting its initial weights (init_from or seeded)
  std::vector<std::string> sets;
  std::string out;        // a .safetensors file or a model directory (launch/hf_export.h)
  std::string tokenizer;  // tokenizer.bpe for the directory (default: data.tokenizer)
};

int run_export(const ExportArgs& args);

struct ReshardArgs {
  std::string in, out;
  int world = 0;
  std::vector<std::string> sets;
  double buffer_mb = 64;
};

int run_reshard(const ReshardArgs& args);
int run_inspect(const std::string& dir);

}  // namespace shardtrain::launch
