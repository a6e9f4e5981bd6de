// train.cpp — the training loop: data, model, optimizer, metrics, in that order per step.
//
// One optimizer step = grad_accum micro-steps of forward + backward (gradients accumulate in
// fp32), then the global gradient norm, clipping, the learning-rate schedule and AdamW. The
// loss is the mean over every target token of the step's global batch, so each micro-step's
// backward is weighted by 1 / (B * T * grad_accum * dp). Rank 0 writes one JSON metrics line
// per step and a readable progress line every train.log_every steps.
#include "launch/train.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "models/data.h"
#include "models/gpt.h"
#include "parallel/local_params.h"
#include "parallel/optimizer.h"
#include "runtime/config.h"
#include "runtime/error.h"
#include "runtime/log.h"

namespace shardtrain::launch {
namespace {

using Clock = std::chrono::steady_clock;

DType compute_dtype(const Config& c) {
  switch (c.precision().compute()) {
    case proto::BF16: return DType::kBF16;
    case proto::F16: return DType::kF16;
    default: return DType::kF32;
  }
}

void init_params(parallel::LocalParams& params, const Config& c) {
  if (!c.model().init_from().empty()) {
    params.load_hf(c.model().init_from());
    log_info("initialised from ", c.model().init_from());
  } else {
    params.init_random(c.train().seed());
  }
}

template <class S>
double evaluate(models::Gpt<S>& model, parallel::LocalParams& params, models::DataLoader& val,
                int batches, int64_t B, int64_t T) {
  std::vector<int32_t> inputs(size_t(B * T)), targets(size_t(B * T));
  val.set_position(0);  // the same validation windows every time
  double sum = 0.0;
  for (int i = 0; i < batches; ++i) {
    val.next(inputs.data(), targets.data());
    sum += model.forward(params, inputs.data(), targets.data());
  }
  return sum / double(int64_t(batches) * B * T);
}

template <class S>
int train_loop(const Config& c, const TrainArgs& args) {
  const auto& d = c.data();
  const int64_t B = d.micro_batch(), T = c.model().seq_len(), accum = d.grad_accum();
  const int64_t steps = c.train().steps();
  const int dp = 1, dp_rank = 0;

  TrackingAllocator alloc;
  const models::GptDims dims = models::GptDims::from_config(c.model());
  auto train_stream = std::make_shared<models::TokenStream>(
      models::expand_paths({d.train().begin(), d.train().end()}, "data.train"), dims.V);
  models::DataLoader loader(train_stream, B, T, dp_rank, dp);
  std::unique_ptr<models::DataLoader> val;
  if (c.train().eval_every() > 0) {
    auto val_stream = std::make_shared<models::TokenStream>(
        models::expand_paths({d.val().begin(), d.val().end()}, "data.val"), dims.V);
    val = std::make_unique<models::DataLoader>(val_stream, B, T, dp_rank, dp);
  }
  std::ofstream metrics;
  if (!args.metrics.empty()) {
    metrics.open(args.metrics, std::ios::trunc);
    if (!metrics) throw UserError(str_cat("--metrics ", args.metrics, ": cannot write"));
  }

  parallel::LocalParams params(dims, dtype_of<S>(), alloc);
  init_params(params, c);
  models::Gpt<S> model(dims, B, T, alloc);
  int64_t num_params = 0;
  for (const auto& u : params.layout()) num_params += u.numel;
  log_info("model: ", dims.L, " layers, ", dims.H, " heads, width ", dims.C, ", vocab ", dims.V,
           ", context ", dims.Tmax, ": ", num_params, " parameters; ", dtype_name(dtype_of<S>()),
           " compute; ", train_stream->num_tokens(), " training tokens");

  std::vector<int32_t> inputs(size_t(B * T)), targets(size_t(B * T));
  const int64_t tokens_per_step = B * T * accum * dp;
  const float grad_weight = float(1.0 / double(tokens_per_step));
  for (int64_t step = 1; step <= steps; ++step) {
    const auto t0 = Clock::now();
    alloc.set_phase("forward_backward");
    params.zero_grads();
    double loss_sum = 0.0;
    for (int64_t micro = 0; micro < accum; ++micro) {
      loader.next(inputs.data(), targets.data());
      loss_sum += model.forward(params, inputs.data(), targets.data());
      model.backward(params, grad_weight);
    }
    alloc.set_phase("optimizer");
    const double loss = loss_sum / double(tokens_per_step);
    const double grad_norm = std::sqrt(params.grad_sq_sum());
    const double lr = parallel::learning_rate(c.optimizer(), step, steps);
    const double coef = parallel::clip_coefficient(grad_norm, c.optimizer().grad_clip());
    params.adamw_step(c.optimizer(), lr, step, float(coef));
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();

    nlohmann::json m = {{"step", step},
                        {"loss", loss},
                        {"lr", lr},
                        {"grad_norm", grad_norm},
                        {"loss_scale", 1.0},
                        {"skipped", false},
                        {"tokens_per_s", double(tokens_per_step) / secs},
                        {"step_ms", secs * 1e3},
                        {"mem_peak_bytes", alloc.stats().peak_total}};
    const bool do_eval = val && (step % c.train().eval_every() == 0 || step == steps);
    if (do_eval) {
      alloc.set_phase("eval");
      m["val_loss"] = evaluate(model, params, *val, c.train().eval_batches(), B, T);
    }
    if (metrics.is_open()) metrics << m.dump() << "\n" << std::flush;
    if (step % c.train().log_every() == 0 || step == steps || do_eval) {
      char line[256];
      std::snprintf(line, sizeof line,
                    "step %5lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | %.1f ms",
                    (long long)step, (long long)steps, loss, lr, grad_norm,
                    double(tokens_per_step) / secs, secs * 1e3);
      std::string text = line;
      if (do_eval) text += str_cat(" | val_loss ", m["val_loss"].get<double>());
      log_info(text);
    }
  }
  if (!args.export_final.empty()) {
    params.export_hf(args.export_final);
    log_info("wrote ", args.export_final);
  }
  return 0;
}

}  // namespace

int run_train(const TrainArgs& args) {
  Config config = load_config_file(args.config);
  apply_overrides(config, args.sets);
  validate_config(config, /*world_size=*/1, ValidateFor::kTrain);
  log_info("effective config:\n", config_to_text(config));
  if (args.dry_run) return 0;
  if (!args.resume.empty()) throw UserError("--resume: checkpoints are not built yet (issue [checkpoint])");
  if (!args.memory_report.empty()) throw UserError("--memory-report: not built yet (issue [memory])");
  if (config.train().device() != "cpu") {
    throw UserError(str_cat("train.device '", config.train().device(),
                            "' is not built yet (issue [cuda]); use cpu"));
  }
  switch (compute_dtype(config)) {
    case DType::kBF16: return train_loop<BFloat16>(config, args);
    case DType::kF16: return train_loop<Half>(config, args);
    default: return train_loop<float>(config, args);
  }
}

int run_export(const ExportArgs& args) {
  if (!args.in.empty()) throw UserError("export --in: checkpoints are not built yet (issue [checkpoint])");
  if (args.config.empty()) throw UserError("export: give --in CKPT or --config FILE");
  Config config = load_config_file(args.config);
  apply_overrides(config, args.sets);
  validate_config(config, /*world_size=*/0, ValidateFor::kPlan);
  TrackingAllocator alloc;
  parallel::LocalParams params(models::GptDims::from_config(config.model()), DType::kF32, alloc);
  init_params(params, config);
  params.export_hf(args.out);
  log_info("wrote ", args.out);
  return 0;
}

}  // namespace shardtrain::launch
