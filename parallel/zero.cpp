#include "parallel/zero.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "kernels/adamw.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"

namespace shardtrain::parallel {

struct ZeroEngine::Unit {
  int64_t numel = 0, padded = 0, shard = 0;  // n, P, S
  int64_t own_begin = 0;                     // r * S
  Tensor params;    // compute dtype: full P (stages 0-2) or the shard S (stage 3)
  Tensor gathered;  // stage 3: full P while acquired
  std::vector<std::unique_ptr<Work>> gather_works;  // one per piece, in issue order
  Tensor master;      // fp32: full P (stage 0) or shard S; for fp32 compute, params' memory
  Tensor m, v;        // fp32, like master
  Tensor grads;       // fp32: full P (stages 0-1) or shard S (stages 2-3), accumulated
  Tensor work_grads;  // stages 2-3: full P fp32 for this micro-step's backward
  bool grads_reduced = false;
};

struct ZeroEngine::PendingReduce {
  int unit;
  std::vector<std::unique_ptr<Work>> works;
  Tensor reduced;  // stages 2-3: the reduce-scatter output, added into the shard when done
};

namespace {

// Hugging Face GPT-2 files may carry the causal-mask buffers of old transformers versions
// (h.N.attn.bias of 4 dims, h.N.attn.masked_bias) and a tied lm_head.weight: not parameters.
// Tensors of a Hugging Face file that are not parameters of `dims`: GPT-2's lm_head.weight (the
// tied copy of wte; an untied Llama head is a parameter), the attention masks.
bool is_hf_non_parameter(const std::string& name, const SafetensorsTensor& t,
                         const models::GptDims& dims) {
  if (name == "lm_head.weight") return dims.tied;
  if (name.find(".attn.masked_bias") != std::string::npos) return true;
  return name.size() > 10 && name.compare(name.size() - 10, 10, ".attn.bias") == 0 &&
         t.shape.size() == 4;
}

}  // namespace

ZeroEngine::ZeroEngine(const models::GptDims& dims, const ZeroOptions& options, Communicator& dp,
                       Communicator* tp, TrackingAllocator& alloc, kernels::Backend& backend)
    : dims_(dims),
      options_(options),
      dp_(dp),
      tp_(tp),
      tp_rank_(tp ? tp->rank() : 0),
      alloc_(alloc),
      be_(backend),
      layout_(models::gpt_layout(dims)) {
  ST_CHECK(dims.tp == 1 || (tp != nullptr && tp->size() == dims.tp), "tp group required");
  ST_CHECK(options.stage >= 0 && options.stage <= 3, "ZeRO stage ", options.stage);
  if (tp_ && dims.arch == models::Arch::kLlama && dims.KV % dims.tp != 0) {
    const int replicas = int(dims.tp / dims.KV);  // ranks per K/V head
    kv_replicas_ = tp_->split(tp_rank_ / replicas, tp_rank_);
    kv_replica_rank_ = tp_rank_ % replicas;
  }
  const int64_t n = dp.size(), r = dp.rank();
  const int stage = options.stage;
  const bool f32 = options.compute == DType::kF32;
  // One collective moves about bucket_mb of fp32: n chunks of piece_ elements.
  piece_ = std::max<int64_t>(kAlign, int64_t(options.bucket_mb * 1048576.0 / 4.0) / n);
  for (const auto& lu : layout_) {
    auto u = std::make_unique<Unit>();
    u->numel = lu.numel;
    u->padded = (lu.numel + n * kAlign - 1) / (n * kAlign) * (n * kAlign);
    u->shard = u->padded / n;
    u->own_begin = r * u->shard;
    const int64_t full = u->padded, shard = u->shard;
    auto make = [&](int64_t count, DType t, MemCategory c, const char* what) {
      return zeros(count, t, c, lu.name + "." + what);
    };
    u->params = make(stage == 3 ? shard : full, options.compute, MemCategory::kParams, "params");
    if (f32) {
      u->master = stage == 0   ? u->params
                  : stage == 3 ? u->params
                               : u->params.view(u->own_begin, {shard});
    } else {
      u->master =
          make(stage == 0 ? full : shard, DType::kF32, MemCategory::kMasterParams, "master");
    }
    const int64_t opt_count = stage == 0 ? full : shard;
    u->m = make(opt_count, DType::kF32, MemCategory::kOptimizerState, "adam_m");
    u->v = make(opt_count, DType::kF32, MemCategory::kOptimizerState, "adam_v");
    u->grads = make(stage <= 1 ? full : shard, DType::kF32, MemCategory::kGrads, "grads");
    units_.push_back(std::move(u));
  }
  acquire_order_ = models::acquire_order(dims);  // the model's, for the prefetch
}

ZeroEngine::~ZeroEngine() {
  // Outstanding operations must finish before their buffers go.
  for (auto& p : pending_) {
    for (auto& w : p->works) w.reset();
  }
  for (auto& u : units_) u->gather_works.clear();
}

Tensor ZeroEngine::zeros(int64_t count, DType t, MemCategory c, const std::string& tag) {
  Tensor x = Tensor::empty({count}, t, alloc_, c, tag);
  be_.zero(x.raw(), x.bytes());
  return x;
}

int64_t ZeroEngine::padded_numel(int unit) const { return units_[size_t(unit)]->padded; }
int64_t ZeroEngine::shard_numel(int unit) const { return units_[size_t(unit)]->shard; }

// ---- Stage 3 gathers ----------------------------------------------------------------------

void ZeroEngine::gather_start(int unit) {
  Unit& u = *units_[size_t(unit)];
  if (u.gathered.defined()) return;
  u.gathered = Tensor::empty({u.padded}, options_.compute, alloc_, MemCategory::kParams,
                             layout_[size_t(unit)].name + ".gathered");
  const int64_t esz = dtype_bytes(options_.compute);
  const char* src = static_cast<const char*>(u.params.raw());
  char* dst = static_cast<char*>(u.gathered.raw());
  // Pieces of every rank's chunk, all issued now; each Work is kept (dropping one may wait for
  // it, on MPI) and waited for in gather_wait: on a GPU that is the compute stream waiting,
  // not the host, so the gather overlaps the kernels queued before it.
  for (int64_t off = 0; off < u.shard; off += piece_) {
    const int64_t count = std::min(piece_, u.shard - off);
    u.gather_works.push_back(
        dp_.all_gather_async(src + off * esz, dst + off * esz, count, options_.compute, u.shard));
  }
}

void ZeroEngine::gather_wait(int unit) {
  Unit& u = *units_[size_t(unit)];
  for (auto& w : u.gather_works) w->wait();
  u.gather_works.clear();
}

void ZeroEngine::acquire(int unit) {
  if (options_.stage != 3) return;
  gather_start(unit);  // no-op if prefetched
  gather_wait(unit);
  // Prefetch the next unit in the model's order while this one computes.
  if (acquire_pos_ < acquire_order_.size() && acquire_order_[acquire_pos_] == unit) ++acquire_pos_;
  if (acquire_pos_ < acquire_order_.size()) {
    int next = acquire_order_[acquire_pos_];
    if (next != unit) gather_start(next);
  }
}

void ZeroEngine::release(int unit) {
  if (options_.stage != 3) return;
  Unit& u = *units_[size_t(unit)];
  // The next acquisition of this same unit follows at once (the head after embeddings):
  // keep it rather than gather it again.
  if (acquire_pos_ < acquire_order_.size() && acquire_order_[acquire_pos_] == unit) return;
  gather_wait(unit);
  // On a GPU the unit's kernels may still be reading it: the caching allocator reuses the block
  // only in stream order after them (runtime/cuda/device.h), so no host wait here.
  u.gathered = Tensor();
}

const void* ZeroEngine::params(int unit) {
  Unit& u = *units_[size_t(unit)];
  if (options_.stage == 3) {
    ST_CHECK(u.gathered.defined() && u.gather_works.empty(), "unit ", unit,
             " used without acquire()");
    return u.gathered.raw();
  }
  return u.params.raw();
}

// ---- Gradients ----------------------------------------------------------------------------

float* ZeroEngine::grads(int unit) {
  Unit& u = *units_[size_t(unit)];
  if (options_.stage <= 1) return u.grads.data<float>();
  if (!u.work_grads.defined()) {
    u.work_grads = zeros(u.padded, DType::kF32, MemCategory::kGrads,
                         layout_[size_t(unit)].name + ".grad_work");
  }
  return u.work_grads.data<float>();
}

void ZeroEngine::grads_done(int unit) {
  if (options_.stage <= 1 && !last_micro_) return;  // accumulate locally until the last one
  if (!options_.overlap) {
    deferred_.push_back(unit);
    return;
  }
  start_reduce(unit);
  // Bound the full-size gradient buffers alive at stages 2-3: finish all but the newest.
  while (pending_.size() > 1) complete_oldest_reduce();
}

void ZeroEngine::start_reduce(int unit) {
  Unit& u = *units_[size_t(unit)];
  const int stage = options_.stage;
  auto p = std::make_unique<PendingReduce>();
  p->unit = unit;
  float* g = stage <= 1 ? u.grads.data<float>() : u.work_grads.data<float>();
  float* owned;
  if (stage <= 1) {
    owned = g + u.own_begin;  // reduce in place into the owned chunk
  } else {
    p->reduced = Tensor::empty({u.shard}, DType::kF32, alloc_, MemCategory::kCommBuffers,
                               layout_[size_t(unit)].name + ".grad_reduced");
    owned = p->reduced.data<float>();
  }
  for (int64_t off = 0; off < u.shard; off += piece_) {
    const int64_t count = std::min(piece_, u.shard - off);
    p->works.push_back(dp_.reduce_scatter_async(g + off, owned + off, count, DType::kF32, u.shard));
    if (stage == 0) {  // all-reduce = reduce-scatter + all-gather
      p->works.push_back(dp_.all_gather_async(owned + off, g + off, count, DType::kF32, u.shard));
    }
  }
  pending_.push_back(std::move(p));
}

void ZeroEngine::complete_oldest_reduce() {
  std::unique_ptr<PendingReduce> p = std::move(pending_.front());
  pending_.erase(pending_.begin());
  for (auto& w : p->works) w->wait();
  Unit& u = *units_[size_t(p->unit)];
  if (options_.stage >= 2) {
    // The add reads `reduced`, freed below: in stream order after it (no host wait).
    be_.add_f32(u.grads.data<float>(), p->reduced.data<float>(), u.shard);
    u.work_grads = Tensor();  // the full-size buffer does not survive its reduction
  }
}

void ZeroEngine::begin_step() {
  for (auto& u : units_) be_.zero(u->grads.raw(), u->grads.bytes());
  acquire_pos_ = 0;
}

void ZeroEngine::begin_micro_step(bool last) {
  // The previous micro-step's reductions must be done before this backward writes gradients
  // again (stages 2-3 reuse nothing: each unit's full-size buffer is new per micro-step).
  flush_reductions();
  last_micro_ = last;
  acquire_pos_ = 0;
}

void ZeroEngine::flush_reductions() {
  for (int unit : deferred_) start_reduce(unit);
  deferred_.clear();
  while (!pending_.empty()) complete_oldest_reduce();
}

void ZeroEngine::finish_backward() {
  flush_reductions();
  // Partial gradients to add over tp ranks, over the range the optimizer reads (all of it at
  // stage 0, the owned shard otherwise): under sequence parallelism each tp rank's replicated
  // parameters (LayerNorms, c_proj biases, wpe) saw only its rows, summed over the tp group;
  // replicated K/V heads (Llama, tp > n_kv_head) saw only the query heads of their rank, summed
  // over the ranks holding the same heads.
  const bool sp = dims_.sequence_parallel && tp_;
  if (!sp && !kv_replicas_) return;
  for (size_t ui = 0; ui < units_.size(); ++ui) {
    Unit& u = *units_[ui];
    const int64_t begin = options_.stage == 0 ? 0 : u.own_begin;
    const int64_t end = options_.stage == 0 ? u.padded : u.own_begin + u.shard;
    float* g = u.grads.data<float>() - (options_.stage >= 2 ? u.own_begin : 0);
    for (const auto& p : layout_[ui].params) {
      Communicator* group = p.split == models::TpSplit::kReplicated && sp ? tp_
                            : p.split == models::TpSplit::kRowGroups      ? kv_replicas_.get()
                                                                          : nullptr;
      if (group == nullptr) continue;
      const int64_t lo = std::max(begin, p.offset), hi = std::min(end, p.offset + p.numel());
      if (lo < hi) group->all_reduce(g + lo, hi - lo, DType::kF32);
    }
  }
}

int64_t ZeroEngine::grad_sq_slots(const std::vector<models::UnitLayout>& layout) {
  int64_t n = 0;
  for (const auto& u : layout) n += int64_t(u.params.size());
  return n;
}

StepStats ZeroEngine::step_stats(const double* loss_sum) {
  // Over the owned shard at every stage, so the sum (and its rounding) is the same for all:
  // one sum per run of adjacent counted parameters in a unit's shard (padding past the last
  // parameter holds zeros), added on the host in order. Parameters replicated over the tp
  // group have identical gradients on every tp rank: they count on tp rank 0 only; replicated
  // K/V heads on the first rank holding them.
  struct Range {
    const float* g;
    int64_t n;
  };
  std::vector<Range> ranges;
  for (size_t ui = 0; ui < units_.size(); ++ui) {
    Unit& u = *units_[ui];
    const float* g = u.grads.data<float>() + (options_.stage <= 1 ? u.own_begin : 0);
    const int64_t begin = u.own_begin, end = u.own_begin + u.shard;
    for (const auto& p : layout_[ui].params) {
      if (p.split == models::TpSplit::kReplicated && tp_rank_ != 0) continue;
      if (p.split == models::TpSplit::kRowGroups && kv_replica_rank_ != 0) continue;
      const int64_t lo = std::max(begin, p.offset), hi = std::min(end, p.offset + p.numel());
      if (lo >= hi) continue;
      if (!ranges.empty() && ranges.back().g + ranges.back().n == g + (lo - begin)) {
        ranges.back().n += hi - lo;  // continues the previous run
      } else {
        ranges.push_back({g + (lo - begin), hi - lo});
      }
    }
  }
  // One double per run, then (at `slots`) the rank's sum of squares and its loss sum: both
  // reduced over dp in one collective, the squares over tp too, all in the backend's memory;
  // then one read-back, the step's one wait for the device. The sums are added in run order,
  // from 0.0, as a host loop would add them.
  const int64_t slots = grad_sq_slots(layout_);
  ST_CHECK(int64_t(ranges.size()) <= slots, "step_stats: ", ranges.size(), " runs > ", slots);
  Tensor out = Tensor::empty({2 * (slots + 2)}, DType::kF32, alloc_, MemCategory::kWorkspace,
                             "grad_sq_sums");  // on every rank, even one that owns no run
  auto* dev = static_cast<double*>(out.raw());
  double* totals = dev + slots;
  for (size_t i = 0; i < ranges.size(); ++i) be_.sum_squares(dev + i, ranges[i].g, ranges[i].n);
  be_.sum_f64_in_order(totals, dev, int64_t(ranges.size()));
  be_.copy(totals + 1, loss_sum, 8);
  dp_.all_reduce_f64_async(totals, 2, /*max=*/false)->wait();
  if (tp_) tp_->all_reduce_f64_async(totals, 1, /*max=*/false)->wait();
  double host[2] = {0.0, 0.0};
  be_.download_async(host, totals, 16);
  be_.synchronize();
  return {host[0], host[1]};
}

// ---- Optimizer ----------------------------------------------------------------------------

void ZeroEngine::poison_grads_for_test() {
  Unit& u = *units_[1];
  const float inf = INFINITY;
  be_.upload(u.grads.data<float>() + (options_.stage <= 1 ? u.own_begin : 0), &inf, 4);
}

void ZeroEngine::adamw_step(const proto::OptimizerConfig& o, double lr, int64_t step,
                            float grad_scale) {
  const int stage = options_.stage;
  // No gathered copy may outlive the parameters it was gathered from (kernels still using one
  // are ordered before its reuse by the allocator).
  for (auto& u : units_) {
    for (auto& w : u->gather_works) w->wait();
    u->gather_works.clear();
    u->gathered = Tensor();
  }
  std::vector<std::unique_ptr<Work>> gathers;  // stages 1-2: the parameters made whole
  for (size_t ui = 0; ui < units_.size(); ++ui) {
    Unit& u = *units_[ui];
    // The range this rank updates, in unit coordinates: everything at stage 0, else the shard.
    const int64_t begin = stage == 0 ? 0 : u.own_begin;
    const int64_t count = stage == 0 ? u.padded : u.shard;
    float* master = u.master.data<float>();
    const float* grad = u.grads.data<float>() + (stage <= 1 ? begin : 0);
    float* m = u.m.data<float>();
    float* v = u.v.data<float>();
    // The parameters overlapping [begin, begin + count) as segments of one decay flag each
    // (adjacent ones merged): one launch per unit on a GPU, with the cast of the updated
    // master to the compute dtype fused in. Padding past the last parameter has zero gradient
    // and state, and is left alone.
    std::vector<kernels::AdamWSegment> segments;
    for (const auto& p : layout_[ui].params) {
      const int64_t lo = std::max(begin, p.offset),
                    hi = std::min(begin + count, p.offset + p.numel());
      if (lo >= hi) continue;
      const float wd = p.decay ? float(o.weight_decay()) : 0.0f;
      if (!segments.empty() && segments.back().end == lo - begin &&
          segments.back().weight_decay == wd) {
        segments.back().end = hi - begin;
      } else {
        segments.push_back({lo - begin, hi - begin, wd});
      }
    }
    const kernels::AdamWParams ap{
        float(lr), float(o.beta1()), float(o.beta2()), float(o.eps()), 0.0f, step};
    void* compute = nullptr;  // fp32 compute: the master is the parameter memory
    if (options_.compute != DType::kF32) {
      const int64_t params_base = stage == 3 ? u.own_begin : 0;
      compute = static_cast<char*>(u.params.raw()) +
                (begin - params_base) * dtype_bytes(options_.compute);
    }
    be_.adamw_update_segments(master, grad, m, v, options_.compute, compute, segments.data(),
                              int64_t(segments.size()), ap, grad_scale);
    if (stage == 1 || stage == 2) {
      // Every rank updated its shard of the parameters; gather the rest.
      const int64_t esz = dtype_bytes(options_.compute);
      char* full = static_cast<char*>(u.params.raw());
      for (int64_t off = 0; off < u.shard; off += piece_) {
        const int64_t n = std::min(piece_, u.shard - off);
        gathers.push_back(dp_.all_gather_async(full + (u.own_begin + off) * esz, full + off * esz,
                                               n, options_.compute, u.shard));
      }
    }
  }
  for (auto& w : gathers) w->wait();  // the next forward reads them
}

// ---- Initial weights and export ------------------------------------------------------------

template <class Fill>
void ZeroEngine::fill_holdings(Fill fill) {
  // What this rank holds of each unit: everything below stage 3, the shard at stage 3. The
  // master holds the same range or the shard (stages 1-2 with 16-bit compute).
  for (size_t ui = 0; ui < units_.size(); ++ui) {
    Unit& u = *units_[ui];
    const int64_t begin = options_.stage == 3 ? u.own_begin : 0;
    const int64_t count = options_.stage == 3 ? u.shard : u.padded;
    std::vector<float> values(size_t(count), 0.0f);
    for (const auto& p : layout_[ui].params) {
      const int64_t lo = std::max(begin, p.offset),
                    hi = std::min(begin + count, p.offset + p.numel());
      if (lo < hi) fill(p, lo - p.offset, hi - p.offset, values.data() + (lo - begin));
    }
    // Cast on the host (the CPU backend works on host arrays), then one upload each.
    std::vector<char> cast(static_cast<size_t>(count * dtype_bytes(options_.compute)));
    kernels::cpu_backend().cast_from_f32(options_.compute, cast.data(), values.data(), count);
    be_.upload(u.params.raw(), cast.data(), int64_t(cast.size()));
    if (options_.compute != DType::kF32) {
      const int64_t mbegin = u.master.numel() == u.padded ? 0 : u.own_begin;
      be_.upload(u.master.raw(), values.data() + (mbegin - begin), u.master.bytes());
    }
  }
}

std::vector<OwnedRun> owned_runs_of(const models::GptDims& dims,
                                    const std::vector<models::UnitLayout>& layout, int dp,
                                    int dp_rank, int tp_rank) {
  std::vector<OwnedRun> runs;
  for (size_t ui = 0; ui < layout.size(); ++ui) {
    const int64_t padded = (layout[ui].numel + dp * ZeroEngine::kAlign - 1) /
                           (dp * ZeroEngine::kAlign) * (dp * ZeroEngine::kAlign);
    const int64_t shard = padded / dp, own_begin = int64_t(dp_rank) * shard;
    for (size_t pi = 0; pi < layout[ui].params.size(); ++pi) {
      const models::ParamInfo& p = layout[ui].params[pi];
      if (p.split == models::TpSplit::kReplicated && tp_rank != 0) continue;
      // Replicated K/V heads: saved by the first of the ranks holding them.
      if (p.split == models::TpSplit::kRowGroups && tp_rank % (dims.tp / p.parts) != 0) continue;
      const int64_t lo = std::max(own_begin, p.offset) - p.offset;
      int64_t hi = std::min(own_begin + shard, p.offset + p.numel()) - p.offset;
      // Vocabulary padding (global index past the real tensor) is never saved: wte's padding
      // rows are the last local rows of the last tp ranks.
      const int64_t valid = shape_numel(p.hf_shape);
      while (hi > lo && p.global_index(hi - 1, int(dims.tp), tp_rank) >= valid) --hi;
      if (lo < hi) runs.push_back({int(ui), int(pi), lo, hi});
    }
  }
  return runs;
}

std::vector<float> ZeroEngine::state_values(const OwnedRun& run, StateKind kind) const {
  const Unit& u = *units_[size_t(run.unit)];
  const int64_t i = layout_[size_t(run.unit)].params[size_t(run.param)].offset + run.begin;
  const Tensor& t = kind == StateKind::kMaster ? u.master : kind == StateKind::kAdamM ? u.m : u.v;
  const int64_t base = t.numel() == u.padded ? 0 : u.own_begin;
  std::vector<float> out(static_cast<size_t>(run.end - run.begin));
  be_.download(out.data(), t.data<float>() + (i - base), int64_t(out.size()) * 4);
  return out;
}

void ZeroEngine::load_state(const StateFill& fill) {
  fill_holdings([&](const models::ParamInfo& p, int64_t lo, int64_t hi, float* out) {
    fill(StateKind::kMaster, p, lo, hi, out);
  });
  for (size_t ui = 0; ui < units_.size(); ++ui) {
    Unit& u = *units_[ui];
    const int64_t begin = u.m.numel() == u.padded ? 0 : u.own_begin;
    const int64_t count = u.m.numel();
    std::vector<float> values(static_cast<size_t>(count));
    for (StateKind kind : {StateKind::kAdamM, StateKind::kAdamV}) {
      std::fill(values.begin(), values.end(), 0.0f);
      for (const auto& p : layout_[ui].params) {
        const int64_t lo = std::max(begin, p.offset),
                      hi = std::min(begin + count, p.offset + p.numel());
        if (lo < hi) fill(kind, p, lo - p.offset, hi - p.offset, values.data() + (lo - begin));
      }
      be_.upload((kind == StateKind::kAdamM ? u.m : u.v).raw(), values.data(), count * 4);
    }
  }
}

void ZeroEngine::init_random(uint64_t seed) {
  fill_holdings([&](const models::ParamInfo& p, int64_t lo, int64_t hi, float* out) {
    models::init_param(p, dims_, seed, lo, hi, tp_rank_, out);
  });
}

void ZeroEngine::load_hf(const std::string& path) {
  SafetensorsFile file = read_safetensors(path);
  // Accept GPT2LMHeadModel's "transformer." prefix as well as GPT2Model's bare names.
  std::map<std::string, const SafetensorsTensor*> by_name;
  for (const auto& [name, t] : file.tensors) {
    std::string bare = name.rfind("transformer.", 0) == 0 ? name.substr(12) : name;
    if (!is_hf_non_parameter(bare, t, dims_)) by_name[bare] = &t;
  }
  std::set<std::string> expected;
  for (const auto& lu : layout_) {
    for (const auto& p : lu.params) {
      expected.insert(p.name);
      auto it = by_name.find(p.name);
      if (it == by_name.end()) throw UserError(str_cat(path, ": tensor '", p.name, "' is missing"));
      const SafetensorsTensor& t = *it->second;
      if (t.shape != p.hf_shape) {
        throw UserError(str_cat(path, ": tensor '", p.name, "' has shape ", shape_str(t.shape),
                                ", the config needs ", shape_str(p.hf_shape)));
      }
      if (t.dtype == DType::kI32) {
        throw UserError(str_cat(path, ": tensor '", p.name, "' is not floating point"));
      }
    }
  }
  for (const auto& [name, t] : by_name) {
    if (!expected.count(name)) {
      throw UserError(str_cat(path, ": unexpected tensor '", name,
                              "' (not part of a GPT-2 model with this config)"));
    }
  }
  const int tp = int(dims_.tp);
  fill_holdings([&](const models::ParamInfo& p, int64_t lo, int64_t hi, float* out) {
    const SafetensorsTensor& t = *by_name.at(p.name);
    const int64_t valid = shape_numel(p.hf_shape);  // past it: vocabulary padding, zero
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t g = p.global_index(i, tp, tp_rank_);
      float v = 0.0f;
      if (g < valid) {
        switch (t.dtype) {
          case DType::kF32:
            std::memcpy(&v, t.bytes.data() + g * 4, 4);
            break;
          case DType::kBF16:
            v = bf16_to_float(reinterpret_cast<const BFloat16*>(t.bytes.data())[g]);
            break;
          case DType::kF16:
            v = f16_to_float(reinterpret_cast<const Half*>(t.bytes.data())[g]);
            break;
          case DType::kI32:
            break;
        }
      }
      out[i - lo] = v;
    }
  });
}

void ZeroEngine::export_hf(const std::string& path, const std::string& model_config) {
  // 1. Each unit's fp32 master weights, whole within the dp group.
  // 2. Under tp, every tp rank's slices gathered in the tp group, then placed at their global
  //    indices. Rank 0 of the world (dp rank 0, tp rank 0) writes.
  //    The gathers run in the backend's memory (the communicators move that), one unit at a
  //    time; the writer copies each unit to the host.
  const int tp = int(dims_.tp);
  const bool writer = dp_.rank() == 0 && tp_rank_ == 0;
  std::vector<std::vector<float>> full(units_.size());
  for (size_t ui = 0; ui < units_.size(); ++ui) {
    Unit& u = *units_[ui];
    Tensor whole = Tensor::empty({u.padded * tp}, DType::kF32, alloc_, MemCategory::kCommBuffers,
                                 layout_[ui].name + ".export");
    float* mine = whole.data<float>() + (tp > 1 ? int64_t(tp_rank_) * u.padded : 0);
    if (u.master.numel() == u.padded) {
      be_.copy(mine, u.master.raw(), u.master.bytes());
    } else {
      dp_.all_gather(u.master.raw(), mine, u.shard, DType::kF32);
    }
    if (tp > 1) tp_->all_gather(mine, whole.data<float>(), u.padded, DType::kF32);
    if (!writer) continue;
    full[ui].resize(size_t(u.padded * tp));
    be_.download(full[ui].data(), whole.raw(), whole.bytes());
  }
  if (writer) {
    std::vector<std::vector<float>> tensors;
    std::vector<SafetensorsEntry> entries;
    for (size_t ui = 0; ui < units_.size(); ++ui) {
      for (const auto& p : layout_[ui].params) {
        std::vector<float> global(size_t(shape_numel(p.hf_shape)));
        const int64_t valid = int64_t(global.size());
        for (int r = 0; r < tp; ++r) {
          const float* src = full[ui].data() + int64_t(r) * units_[ui]->padded + p.offset;
          for (int64_t i = 0; i < p.numel(); ++i) {
            const int64_t g = p.global_index(i, tp, r);
            if (g < valid) global[size_t(g)] = src[i];
          }
          if (p.split == models::TpSplit::kReplicated) break;  // every rank holds the same
        }
        tensors.push_back(std::move(global));
        entries.push_back({p.name, DType::kF32, p.hf_shape, tensors.back().data()});
      }
    }
    write_safetensors(path, entries, {{"format", "pt"}, {"shardtrain.model", model_config}});
  }
  dp_.barrier();
  if (tp_) tp_->barrier();
}

}  // namespace shardtrain::parallel
