// zero.h — the ZeRO engine: who holds which parameters, gradients and optimizer state.
//
// Every unit of the model (models/gpt.h) is one flat buffer of P elements, padded so that P
// is a multiple of dp x kAlign; data-parallel rank r owns the shard [r*S, (r+1)*S), S = P/dp.
// The stages differ only in what a rank keeps (REFERENCE.md, Rajbhandari et al.):
//   stage 0: everything, full size (plain data parallelism; AdamW runs redundantly);
//   stage 1: full params and grads, optimizer state (fp32 master, m, v) for the shard;
//   stage 2: full params, gradient and optimizer state for the shard;
//   stage 3: shards only; a unit's params are all-gathered before use and freed after.
// Reductions are ring reduce-scatters of each unit into its owner's shard (all-reduce =
// reduce-scatter + all-gather), split into pieces of at most parallel.bucket_mb. Because
// every stage reduces each element in the same ring order, and norms and updates are computed
// on the owned shard, a fixed layout gives bitwise the same training at every stage
// (grad_accum = 1; with accumulation, stages 0/1 sum micro-steps before the reduction and 2/3
// after, which agree to rounding).
//
// Overlap: reductions are issued the moment a unit's backward ends (grads_done) and run on
// the communication thread while the next unit computes; stage 3 prefetches the next unit's
// gather. Mixed precision: params in the compute dtype, gradients and optimizer state fp32;
// with fp32 compute the master weights are the parameters themselves.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "models/gpt.h"
#include "runtime/allocator.h"
#include "runtime/comm.h"
#include "runtime/proto/config.pb.h"
#include "runtime/tensor.h"

namespace shardtrain::parallel {

struct ZeroOptions {
  int stage = 0;
  DType compute = DType::kF32;
  double bucket_mb = 25;  // upper bound on one collective's payload
  bool overlap = true;    // reduce each unit as its backward ends (else all at the end)
};

// A run of one parameter's elements that a rank saves in checkpoints: its ZeRO shard, less
// vocabulary padding, and for tp-replicated parameters only on tp rank 0. Local element
// indices [begin, end) of parameter `param` of unit `unit`.
// What ZeroEngine::step_stats reads back once per optimizer step.
struct StepStats {
  double grad_sq = 0.0;   // squared global gradient norm (non-finite: an overflow somewhere)
  double loss_sum = 0.0;  // summed over the dp group
};

struct OwnedRun {
  int unit;
  int param;
  int64_t begin, end;
};
// Computed from the layout alone (no allocation): what rank (dp_rank, tp_rank) of a layout
// with `dp` data-parallel ranks saves. ZeroEngine and the offline resharder share it.
std::vector<OwnedRun> owned_runs_of(const models::GptDims& dims,
                                    const std::vector<models::UnitLayout>& layout, int dp,
                                    int dp_rank, int tp_rank);

class ZeroEngine final : public models::ParamSource {
 public:
  // Element alignment of every shard: 64 bytes of fp32.
  static constexpr int64_t kAlign = 16;

  // `dp`: this rank's data-parallel group (shards live within it); `tp`: its tensor-parallel
  // group when dims.tp > 1 (units then hold this tp rank's slices), else null. Every buffer
  // lives in `backend`'s memory (from `alloc`, which must hand it out) and is touched only
  // through `backend`; the communicators must move that memory.
  ZeroEngine(const models::GptDims& dims, const ZeroOptions& options, Communicator& dp,
             Communicator* tp, TrackingAllocator& alloc,
             kernels::Backend& backend = kernels::cpu_backend());
  ~ZeroEngine() override;

  // models::ParamSource.
  void acquire(int unit) override;
  const void* params(int unit) override;
  float* grads(int unit) override;
  void release(int unit) override;
  void grads_done(int unit) override;

  // Initial weights: seeded GPT-2 init, or a Hugging Face safetensors file. Every rank fills
  // only what it holds; values equal the unsharded ones by construction (models::init_param).
  void init_random(uint64_t seed);
  void load_hf(const std::string& path);
  // Collective: gathers the fp32 master weights; rank 0 writes the file, with the model
  // config (text format) in its metadata as "shardtrain.model".
  void export_hf(const std::string& path, const std::string& model_config);

  // One optimizer step: begin_step(), then per micro-step begin_micro_step(last) + the model's
  // forward/backward, then finish_backward(), step_stats(), adamw_step().
  void begin_step();
  void begin_micro_step(bool last);
  // Before a forward without backward (evaluation, sampling): restarts the prefetch order.
  void begin_forward_only() { acquire_pos_ = 0; }
  void finish_backward();
  // The step's statistics, read back in the step's one host wait for the device: grad_sq, the
  // sum of squared gradient elements over the whole model and all ranks (each element counted
  // once: ZeRO shards partition it over dp; replicated tp parameters count on tp rank 0), and
  // loss_sum, the dp group's sum of `loss_sum` (one double in the backend's memory, such as
  // models::Gpt::loss_sum()).
  StepStats step_stats(const double* loss_sum);
  // Its scratch: one double per parameter of `layout` (the most runs a rank can have) and two
  // more, so the bytes are the same on every rank and memplan predicts them.
  static int64_t grad_sq_slots(const std::vector<models::UnitLayout>& layout);
  // AdamW on the owned shard (grads * grad_scale first), then parameters made whole again.
  void adamw_step(const proto::OptimizerConfig& o, double lr, int64_t step, float grad_scale);

  // ---- State access for checkpoints (parallel/checkpoint.h) ----
  enum class StateKind { kMaster = 0, kAdamM = 1, kAdamV = 2 };
  std::vector<OwnedRun> owned_runs() const {
    return owned_runs_of(dims_, layout_, dp_.size(), dp_.rank(), tp_rank_);
  }
  // fp32 state of an owned run's elements, copied to the host: element `local` of the run's
  // parameter is at [local - run.begin].
  std::vector<float> state_values(const OwnedRun& run, StateKind kind) const;
  // Replaces every state element this rank holds (master -> parameters too, and the moments)
  // with values from `fill(kind, param, lo, hi, out)`, local indices [lo, hi) of `param`.
  using StateFill =
      std::function<void(StateKind, const models::ParamInfo&, int64_t, int64_t, float*)>;
  void load_state(const StateFill& fill);
  int tp_rank() const { return tp_rank_; }
  const models::GptDims& dims() const { return dims_; }

  // Test hook (train --inject-overflow-step): makes this rank's gradients non-finite.
  void poison_grads_for_test();

  const std::vector<models::UnitLayout>& layout() const { return layout_; }
  int64_t padded_numel(int unit) const;
  int64_t shard_numel(int unit) const;

 private:
  struct Unit;
  struct PendingReduce;

  void gather_start(int unit);
  void gather_wait(int unit);
  void complete_oldest_reduce();
  void start_reduce(int unit);
  void flush_reductions();  // issue deferred reductions, then complete every pending one
  // Values of unit elements [begin, end) from `source` (seeded init or file) into out.
  template <class Fill>
  void fill_holdings(Fill fill);
  Tensor zeros(int64_t count, DType t, MemCategory c, const std::string& tag);

  models::GptDims dims_;
  ZeroOptions options_;
  Communicator& dp_;
  Communicator* tp_;
  int tp_rank_ = 0;
  // Llama with tp > n_kv_head: the tp ranks holding the same K/V heads (models::TpSplit::
  // kRowGroups), whose gradients of those heads are partial sums to add; this rank's place
  // among them (the first counts them in the norm and saves them).
  std::unique_ptr<Communicator> kv_replicas_;
  int kv_replica_rank_ = 0;
  TrackingAllocator& alloc_;
  kernels::Backend& be_;
  std::vector<models::UnitLayout> layout_;
  std::vector<std::unique_ptr<Unit>> units_;
  std::vector<std::unique_ptr<PendingReduce>> pending_;
  int64_t piece_;  // elements per rank chunk in one collective
  bool last_micro_ = true;
  std::vector<int> deferred_;  // units whose reduction waits for finish_backward (no overlap)
  // Stage 3 prefetch: the order the model acquires units in, and where we are in it.
  std::vector<int> acquire_order_;
  size_t acquire_pos_ = 0;
};

}  // namespace shardtrain::parallel
