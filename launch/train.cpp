// train.cpp — the training loop: data, model, ZeRO engine, optimizer, metrics, per step.
//
// One optimizer step = grad_accum micro-steps of forward + backward on every data-parallel
// rank (gradient reductions overlap the backward inside the ZeRO engine), then the global
// gradient norm, the inf/nan check (every rank skips together), clipping, the schedule and
// AdamW. The loss is the mean over every target token of the step's global batch, so each
// micro-step's backward is weighted by loss_scale / (B * T * grad_accum * dp).
//
// Throughput per step (metrics and the progress line): `tflops` is the step's model FLOPs
// (models/flops.h: 6 N + 12 L C T per token, PaLM's count) over its time, per device, i.e.
// divided by the world size (dp x tp: each rank does its share); `mfu` divides that by the
// GPU's dense bf16/fp16 peak where runtime/gpu_peak.h knows the GPU (cuda only); `eta_s` is the
// steps left times the mean step time of the recent steps (RecentStepTime below);
// `host_syncs` (cuda and cuda-emu) is how often the host waited for the device during the step
// (runtime/host_sync.h): the loss, norm and overflow flag come back in one read-back at the
// step's end (ZeroEngine::step_stats), so a steady step has exactly one.
//
// Failure: problems found while setting up (config, data files, weights) are agreed on by
// all ranks, reported once by the lowest failing rank, and every rank exits 2. A failure
// during training is one rank's: it is reported and MPI_Abort ends the whole job at once.
#include "launch/train.h"

#include <google/protobuf/text_format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "kernels/cpu/cpu_isa.h"
#include "kernels/profiler.h"
#include "launch/device.h"
#include "launch/hf_export.h"
#include "launch/memory_report.h"
#include "launch/profile_report.h"
#include "models/data.h"
#include "models/flops.h"
#include "models/gpt.h"
#include "parallel/checkpoint.h"
#include "parallel/loss_scaler.h"
#include "parallel/optimizer.h"
#include "parallel/zero.h"
#include "runtime/config.h"
#include "runtime/error.h"
#include "runtime/gpu_peak.h"
#include "runtime/host_sync.h"
#include "runtime/log.h"
#include "runtime/mpi_comm.h"

namespace shardtrain::launch {
namespace {

using Clock = std::chrono::steady_clock;

DType compute_dtype(const Config& c) {
  switch (c.precision().compute()) {
    case proto::BF16:
      return DType::kBF16;
    case proto::F16:
      return DType::kF16;
    default:
      return DType::kF32;
  }
}

std::string model_text(const Config& c) {
  std::string text;
  proto::ModelConfig m = c.model();
  m.clear_init_from();  // where the weights came from is not part of their shape
  google::protobuf::TextFormat::PrintToString(m, &text);
  return text;
}

parallel::ZeroOptions zero_options(const Config& c) {
  return {c.parallel().zero_stage(), compute_dtype(c), c.parallel().bucket_mb(),
          c.parallel().overlap()};
}

void init_weights(parallel::ZeroEngine& engine, const Config& c) {
  if (!c.model().init_from().empty()) {
    engine.load_hf(c.model().init_from());
    log_info("initialised from ", c.model().init_from());
  } else {
    engine.init_random(c.train().seed());
  }
}

// The time one step takes now, for the ETA: the mean of the last kWindow steps' times, leaving
// out the first step this process runs (fresh or resumed), which also builds the oneDNN /
// cuBLASLt plans, grows the allocator's cache and first-touches every buffer (2-5x a later
// step of the tiny test GPT on the cpu backend here). Until a second step exists the first is
// all there is. Ten steps follow a change of speed (another job on the node) within ten steps
// and average out the step-to-step noise (up to 1.7x on shared cores). Evaluation and
// checkpoint time are not step time, so the ETA leaves them out too.
class RecentStepTime {
 public:
  static constexpr size_t kWindow = 10;
  // Adds one step's time in seconds; returns the estimate of a step's time from here on.
  double add(double secs) {
    if (steps_++ == 0) return secs;
    window_.push_back(secs);
    if (window_.size() > kWindow) window_.pop_front();
    double sum = 0.0;  // oldest first, as tests/parallel/train_runs.py recomputes it
    for (double s : window_) sum += s;
    return sum / double(window_.size());
  }

 private:
  int64_t steps_ = 0;
  std::deque<double> window_;
};

// "42s", "12m05s", "1h02m", "3d04h": two units at most, the last one rounded.
std::string format_eta(double secs) {
  char text[32];
  secs = std::max(secs, 0.0);
  const long long s = std::llround(secs), m = std::llround(secs / 60),
                  h = std::llround(secs / 3600);
  if (s < 60) {
    std::snprintf(text, sizeof text, "%llds", s);
  } else if (s < 3600) {
    std::snprintf(text, sizeof text, "%lldm%02llds", s / 60, s % 60);
  } else if (m < 24 * 60) {
    std::snprintf(text, sizeof text, "%lldh%02lldm", m / 60, m % 60);
  } else {
    std::snprintf(text, sizeof text, "%lldd%02lldh", h / 24, h % 24);
  }
  return text;
}

// Everything a run needs, built before the first step.
struct Run {
  Config config;
  int64_t B = 0, T = 0, accum = 0, steps = 0;
  RunDevice dev;  // backend, memory, dp/tp groups (tp: null when parallel.tp == 1)
  // --profile: dev.backend is then `profiling`, timing each call into `profile`.
  kernels::OpProfile profile;
  std::unique_ptr<kernels::Backend> profiling;
  models::GptDims dims{};
  std::unique_ptr<models::DataLoader> train, val;
  std::unique_ptr<parallel::ZeroEngine> engine;
  std::ofstream metrics;
  int64_t train_tokens = 0;
  // Where training starts: a fresh run, or what --resume loaded.
  parallel::TrainState resumed;
  bool has_resumed = false;
  std::string layout_text;
  Communicator* world = nullptr;
  HfExportPlan export_final;  // --export-final: where, checked at set-up (path empty: none)
};

// No collective may follow a step that can fail on one rank alone (files, weights): a failing
// rank goes straight to run_train's agreement reduction, and a peer waiting in another
// collective would hang. The splits come before any file is touched.
std::unique_ptr<Run> set_up(const TrainArgs& args, MpiRuntime& mpi) {
  auto run = std::make_unique<Run>();
  Config& c = run->config;
  require_cpu_kernels();
  c = load_config_file(args.config);
  apply_overrides(c, args.sets);
  validate_config(c, mpi.world_size(), ValidateFor::kTrain);
  set_comm_timeout_s(c.parallel().comm_timeout_s());
  log_info("effective config:\n", config_to_text(c));
  log_info("cpu: ", kernels::cpu::cpu_description());
  if (args.dry_run) return run;  // the config alone: no data, no weights
  // The report is written at the end; a directory rank 0 cannot write fails now instead.
  if (!args.memory_report.empty() && mpi.world_rank() == 0) {
    prepare_memory_report_dir(args.memory_report);
  }
  // The export target and tokenizer are checked now, not after the last step.
  if (!args.export_final.empty()) {
    run->export_final = plan_hf_export(args.export_final, "", c, mpi.world_rank() == 0);
  }
  if (c.precision().grad_accum_dtype() != proto::F32) {
    throw UserError("precision.grad_accum_dtype: only F32 gradient accumulation is built so far");
  }

  // train.threads, else this rank's share of the CPUs it is bound to (runtime/cpu_affinity.h).
  const CpuShare& cpus = mpi.cpu_share();
  const int threads = c.train().threads() > 0 ? c.train().threads() : cpus.threads;
  omp_set_num_threads(threads);
  log_debug("threads: ", threads, c.train().threads() > 0 ? " (train.threads)" : "",
            "; this rank may run on ", cpus.cpus, " CPUs, bound like ", cpus.sharers,
            " rank(s) of this node; CPU quota ", cpus.quota_cpus, " shared by ", cpus.quota_sharers,
            " rank(s)");

  const auto& d = c.data();
  run->B = d.micro_batch();
  run->T = c.model().seq_len();
  run->accum = d.grad_accum();
  run->steps = c.train().steps();
  // World = dp x tp with the tp ranks of a group adjacent (one node): world rank w is tp rank
  // w % tp of dp rank w / tp. The device (train.device) comes with its memory and groups.
  const int tp = c.parallel().tp();
  run->dims = models::GptDims::from_config(c.model(), tp, c.parallel().sequence_parallel());
  run->dims.recompute = models::recompute_of(c.parallel().recompute());
  run->dims.recompute_layers = c.parallel().recompute_layers();
  // The allocation timeline (24 bytes per event, a few dozen events per step) grows with the
  // run: it is recorded only for the memory report that draws it.
  run->dev = make_run_device(c.train().device(), mpi, tp,
                             !args.memory_report.empty() && !args.no_memory_timeline);
  if (!args.profile.empty()) {
    if (std::string(run->dev.backend->name()) != "cpu") {
      throw UserError(str_cat(
          "--profile times ops on the host, which is their time only on the "
          "cpu backend; train.device ",
          run->dev.backend->name(), " runs them asynchronously (use Nsight Systems there)"));
    }
    // Written at the end; a file rank 0 cannot write fails now instead.
    if (mpi.world_rank() == 0 && !std::ofstream(args.profile, std::ios::trunc)) {
      throw UserError(str_cat("--profile ", args.profile, ": cannot write"));
    }
    run->profiling = kernels::make_profiling_backend(*run->dev.backend, run->profile);
    run->dev.backend = run->profiling.get();
  }
  kernels::Backend& backend = *run->dev.backend;
  if (!backend.supports_attention(compute_dtype(c), run->dims.C / run->dims.H)) {
    throw UserError(str_cat("train.device ", backend.name(),
                            ": the CUDA attention kernels take bf16 or f16 compute with head_dim "
                            "64 or 128; this config has ",
                            proto::DType_Name(c.precision().compute()), " and head_dim ",
                            run->dims.C / run->dims.H));
  }
  const int dp = run->dev.dp->size(), dp_rank = run->dev.dp->rank();
  auto train_stream = std::make_shared<models::TokenStream>(
      models::expand_paths({d.train().begin(), d.train().end()}, "data.train"), run->dims.V);
  run->train_tokens = train_stream->num_tokens();
  run->train = std::make_unique<models::DataLoader>(train_stream, run->B, run->T, dp_rank, dp);
  if (c.train().eval_every() > 0) {
    auto val_stream = std::make_shared<models::TokenStream>(
        models::expand_paths({d.val().begin(), d.val().end()}, "data.val"), run->dims.V);
    run->val = std::make_unique<models::DataLoader>(val_stream, run->B, run->T, dp_rank, dp);
  }
  if (!args.metrics.empty() && mpi.world_rank() == 0) {
    run->metrics.open(args.metrics, std::ios::trunc);
    if (!run->metrics) throw UserError(str_cat("--metrics ", args.metrics, ": cannot write"));
  }
  run->engine = std::make_unique<parallel::ZeroEngine>(run->dims, zero_options(c), *run->dev.dp,
                                                       run->dev.tp.get(), *run->dev.alloc, backend);
  run->world = &mpi.world();
  run->layout_text =
      str_cat("world ", mpi.world_size(), " = dp ", dp, " x tp ", tp, ", ZeRO ",
              c.parallel().zero_stage(), ", ", proto::DType_Name(c.precision().compute()));
  const std::string ckpt =
      args.resume.empty() ? "" : parallel::resolve_checkpoint(args.resume, c.checkpoint().dir());
  if (!ckpt.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    run->resumed = parallel::load_checkpoint(ckpt, *run->engine);
    run->has_resumed = true;
    run->train->set_position(run->resumed.data_position);
    log_info("resumed from ", ckpt, " at step ", run->resumed.step, " (loaded in ",
             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), " s)");
  } else {
    if (!args.resume.empty()) log_info("--resume auto: no checkpoint yet, starting fresh");
    init_weights(*run->engine, c);
  }
  log_info("layout: ", run->layout_text, ", ", threads, " threads per rank");
  return run;
}

template <class S>
double evaluate(Run& run, models::Gpt<S>& model) {
  std::vector<int32_t> inputs(size_t(run.B * run.T)), targets(size_t(run.B * run.T));
  run.val->set_position(0);  // the same validation windows every time
  double sum = 0.0;
  const int batches = run.config.train().eval_batches();
  model.zero_loss_sum();
  for (int i = 0; i < batches; ++i) {
    run.val->next(inputs.data(), targets.data());
    run.engine->begin_forward_only();
    model.forward(*run.engine, inputs.data(), targets.data());
  }
  run.dev.backend->download(&sum, model.loss_sum(), 8);
  run.dev.dp->all_reduce_f64(&sum, 1, false);
  return sum / double(int64_t(batches) * run.B * run.T * run.dev.dp->size());
}

template <class S>
void train_loop(Run& run, const TrainArgs& args) {
  const Config& c = run.config;
  parallel::ZeroEngine& engine = *run.engine;
  models::Gpt<S> model(run.dims, run.B, run.T, *run.dev.alloc, run.dev.tp.get(), *run.dev.backend);
  int64_t num_params = 0;
  for (const auto& u : engine.layout()) num_params += u.numel;
  log_info("model: ", run.dims.L, " layers, ", run.dims.H, " heads, width ", run.dims.C, ", vocab ",
           run.dims.V, ", context ", run.dims.Tmax, ": ", num_params, " parameters; ",
           dtype_name(dtype_of<S>()), " compute; ", run.train_tokens, " training tokens");

  parallel::LossScaler scaler(c.precision().loss_scale(), dtype_of<S>() == DType::kF16);
  if (run.has_resumed && run.resumed.scaler.has_scale()) {
    scaler.restore(run.resumed.scaler.scale(), run.resumed.scaler.clean_steps(),
                   run.resumed.scaler.overflows());
  }
  const auto& ck = c.checkpoint();
  auto save = [&](int64_t step) {
    run.dev.alloc->set_phase("checkpoint");
    parallel::TrainState st;
    st.step = step;
    st.data_position = run.train->position();
    st.scaler.set_scale(scaler.scale());
    st.scaler.set_clean_steps(scaler.clean_steps());
    st.scaler.set_overflows(scaler.overflows());
    parallel::SaveFault fault;
    if (step == args.save_fault_step) {
      fault.rank = args.fault_rank;
      fault.stall = args.save_fault_stall;
      ST_CHECK(parallel::SaveFault::parse(args.save_fault_point, &fault.point), "--fault-point ",
               args.save_fault_point);
    }
    parallel::save_checkpoint(ck.dir(), c, st, engine, *run.world, ck.keep(), run.layout_text,
                              fault);
  };
  std::vector<int32_t> inputs(size_t(run.B * run.T)), targets(size_t(run.B * run.T));
  const int64_t tokens_per_step = run.B * run.T * run.accum * run.dev.dp->size();
  // Model FLOPs of a whole step, shared by the world's dp x tp ranks.
  const int64_t world_size = run.dev.dp->size() * run.dims.tp;
  const double flops_per_token = models::gpt_train_flops_per_token(run.dims, run.T);
  const double step_flops = flops_per_token * double(tokens_per_step);
  const std::optional<double> peak_tflops = gpu_dense_peak_tflops(run.dev.gpu_name, dtype_of<S>());
  std::string mfu_note;  // cpu and cuda-emu have no GPU to name, and no peak
  if (peak_tflops) {
    mfu_note = str_cat("; mfu against ", run.dev.gpu_name, "'s ", *peak_tflops, " TFLOP/s");
  } else if (!run.dev.gpu_name.empty()) {
    mfu_note = str_cat("; no mfu: no ", dtype_name(dtype_of<S>()), " peak for ", run.dev.gpu_name,
                       " in runtime/gpu_peak.h");
  }
  log_info("model FLOPs: ", flops_per_token, " per token (6 N + 12 L C T), ", step_flops,
           " per step, shared by ", world_size, " devices", mfu_note);
  RecentStepTime recent;
  const bool gpu_backend = std::string(run.dev.backend->name()) != "cpu";
  const int world_rank =
      run.dev.dp->rank() * int(run.dims.tp) + (run.dev.tp ? run.dev.tp->rank() : 0);
  const int64_t first_step = run.has_resumed ? run.resumed.step + 1 : 1;
  // --profile: the steps after the first (which also builds oneDNN's kernels), if any.
  const int64_t first_profiled = first_step < run.steps ? first_step + 1 : first_step;
  for (int64_t step = first_step; step <= run.steps; ++step) {
    const bool profiled = run.profiling && step >= first_profiled;
    run.profile.set_enabled(profiled);
    const auto t0 = Clock::now();
    if (step == args.fault_step && world_rank == args.fault_rank) {
      throw InternalError(str_cat("injected fault at step ", step, " (--inject-fault)"));
    }
    const int64_t comm_before = run.dev.dp->bytes_sent();
    const int64_t tp_comm_before = run.dev.tp ? run.dev.tp->bytes_sent() : 0;
    const double loss_scale = scaler.scale();
    const float grad_weight = float(loss_scale / double(tokens_per_step));
    run.dev.alloc->set_phase("forward_backward");
    const int64_t syncs_before = host_sync_count();
    engine.begin_step();
    model.zero_loss_sum();
    for (int64_t micro = 0; micro < run.accum; ++micro) {
      engine.begin_micro_step(micro == run.accum - 1);
      run.train->next(inputs.data(), targets.data());
      model.forward(engine, inputs.data(), targets.data());
      model.backward(engine, grad_weight);
    }
    engine.finish_backward();
    if (step == args.overflow_step && world_rank == args.fault_rank) engine.poison_grads_for_test();
    run.dev.alloc->set_phase("optimizer");
    // Global norm, overflow flag and loss: one reduction, one read-back.
    const parallel::StepStats stats = engine.step_stats(model.loss_sum());
    const double sq = stats.grad_sq;
    const double loss = stats.loss_sum / double(tokens_per_step);
    const bool skipped = scaler.update(!std::isfinite(sq));
    const double grad_norm = std::sqrt(sq) / loss_scale;
    const double lr = parallel::learning_rate(c.optimizer(), step, run.steps);
    if (!skipped) {
      const double coef = parallel::clip_coefficient(grad_norm, c.optimizer().grad_clip());
      engine.adamw_step(c.optimizer(), lr, step, float(coef / loss_scale));
    } else {
      log_warn("step ", step, ": non-finite gradients, step skipped on every rank; loss scale ",
               loss_scale, " -> ", scaler.scale());
    }
    const int64_t host_syncs = host_sync_count() - syncs_before;
    const auto t1 = Clock::now();
    const double secs = std::chrono::duration<double>(t1 - t0).count();
    if (profiled) {
      run.profile.set_enabled(false);
      run.profile.add_step(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
    }
    const double eta_s = double(run.steps - step) * recent.add(secs);
    const double tflops = step_flops / secs / double(world_size) / 1e12;
    const int64_t comm_bytes = run.dev.dp->bytes_sent() - comm_before;
    const int64_t tp_comm_bytes = run.dev.tp ? run.dev.tp->bytes_sent() - tp_comm_before : 0;

    const MemStats mem = run.dev.alloc->stats();
    nlohmann::json live = nlohmann::json::object();
    for (int k = 0; k < kNumMemCategories; ++k) {
      live[mem_category_name(MemCategory(k))] = mem.live[size_t(k)];
    }
    nlohmann::json m = {{"step", step},
                        {"loss", loss},
                        {"lr", lr},
                        {"grad_norm", std::isfinite(grad_norm) ? grad_norm : -1.0},
                        {"loss_scale", loss_scale},
                        {"skipped", skipped},
                        {"tokens_per_s", double(tokens_per_step) / secs},
                        {"step_ms", secs * 1e3},
                        {"eta_s", eta_s},
                        {"tflops", tflops},
                        {"mem_peak_bytes", mem.peak_total},
                        {"mem_live_bytes", live},
                        {"comm_bytes", comm_bytes},
                        {"tp_comm_bytes", tp_comm_bytes}};
    if (peak_tflops) m["mfu"] = tflops / *peak_tflops;  // absent, not null, without a peak
    if (gpu_backend) m["host_syncs"] = host_syncs;      // the cpu backend has none to count
    const bool do_eval = run.val && (step % c.train().eval_every() == 0 || step == run.steps);
    if (do_eval) {
      run.dev.alloc->set_phase("eval");
      m["val_loss"] = evaluate(run, model);
    }
    if (run.metrics.is_open()) run.metrics << m.dump() << "\n" << std::flush;
    if (step % c.train().log_every() == 0 || step == run.steps || do_eval) {
      char line[256];
      std::snprintf(line, sizeof line,
                    "step %5lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | %.1f ms",
                    (long long)step, (long long)run.steps, loss, lr, grad_norm,
                    double(tokens_per_step) / secs, secs * 1e3);
      std::string text = str_cat(line, " | eta ", format_eta(eta_s));
      if (peak_tflops) {
        std::snprintf(line, sizeof line, " | mfu %.1f%%", 100.0 * tflops / *peak_tflops);
        text += line;
      }
      if (do_eval) text += str_cat(" | val_loss ", m["val_loss"].get<double>());
      log_info(text);
    }
    if (!ck.dir().empty() && ((ck.every() > 0 && step % ck.every() == 0) || step == run.steps)) {
      save(step);
    }
  }
  if (run.profiling && world_rank == 0) {
    write_profile_report(args.profile, run.profile, kernels::cpu::cpu_description());
  }
  if (!run.export_final.path.empty()) {
    write_hf_export(run.export_final, engine, c.model(), model_text(c), world_rank == 0);
  }
}

}  // namespace

int run_train(const TrainArgs& args, LogLevel level, bool log_all_ranks) {
  MpiRuntime mpi(nullptr, nullptr);
  log_configure(mpi.world_rank(), mpi.world_size(), log_all_ranks, level);
  Communicator& world = mpi.world();

  // 1. Set-up: every rank tries; all agree; the lowest failing rank reports.
  std::unique_ptr<Run> run;
  std::string error;
  int code = 0;
  try {
    run = set_up(args, mpi);
  } catch (const UserError& e) {
    error = e.what();
    code = 2;
  } catch (const std::exception& e) {
    error = str_cat("internal error: ", e.what());
    code = 1;
  }
  double agree[2] = {code != 0 ? -double(mpi.world_rank()) : -1e9, double(code)};
  world.all_reduce_f64(agree, 2, /*max=*/true);
  if (agree[1] != 0) {
    if (code != 0 && -agree[0] == double(mpi.world_rank())) {
      std::fprintf(stderr, "shardtrain: error: %s%s\n",
                   mpi.world_size() > 1 && mpi.world_rank() != 0
                       ? str_cat("[rank ", mpi.world_rank(), "] ").c_str()
                       : "",
                   error.c_str());
    }
    return int(agree[1]);
  }
  if (args.dry_run) return 0;

  // 2. Training: a failure on one rank ends the job.
  try {
    switch (compute_dtype(run->config)) {
      case DType::kBF16:
        train_loop<BFloat16>(*run, args);
        break;
      case DType::kF16:
        train_loop<Half>(*run, args);
        break;
      default:
        train_loop<float>(*run, args);
        break;
    }
    // 3. Memory report: collective, after the model's buffers are gone (peaks are kept).
    if (!args.memory_report.empty()) {
      write_memory_report(args.memory_report, *run->dev.alloc, world, run->config);
    }
  } catch (const std::exception& e) {
    const bool user = dynamic_cast<const UserError*>(&e) != nullptr;
    std::fprintf(stderr, "shardtrain: %s[rank %d] %s\n",
                 user ? "error: " : "internal error: ", mpi.world_rank(), e.what());
    std::fflush(stderr);
    MpiRuntime::abort(user ? 2 : 1);
  }
  return 0;
}

int run_export(const ExportArgs& args) {
  if (args.in.empty() == args.config.empty()) {
    throw UserError("export: give either --in CKPT or --config FILE");
  }
  Config config;
  if (!args.in.empty()) {
    config = parallel::read_manifest(args.in).config();
  } else {
    config = load_config_file(args.config);
    apply_overrides(config, args.sets);
  }
  validate_config(config, /*world_size=*/0, ValidateFor::kPlan);
  const HfExportPlan plan = plan_hf_export(args.out, args.tokenizer, config);
  MpiRuntime mpi(nullptr, nullptr);
  auto self = mpi.world().split(mpi.world_rank(), 0);  // a group of one
  TrackingAllocator alloc;
  parallel::ZeroEngine engine(models::GptDims::from_config(config.model()), {0, DType::kF32, 25},
                              *self, nullptr, alloc);
  if (!args.in.empty()) {
    parallel::load_checkpoint(args.in, engine);
  } else {
    init_weights(engine, config);
  }
  write_hf_export(plan, engine, config.model(), model_text(config), /*writer=*/true);
  return 0;
}

int run_reshard(const ReshardArgs& args) {
  Config config = parallel::read_manifest(args.in).config();
  apply_overrides(config, args.sets);
  validate_config(config, args.world, ValidateFor::kPlan);
  parallel::reshard_checkpoint(args.in, args.out, config, args.world,
                               int64_t(args.buffer_mb * 1048576.0));
  log_info("wrote ", args.out, " for ", args.world, " ranks (tp ", config.parallel().tp(),
           ", ZeRO ", config.parallel().zero_stage(), ")");
  return 0;
}

int run_inspect(const std::string& dir) {
  std::printf("%s", parallel::inspect_checkpoint(dir).c_str());
  return 0;
}

}  // namespace shardtrain::launch
