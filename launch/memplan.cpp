// memplan.cpp — `shardtrain memplan`: validate, plan (parallel/memplan.h), print.
//
// Nothing here allocates model-sized memory or needs MPI: a 7B model on 64 ranks is planned
// on a laptop. The JSON keys are an interface (ARCHITECTURE.md); the text form is for people
// and may change.
#include "launch/memplan.h"

#include <cstdio>
#include <iostream>

#include "parallel/memplan.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace shardtrain::launch {
namespace {

using parallel::format_bytes;

nlohmann::json categories_json(const parallel::CategoryBytes& b) {
  nlohmann::json j = nlohmann::json::object();
  for (int c = 0; c < kNumMemCategories; ++c) j[mem_category_name(MemCategory(c))] = b[size_t(c)];
  return j;
}

const char* proto_dtype_name(proto::DType d) {
  return d == proto::BF16 ? "BF16" : d == proto::F16 ? "F16" : "F32";
}

// ", recompute FULL (first 4 blocks)", or nothing for NONE.
std::string recompute_text(const nlohmann::json& layout) {
  const std::string mode = layout["recompute"].get<std::string>();
  if (mode == "NONE") return "";
  const int64_t n = layout["recompute_layers"].get<int64_t>();
  return str_cat(", recompute ", mode, n > 0 ? str_cat(" (first ", n, " blocks)") : "");
}

void print_text(const nlohmann::json& j, const Config& c) {
  const auto& L = j["layout"];
  std::printf("model: %d layers, %d heads, width %d, vocab %d, context %d: %lld parameters\n",
              c.model().n_layer(), c.model().n_head(), c.model().d_model(), c.model().vocab_size(),
              c.model().seq_len(), (long long)j["num_params"].get<int64_t>());
  std::printf(
      "layout: %d ranks = dp %d x tp %d, ZeRO stage %d, %s compute, %s gradients, "
      "micro-batch %d x %d tokens%s%s\n\n",
      L["world"].get<int>(), L["dp"].get<int>(), L["tp"].get<int>(), L["zero_stage"].get<int>(),
      L["compute"].get<std::string>().c_str(), L["grad_dtype"].get<std::string>().c_str(),
      L["micro_batch"].get<int>(), L["seq_len"].get<int>(),
      L["sequence_parallel"].get<bool>() ? ", sequence parallel" : "", recompute_text(L).c_str());
  std::printf("bytes per rank      %14s %14s %14s\n", "peak", "steady", "at total peak");
  for (int cat = 0; cat < kNumMemCategories; ++cat) {
    const char* name = mem_category_name(MemCategory(cat));
    std::printf("  %-17s %14s %14s %14s\n", name,
                format_bytes(j["rank_bytes"][name].get<int64_t>()).c_str(),
                format_bytes(j["steady_bytes"][name].get<int64_t>()).c_str(),
                format_bytes(j["at_peak_bytes"][name].get<int64_t>()).c_str());
  }
  std::printf("  %-17s %14s %14s\n", "total",
              format_bytes(j["rank_bytes"]["total"].get<int64_t>()).c_str(),
              format_bytes(j["steady_bytes"]["total"].get<int64_t>()).c_str());
  std::printf("  (padding: %s of the model states; total = the peak of the sum, %lld bytes)\n\n",
              format_bytes(j["rank_bytes"]["padding"].get<int64_t>()).c_str(),
              (long long)j["rank_bytes"]["total"].get<int64_t>());
  const int64_t device = j["device_memory"].get<int64_t>();
  std::printf("layouts on %d ranks, micro-batch %d, device memory %s:\n", L["world"].get<int>(),
              L["micro_batch"].get<int>(), format_bytes(device).c_str());
  std::printf("  %5s %4s %10s %14s %5s %16s\n", "stage", "tp", "recompute", "peak/rank", "fits",
              "max micro-batch");
  for (const auto& row : j["candidates"]) {
    const bool config = row["zero_stage"] == L["zero_stage"] && row["tp"] == L["tp"] &&
                        row["recompute"] == L["recompute"];
    std::printf("  %5d %4d %10s %14s %5s %16lld%s\n", row["zero_stage"].get<int>(),
                row["tp"].get<int>(), row["recompute"].get<std::string>().c_str(),
                format_bytes(row["total"].get<int64_t>()).c_str(),
                row["fits"].get<bool>() ? "yes" : "no",
                (long long)row["max_micro_batch"].get<int64_t>(), config ? "   <- config" : "");
  }
}

}  // namespace

nlohmann::json memplan_json(const Config& config, int world, int64_t device_bytes) {
  const parallel::MemPlanInput in = parallel::MemPlanInput::from_config(config, world);
  const parallel::MemPlan plan = parallel::plan_memory(in);
  nlohmann::json j;
  j["rank_bytes"] = categories_json(plan.peak);
  j["rank_bytes"]["total"] = plan.peak_total;
  j["rank_bytes"]["padding"] = plan.padding;
  j["steady_bytes"] = categories_json(plan.steady);
  int64_t steady = 0;
  for (int64_t b : plan.steady) steady += b;
  j["steady_bytes"]["total"] = steady;
  j["at_peak_bytes"] = categories_json(plan.at_peak);
  j["num_params"] = plan.num_params;
  j["device_memory"] = device_bytes;
  j["fits"] = plan.peak_total <= device_bytes;
  j["layout"] = {{"world", world},
                 {"dp", plan.dp},
                 {"tp", in.tp},
                 {"zero_stage", in.zero_stage},
                 {"micro_batch", in.B},
                 {"seq_len", in.T},
                 {"sequence_parallel", in.sequence_parallel},
                 {"recompute", proto::Recompute_Name(in.recompute)},
                 {"recompute_layers", in.recompute_layers},
                 {"compute", proto_dtype_name(config.precision().compute())},
                 {"grad_dtype", proto_dtype_name(config.precision().grad_accum_dtype())}};
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& c : parallel::plan_candidates(in, device_bytes)) {
    rows.push_back({{"zero_stage", c.zero_stage},
                    {"tp", c.tp},
                    {"recompute", proto::Recompute_Name(c.recompute)},
                    {"total", c.total},
                    {"fits", c.fits},
                    {"max_micro_batch", c.max_micro_batch}});
  }
  j["candidates"] = rows;
  return j;
}

int run_memplan(const MemplanArgs& args) {
  // 1. Flags and config, every problem a one-line UserError before any work.
  if (args.world < 1) throw UserError(str_cat("memplan: --world must be >= 1, got ", args.world));
  if (args.format != "text" && args.format != "json") {
    throw UserError(str_cat("memplan: --format '", args.format, "' is not one of text, json"));
  }
  const int64_t device = parallel::parse_byte_size(args.device_memory, "--device-memory");
  Config config = load_config_file(args.config);
  apply_overrides(config, args.sets);
  validate_config(config, args.world, ValidateFor::kPlan);

  // 2. Plan and print.
  const nlohmann::json j = memplan_json(config, args.world, device);
  if (args.format == "json") {
    std::cout << j.dump(2) << "\n";
  } else {
    print_text(j, config);
  }
  return 0;
}

}  // namespace shardtrain::launch
