// main.cpp — the `shardtrain` executable: parses the command line, dispatches to a
// subcommand, and turns every failure into one line and an exit code:
//   0 success, 2 `shardtrain: error: <message>` for anything the user can fix (flags, config,
//   files, a layout too big for the memory), 1 for internal failures, 3 when the collective
//   watchdog (parallel.comm_timeout_s) ends the job.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "launch/device.h"
#include "launch/memplan.h"
#include "launch/sample.h"
#include "launch/tokenize.h"
#include "launch/train.h"
#include "runtime/error.h"
#include "runtime/log.h"

int main(int argc, char** argv) {
  using namespace shardtrain;
  using launch::ExportArgs;
  using launch::TrainArgs;
  CLI::App app{"shardtrain: distributed GPT training (data, tensor and ZeRO parallelism)"};
  app.require_subcommand(1);
  app.fallthrough();  // global flags may also follow the subcommand
  std::string log_level = "info";
  bool log_all_ranks = false;
  app.add_option("--log-level", log_level, "debug | info | warn | error");
  app.add_flag("--log-all-ranks", log_all_ranks, "every rank logs (default: rank 0 only)");

  TrainArgs train;
  CLI::App* train_cmd =
      app.add_subcommand("train", "train a GPT (run under mpirun for many ranks)");
  train_cmd->add_option("--config", train.config, "config file (protobuf text format)")->required();
  train_cmd->add_option("--set", train.sets, "override a field: path.to.field=value (repeatable)");
  train_cmd->add_option("--resume", train.resume, "auto | checkpoint directory");
  train_cmd->add_option("--metrics", train.metrics, "write one JSON line per step here");
  train_cmd->add_option("--memory-report", train.memory_report, "write the memory report here");
  train_cmd->add_option("--profile", train.profile,
                        "time every op of the steps after the first, write the profile here "
                        "(JSON) and log it as a table (cpu only)");
  train_cmd->add_option("--export-final", train.export_final,
                        "write the final weights: FILE.safetensors, or a Hugging Face model "
                        "directory");
  std::string train_tokenizer;
  train_cmd->add_option("--tokenizer", train_tokenizer,
                        "tokenizer.bpe of the data, exported with the model "
                        "(same as --set data.tokenizer=...)");
  std::string device;
  train_cmd
      ->add_option("--device", device,
                   "cpu | cuda | cuda-emu: what computes (same as --set train.device=...)")
      ->check(CLI::IsMember({"cpu", "cuda", "cuda-emu"}));
  train_cmd->add_flag("--dry-run", train.dry_run, "validate the config, print it, and stop");
  // Test-only fault injection; hidden from --help (empty group).
  train_cmd->add_option("--inject-fault", train.fault_step)->group("");
  train_cmd->add_option("--inject-overflow", train.overflow_step)->group("");
  train_cmd->add_option("--inject-save-fault", train.save_fault_step)->group("");
  train_cmd->add_option("--fault-point", train.save_fault_point)->group("");
  train_cmd->add_option("--fault-rank", train.fault_rank)->group("");
  train_cmd->add_flag("--fault-stall", train.save_fault_stall)->group("");
  train_cmd->add_flag("--no-memory-timeline", train.no_memory_timeline)->group("");

  launch::MemplanArgs plan;
  CLI::App* memplan_cmd = app.add_subcommand(
      "memplan", "predict bytes per rank by category, and which layouts fit a device");
  memplan_cmd->add_option("--config", plan.config, "config file (protobuf text format)")
      ->required();
  memplan_cmd->add_option("--world", plan.world, "number of ranks")->required();
  memplan_cmd->add_option("--set", plan.sets, "override a field: path.to.field=value (repeatable)");
  memplan_cmd->add_option("--device-memory", plan.device_memory,
                          "bytes per device, e.g. 80GiB (default), 40GB");
  memplan_cmd->add_option("--format", plan.format, "text (default) | json");

  ExportArgs exp;
  CLI::App* export_cmd =
      app.add_subcommand("export", "write weights as safetensors in Hugging Face GPT-2 layout");
  export_cmd->add_option("--in", exp.in, "checkpoint directory");
  export_cmd->add_option("--config", exp.config, "or: export this config's initial weights");
  export_cmd->add_option("--set", exp.sets, "override a config field (with --config)");
  export_cmd->add_option("--out", exp.out, "FILE.safetensors, or a Hugging Face model directory")
      ->required();
  export_cmd->add_option("--tokenizer", exp.tokenizer,
                         "tokenizer.bpe written into the directory (default: data.tokenizer)");

  launch::TokenizeArgs tok;
  CLI::App* tokenize_cmd =
      app.add_subcommand("tokenize", "train a BPE tokenizer and write token shards");
  tokenize_cmd->add_option("--input", tok.inputs, "text files, in order")->required();
  tokenize_cmd->add_option("--vocab-size", tok.vocab_size, "vocabulary size to train");
  tokenize_cmd->add_option("--out", tok.out_dir, "output directory")->required();
  tokenize_cmd->add_option("--val-fraction", tok.val_fraction,
                           "last fraction of the text kept for validation (default 0.1)");
  tokenize_cmd->add_option("--tokenizer", tok.tokenizer, "reuse this tokenizer.bpe");

  launch::SampleArgs smp;
  CLI::App* sample_cmd = app.add_subcommand("sample", "generate text from trained weights");
  sample_cmd->add_option("--ckpt", smp.ckpt, "weights: .safetensors file or model directory")
      ->required();
  sample_cmd->add_option("--tokenizer", smp.tokenizer, "tokenizer.bpe of the training data");
  sample_cmd->add_option("--prompt", smp.prompt, "text to continue");
  sample_cmd->add_option("--prompt-ids", smp.prompt_ids, "or: token ids to continue (1,2,3)")
      ->delimiter(',');
  sample_cmd->add_option("--logits-out", smp.logits_out,
                         "write the prompt's logits (positions x vocabulary, fp32) here");
  sample_cmd->add_flag("--print-ids", smp.print_ids, "print token ids instead of text");
  sample_cmd->add_flag("--no-cache", smp.no_cache,
                       "no KV cache: run the whole window for every new token (the reference)");
  sample_cmd->add_option("--tokens", smp.tokens, "tokens to generate (default 200)");
  sample_cmd->add_option("--temperature", smp.temperature, "softmax temperature (default 0.8)");
  sample_cmd->add_option("--top-k", smp.top_k, "sample among the k most likely (default 40)");
  sample_cmd->add_option("--seed", smp.seed, "random seed (default 1)");
  sample_cmd->add_option("--set", smp.sets, "model fields for files without metadata");

  launch::ReshardArgs rsh;
  CLI::App* reshard_cmd = app.add_subcommand("reshard", "rewrite a checkpoint for another layout");
  reshard_cmd->add_option("--in", rsh.in, "checkpoint directory")->required();
  reshard_cmd->add_option("--out", rsh.out, "new checkpoint directory (must not exist)")
      ->required();
  reshard_cmd->add_option("--world", rsh.world, "ranks of the new layout")->required();
  reshard_cmd->add_option("--set", rsh.sets,
                          "new layout fields: parallel.tp=T parallel.zero_stage=S");
  reshard_cmd->add_option("--buffer-mb", rsh.buffer_mb, "streaming buffer (default 64)");

  std::string inspect_dir;
  CLI::App* inspect_cmd =
      app.add_subcommand("inspect", "print a checkpoint's manifest and verify every checksum");
  inspect_cmd->add_option("checkpoint", inspect_dir, "checkpoint directory")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "shardtrain: error: %s (see shardtrain --help)\n", e.what());
    return 2;
  }

  try {
    const LogLevel level = parse_log_level(log_level);
    log_configure(/*rank=*/0, /*world_size=*/1, log_all_ranks, level);
    if (train_cmd->parsed()) {
      if (!device.empty()) train.sets.push_back("train.device=" + device);  // wins over --set
      if (!train_tokenizer.empty()) train.sets.push_back("data.tokenizer=" + train_tokenizer);
      return launch::run_train(train, level, log_all_ranks);
    }
    if (export_cmd->parsed() || sample_cmd->parsed()) launch::require_cpu_kernels();
    if (export_cmd->parsed()) return launch::run_export(exp);
    if (memplan_cmd->parsed()) return launch::run_memplan(plan);
    if (tokenize_cmd->parsed()) {
      if (tok.tokenizer.empty() && tok.vocab_size == 0) {
        throw UserError("tokenize: give --vocab-size N (or --tokenizer FILE to reuse one)");
      }
      return launch::run_tokenize(tok);
    }
    if (sample_cmd->parsed()) return launch::run_sample(smp);
    if (reshard_cmd->parsed()) return launch::run_reshard(rsh);
    if (inspect_cmd->parsed()) return launch::run_inspect(inspect_dir);
    return 2;  // unreachable: CLI11 requires one subcommand
  } catch (const UserError& e) {
    std::fprintf(stderr, "shardtrain: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shardtrain: internal error: %s\n", e.what());
    return 1;
  }
}
