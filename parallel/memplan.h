// memplan.h — predicts, without allocating anything, the bytes each rank holds by category.
//
// The prediction is not a textbook formula: it replays what shardtrain itself allocates, so
// that a measured memory report can be checked against it byte for byte.
//  - Model states (params, master_params, grads, optimizer_state) follow ZeroEngine
//    (parallel/zero.h) exactly: the same unit layout (models::gpt_layout), the same padding of
//    every unit to a multiple of dp x ZeroEngine::kAlign elements, the same aliasing (fp32
//    compute: the master weights are the parameters).
//  - Activations and workspace are the tensors models::Gpt's constructor allocates, by shape
//    and dtype (they live for the whole run).
//  - Transient buffers are found by replaying one training step's protocol between the model
//    and the engine (acquire / release / grads / grads_done / finish_backward) unit by unit:
//    stage 2-3 full-size gradient buffers and reduce-scatter shards, stage 3 gathered units
//    with prefetch. The replay yields each category's peak and the peak of the total.
// The replay is O(units), so a 7B model on 64 ranks is planned in microseconds, and the
// candidate table (every ZeRO stage x tensor-parallel degree, with the largest micro-batch
// that fits) costs a few thousand replays.
//
// Tensor and sequence parallelism use the model's own tp layout and activation shapes.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/dtype.h"
#include "runtime/proto/config.pb.h"

namespace shardtrain::parallel {

// Everything the prediction depends on. Shapes: B micro-batch, T sequence (= seq_len).
struct MemPlanInput {
  int64_t L = 0, H = 0, C = 0, V = 0, Tmax = 0;  // model (V before padding)
  // Llama (arch LLAMA): K/V heads, FFN width, untied head; 0 / unset: from the defaults of
  // models::GptDims::from_config.
  bool llama = false;
  int64_t KV = 0, F = 0;
  bool tied = false;
  int64_t B = 1, T = 0;
  int64_t grad_accum = 1;  // micro-steps per step: buffers left pending carry into the next
  int world = 1, tp = 1, zero_stage = 0;
  bool sequence_parallel = false;
  bool overlap = true;  // parallel.overlap: reductions issued during the backward
  proto::Recompute recompute = proto::NONE;  // parallel.recompute
  int64_t recompute_layers = 0;              // FULL: the first N blocks (0: all)
  bool eval = true;  // validation forwards between steps (train.eval_every > 0)
  DType compute = DType::kF32;
  DType grad = DType::kF32;  // gradient buffers: fp32, or 16-bit (precision.grad_accum_dtype)
  static MemPlanInput from_config(const proto::Config& c, int world);
};

using CategoryBytes = std::array<int64_t, kNumMemCategories>;

struct MemPlan {
  // Each category's peak over a training step (what the memory report's "peak" row shows).
  CategoryBytes peak{};
  // Held from set-up to the end (model states, activations, workspace): live between steps.
  CategoryBytes steady{};
  // The categories at the moment the total peaks, and that peak.
  CategoryBytes at_peak{};
  int64_t peak_total = 0;
  // Of the model-state bytes, how many are padding (units rounded up to dp x kAlign).
  int64_t padding = 0;
  int64_t num_params = 0;  // real parameters of the whole model (no padding), all tp ranks
  int64_t dp = 1;
};

MemPlan plan_memory(const MemPlanInput& in);

// One row of the comparison table: a layout with the configured micro-batch.
struct MemCandidate {
  int zero_stage = 0, tp = 1;
  proto::Recompute recompute = proto::NONE;  // FULL: the configured recompute_layers, or all
  int64_t total = 0;            // predicted peak bytes per rank at the configured micro-batch
  bool fits = false;            // total <= device memory
  int64_t max_micro_batch = 0;  // largest B whose peak fits (0: not even B = 1)
};

// Every tp dividing both n_head and the world x every ZeRO stage (0-3) x every recomputation
// mode (NONE, SELECTIVE, FULL), in that nesting order.
std::vector<MemCandidate> plan_candidates(const MemPlanInput& in, int64_t device_bytes);

// The ZeRO paper's model-state formula (Rajbhandari et al., REFERENCE.md) for psi parameters
// on nd data-parallel ranks, with param_bytes / grad_bytes per element and k_bytes of optimizer
// state per element (K = 12 for fp32 master + Adam m, v). Stages 0-3; bytes per rank.
double zero_paper_bytes(double psi, int64_t nd, int stage, double param_bytes, double grad_bytes,
                        double k_bytes);

// "80GiB", "40GB", "512MiB", "1.5TiB", "1073741824" -> bytes; UserError naming `flag` else.
int64_t parse_byte_size(const std::string& text, const std::string& flag);
// 1536 -> "1.50 KiB".
std::string format_bytes(int64_t bytes);

}  // namespace shardtrain::parallel
