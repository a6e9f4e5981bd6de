// memplan.cpp — the analytic memory planner: ZeroEngine's buffers, Gpt's activations, and a
// replay of one step's transient buffers (memplan.h says why it is built this way).
#include "parallel/memplan.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <deque>
#include <regex>

#include "models/gpt.h"
#include "parallel/zero.h"
#include "runtime/error.h"

namespace shardtrain::parallel {
namespace {

constexpr int kParams = int(MemCategory::kParams);
constexpr int kMaster = int(MemCategory::kMasterParams);
constexpr int kGrads = int(MemCategory::kGrads);
constexpr int kOptim = int(MemCategory::kOptimizerState);
constexpr int kActs = int(MemCategory::kActivations);
constexpr int kComm = int(MemCategory::kCommBuffers);
constexpr int kWork = int(MemCategory::kWorkspace);

// Largest micro-batch the candidate search tries: data.micro_batch is an int32 field.
constexpr int64_t kMaxMicroBatch = int64_t(1) << 30;

// Elements of each unit on one tensor-parallel rank, in models::gpt_layout's unit order: the
// model's own layout, so the split (Megatron-LM: c_attn by heads, c_fc by columns, the c_proj
// weights by rows, wte by vocabulary rows padded to 64 x tp; LayerNorms, wpe and the c_proj
// biases replicated — models/gpt.h) is never restated here.
models::GptDims plan_dims(const MemPlanInput& in) {
  proto::ModelConfig m;
  m.set_n_layer(int32_t(in.L));
  m.set_n_head(int32_t(in.H));
  m.set_d_model(int32_t(in.C));
  m.set_vocab_size(int32_t(in.V));
  m.set_seq_len(int32_t(in.Tmax));
  if (in.llama) {
    m.set_arch(proto::LLAMA);
    if (in.KV > 0) m.set_n_kv_head(int32_t(in.KV));
    if (in.F > 0) m.set_ffn_hidden(int32_t(in.F));
    m.set_tie_embeddings(in.tied);
  }
  models::GptDims d = models::GptDims::from_config(m, in.tp, in.sequence_parallel && in.tp > 1);
  d.recompute = models::recompute_of(in.recompute);
  d.recompute_layers = in.recompute_layers;
  return d;
}

std::vector<int64_t> unit_numels(const MemPlanInput& in) {
  std::vector<int64_t> out;
  for (const auto& u : models::gpt_layout(plan_dims(in))) out.push_back(u.numel);
  return out;
}

int64_t vocab_padded(const MemPlanInput& in) { return plan_dims(in).Vp; }

// Running transient bytes by category, with each category's peak and the peak of the sum.
struct Transients {
  CategoryBytes live{}, peak{}, at_peak{};
  int64_t total = 0, peak_total = 0;
  void add(int c, int64_t bytes) {
    live[size_t(c)] += bytes;
    total += bytes;
    peak[size_t(c)] = std::max(peak[size_t(c)], live[size_t(c)]);
    if (total > peak_total) {
      peak_total = total;
      at_peak = live;
    }
  }
};

// The protocol between models::Gpt and ZeroEngine, replayed on byte counts only. Each method
// mirrors the ZeroEngine method of the same name (parallel/zero.cpp); keep them in step.
class EngineReplay {
 public:
  EngineReplay(const MemPlanInput& in, const std::vector<int64_t>& padded,
               const std::vector<int64_t>& shard)
      : in_(in),
        padded_(padded),
        shard_(shard),
        gathered_(padded.size(), false),
        work_(padded.size(), false) {
    order_ = models::acquire_order(plan_dims(in));
    esz_c_ = dtype_bytes(in.compute);
    esz_g_ = dtype_bytes(in.grad);
  }

  const Transients& transients() const { return t_; }

  void begin_pass() { pos_ = 0; }

  void acquire(int u) {
    if (in_.zero_stage != 3) return;
    gather_start(u);
    if (pos_ < order_.size() && order_[pos_] == u) ++pos_;
    if (pos_ < order_.size() && order_[pos_] != u) gather_start(order_[pos_]);
  }
  void release(int u) {
    if (in_.zero_stage != 3) return;
    if (pos_ < order_.size() && order_[pos_] == u) return;  // reacquired at once: kept
    if (gathered_[size_t(u)]) t_.add(kParams, -padded_[size_t(u)] * esz_c_);
    gathered_[size_t(u)] = false;
  }
  void grads(int u) {
    if (in_.zero_stage <= 1 || work_[size_t(u)]) return;
    work_[size_t(u)] = true;
    t_.add(kGrads, padded_[size_t(u)] * esz_g_);
  }
  void grads_done(int u) {
    if (in_.zero_stage <= 1) return;  // reduced in place: no buffer
    if (!in_.overlap) {
      deferred_.push_back(u);
      return;
    }
    start_reduce(u);
    while (pending_.size() > 1) complete_oldest();
  }
  // ZeroEngine::flush_reductions: at the start of every micro-step and at the end of the
  // backward, deferred reductions are issued and every pending one completes.
  void finish_backward() {
    for (int u : deferred_) start_reduce(u);
    deferred_.clear();
    while (!pending_.empty()) complete_oldest();
  }
  // ZeroEngine::step_stats: a scratch of one double per parameter and two more, freed at once.
  void step_stats(int64_t slots) {
    t_.add(kWork, 8 * slots);
    t_.add(kWork, -8 * slots);
  }
  void adamw_step() {  // drops every gathered copy
    for (size_t u = 0; u < gathered_.size(); ++u) {
      if (gathered_[u]) t_.add(kParams, -padded_[u] * esz_c_);
      gathered_[u] = false;
    }
  }

 private:
  void gather_start(int u) {
    if (gathered_[size_t(u)]) return;
    gathered_[size_t(u)] = true;
    t_.add(kParams, padded_[size_t(u)] * esz_c_);
  }
  void start_reduce(int u) {
    t_.add(kComm, shard_[size_t(u)] * esz_g_);
    pending_.push_back(u);
  }
  void complete_oldest() {
    const int u = pending_.front();
    pending_.pop_front();
    t_.add(kComm, -shard_[size_t(u)] * esz_g_);
    if (work_[size_t(u)]) t_.add(kGrads, -padded_[size_t(u)] * esz_g_);
    work_[size_t(u)] = false;
  }

  const MemPlanInput& in_;
  const std::vector<int64_t>& padded_;
  const std::vector<int64_t>& shard_;
  std::vector<int> order_;
  size_t pos_ = 0;
  std::vector<bool> gathered_, work_;
  std::deque<int> pending_;
  std::vector<int> deferred_;
  int64_t esz_c_ = 4, esz_g_ = 4;
  Transients t_;
};

// models::Gpt::forward's and backward's calls on its ParamSource, in order.
void replay_forward(EngineReplay& e, int L, bool tied) {
  e.acquire(0);  // 1. embeddings
  e.release(0);
  for (int u = 1; u <= L; ++u) {  // 2. blocks
    e.acquire(u);
    e.release(u);
  }
  e.acquire(L + 1);  // 3. final norm, then the head: tied (wte) or in this unit (lm_head)
  e.release(L + 1);
  if (tied) {
    e.acquire(0);
    e.release(0);
  }
}

void replay_backward(EngineReplay& e, int L, bool tied) {
  if (tied) {
    e.acquire(0);  // 1. head: dwte
    e.grads(0);
    e.release(0);
    e.acquire(L + 1);  // 2. final norm
  } else {
    e.acquire(L + 1);  // 1.-2. head (dlm_head) and final norm, one unit
  }
  e.grads(L + 1);
  e.release(L + 1);
  e.grads_done(L + 1);
  for (int u = L; u >= 1; --u) {  // 3. blocks in reverse
    e.acquire(u);
    e.grads(u);
    e.release(u);
    e.grads_done(u);
  }
  e.grads(0);  // 4. embeddings (no parameters needed)
  e.grads_done(0);
}

// Activations and workspace: the tensors models::Gpt's constructor allocates.
//
// Per transformer layer (N = B*T rows, e bytes per compute element) Gpt saves, besides the
// block's input (the residual stream, kept in every mode), two groups (models/gpt.h, Recompute):
//   norms + activation:  ln1, ln2 (N C e each), fch_gelu (4 N C e), and the fp32 LayerNorm
//                        mean and rstd of both (4 x 4N bytes):    s b h (6 e) + 16 s b
//   GEMM/attention out:  qkv (3 N C e), atty (N C e), res2 (N C e), fch (4 N C e) and the
//                        flash-attention logsumexp (B,H,T) fp32:  s b h (9 e) + 4 a s b
// in Korthikanti et al.'s letters (s b = N, h = C, a = H). NONE keeps both groups for every
// layer: s b h (16 e) + s b (16 + 4 a) with the input. Their 16-bit count is s b h (34 + 5 a s
// / h): the same 16 sbh elements (32 sbh bytes: LN inputs and outputs, Q K V, attention
// output, fc1 output and GELU output) plus 2 sbh of dropout masks that shardtrain does not
// have (no dropout), plus 5 a s^2 b for the scores, softmax and its dropout mask that flash
// attention never stores (it recomputes them from Q, K and the logsumexp). With e = 2 the
// per-layer difference is therefore -2 sbh - 5 a s^2 b + s b (16 + 4 a).
// SELECTIVE keeps the second group and the input per layer, and one shared copy of the first
// (recomputed just before each block's backward): L (s b h (10 e) + 4 a s b) + s b h (6 e) +
// 16 s b, i.e. 20 sbh per 16-bit layer where Korthikanti's selective recompute (of the
// attention core, which flash attention here recomputes anyway) keeps 34 sbh.
// FULL on n of the L blocks (parallel.recompute_layers, 0 = all) keeps only the input of those
// n (s b h e per layer: Korthikanti's 2 sbh), both groups of the others, and one shared copy
// of both groups: (L - n + 1) (s b h (15 e) + s b (16 + 4 a)) besides the inputs.
// Outside the layers: the final residual and ln_f (2 N C e + 8N), the logits (N Vp e),
// per-token losses and logsumexp (8N), the loss sum (8 bytes), and the int32 inputs and
// targets (8N).
//
// Tensor parallel (models::Gpt, Megatron-style; Korthikanti Table 2): qkv, atty, fch,
// fch_gelu, the logsumexp and the logits are split by tp (heads / columns / vocabulary);
// residual, ln*, res2 and the LayerNorm statistics are replicated (N rows). With sequence
// parallelism the residual stream, res2 and the LayerNorm statistics hold R = N / tp rows,
// but the LayerNorm outputs ln1, ln2, lnf stay whole (N rows: the all-gathered input the
// column-parallel GEMMs saved), so shardtrain keeps more than Korthikanti's (s b h / t) 34.
// Workspace: the tp-split backward buffers (d_atty, d_qkv, d_fch) are divided by tp; d_ln and
// d_proj_out keep N rows; d_residual has R rows; sequence parallelism adds three R-row
// buffers (ln_local, proj_local, dln_local) and one N-row (dres_full). Not modelled: the
// GPU backends' one kernel scratch buffer ("kernel_workspace": the deterministic partial sums
// of the LayerNorm, bias and attention backward kernels), which the cpu backend does not have.
//
// Llama (models::Gpt with arch LLAMA) has the same two groups at its widths: ln1, ln2 (N,C),
// the RMSNorm rstd of both (R) fp32 (no means) and the SwiGLU output (N, F/t); qkv after RoPE
// (N, (H + 2 KV) D / t), atty (N,C/t), res2 (R,C), the logsumexp and gate|up (N, 2F/t): with
// KV = H and F = 4C/3 that is s b h (16 e) bytes again. Outside the layers as GPT-2 (only rstd
// for the final norm) plus RoPE's cos/sin table (T, D/2, 2) fp32; no position table.
// Workspace: GPT-2's buffers at Llama's widths (d_qkv, d_fch = d gate|up) plus d_act (N, F/t).
void plan_activations(const MemPlanInput& in, CategoryBytes& b) {
  const models::GptDims d = plan_dims(in);
  const bool llama = in.llama;
  const int64_t e = dtype_bytes(in.compute), t = in.tp, N = in.B * in.T, C = in.C;
  const bool sp = in.sequence_parallel && t > 1;
  const int64_t R = sp ? N / t : N;  // rows of the norm / residual regions
  const int64_t f32 = 4, i32 = 4, D = d.D();
  const int64_t kvl = d.KV % t == 0 ? d.KV / t : 1, qkv = (d.H / t + 2 * kvl) * D;
  const int64_t Fl = d.F / t, fc = llama ? 2 * Fl : Fl;   // MLP width; its input GEMM's output
  const int64_t stats = llama ? 1 : 2;                    // rstd (and the LayerNorm mean)
  const int64_t norms = 2 * N * C * e                     // ln1, ln2 (N,C)
                        + 2 * stats * R * f32             // their statistics (R) fp32
                        + N * Fl * e;                     // GELU / SwiGLU output
  const int64_t gemms = N * qkv * e + N * (C / t) * e     // qkv, atty
                        + in.B * (in.H / t) * in.T * f32  // lse (B,H,T) fp32
                        + R * C * e                       // res2 (R,C)
                        + N * fc * e;                     // fch: c_fc / gate|up output
  int64_t acts = 2 * N * i32;                             // inputs, targets (B,T)
  acts += (in.L + 1) * R * C * e;                         // residual stream, L+1 of (R,C)
  bool any_full = false;
  for (int64_t l = 0; l < in.L; ++l) {
    const models::Recompute r = d.block_recompute(l);
    any_full |= r == models::Recompute::kFull;
    if (r == models::Recompute::kNone) acts += norms;
    if (r != models::Recompute::kFull) acts += gemms;
  }
  if (d.recompute != models::Recompute::kNone) acts += norms + (any_full ? gemms : 0);
  acts += N * C * e + stats * R * f32;     // the final norm (N,C), its statistics (R)
  acts += N * (vocab_padded(in) / t) * e;  // logits (N,Vp)
  acts += 2 * N * f32 + 8;                 // losses, loss_lse (N); the loss sum (one double)
  if (llama) acts += in.T * D * f32;       // the RoPE table (T, D/2, 2)
  b[size_t(kActs)] = acts;
  // Backward scratch: d_residual (R,C); d_ln, d_proj_out (N,C); d_atty (N,C/t), d_qkv, d_fch
  // (and Llama's d_act); sequence parallel: 3 x (R,C) + (N,C).
  int64_t work = R * C * e + 2 * N * C * e + N * (C / t + qkv + fc + (llama ? Fl : 0)) * e;
  if (sp) work += 3 * R * C * e + N * C * e;
  if (t > 1) work += 3 * N * 8;  // vocab-parallel cross-entropy: row max, target, sum (N doubles)
  b[size_t(kWork)] = work;
}

}  // namespace

MemPlanInput MemPlanInput::from_config(const proto::Config& c, int world) {
  MemPlanInput in;
  const auto& m = c.model();
  in.L = m.n_layer();
  in.H = m.n_head();
  in.C = m.d_model();
  in.V = m.vocab_size();
  in.Tmax = m.seq_len();
  in.T = m.seq_len();
  in.llama = m.arch() == proto::LLAMA;
  in.KV = m.has_n_kv_head() ? m.n_kv_head() : 0;
  in.F = m.has_ffn_hidden() ? m.ffn_hidden() : 0;
  in.tied = m.tie_embeddings();
  in.B = c.data().micro_batch();
  in.grad_accum = c.data().grad_accum();
  in.world = world;
  in.tp = c.parallel().tp();
  in.zero_stage = c.parallel().zero_stage();
  in.sequence_parallel = c.parallel().sequence_parallel();
  in.overlap = c.parallel().overlap();
  in.recompute = c.parallel().recompute();
  in.recompute_layers = c.parallel().recompute_layers();
  in.eval = c.train().eval_every() > 0;
  auto dt = [](proto::DType d) {
    return d == proto::BF16 ? DType::kBF16 : d == proto::F16 ? DType::kF16 : DType::kF32;
  };
  in.compute = dt(c.precision().compute());
  // ZeroEngine keeps fp32 gradients today; the plan honours a 16-bit grad_accum_dtype so that
  // it already answers "what would 16-bit accumulation save" (train rejects it until built).
  in.grad = dt(c.precision().grad_accum_dtype());
  return in;
}

MemPlan plan_memory(const MemPlanInput& in) {
  ST_CHECK(in.world >= 1 && in.tp >= 1 && in.world % in.tp == 0, "layout world ", in.world, " tp ",
           in.tp);
  ST_CHECK(in.zero_stage >= 0 && in.zero_stage <= 3, "ZeRO stage ", in.zero_stage);
  MemPlan plan;
  const int64_t dp = in.world / in.tp;
  plan.dp = dp;
  const int stage = in.zero_stage;
  const int64_t ec = dtype_bytes(in.compute), eg = dtype_bytes(in.grad);
  const bool f32 = in.compute == DType::kF32;

  // 1. Model states, unit by unit, exactly as ZeroEngine's constructor allocates them.
  const std::vector<int64_t> numel = unit_numels(in);
  std::vector<int64_t> padded, shard;
  double ideal = 0;  // the same buffers without padding (n / dp per shard)
  const int64_t quantum = dp * ZeroEngine::kAlign;
  for (size_t u = 0; u < numel.size(); ++u) {
    const int64_t n = numel[u], P = (n + quantum - 1) / quantum * quantum, S = P / dp;
    padded.push_back(P);
    shard.push_back(S);
    const double ns = double(n) / double(dp);
    auto hold = [&](int c, bool full, int64_t esz) {
      plan.steady[size_t(c)] += (full ? P : S) * esz;
      ideal += (full ? double(n) : ns) * double(esz);
    };
    hold(kParams, stage != 3, ec);
    if (!f32) hold(kMaster, stage == 0, 4);
    hold(kOptim, stage == 0, 4);  // adam_m
    hold(kOptim, stage == 0, 4);  // adam_v
    hold(kGrads, stage <= 1, eg);
  }
  int64_t states = 0;
  for (int c : {kParams, kMaster, kGrads, kOptim}) states += plan.steady[size_t(c)];
  plan.padding = states - int64_t(std::llround(ideal));
  for (int64_t n : numel) plan.num_params += n;
  if (in.tp > 1) {  // the whole model: count the replicated parameters once
    MemPlanInput one = in;
    one.tp = 1;
    plan.num_params = 0;
    for (int64_t n : unit_numels(one)) plan.num_params += n;
  }

  // 2. Activations and workspace: allocated once by the model, alive for the whole run.
  plan_activations(in, plan.steady);

  // 3. Transients: replay train step, evaluation forward (when train.eval_every > 0), train
  //    step (the evaluation leaves stage 3's last forward unit gathered into the next step: the
  //    embeddings with a tied head, the final unit with Llama's untied one). Two micro-steps
  //    stand for any grad_accum > 1 (each starts by completing the previous one's reductions).
  const int64_t slots = ZeroEngine::grad_sq_slots(models::gpt_layout(plan_dims(in)));
  EngineReplay replay(in, padded, shard);
  const int L = int(in.L);
  const bool tied = plan_dims(in).tied;
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t micro = 0; micro < std::min<int64_t>(in.grad_accum, 2); ++micro) {
      replay.finish_backward();  // ZeroEngine::begin_micro_step flushes the previous one
      replay.begin_pass();
      replay_forward(replay, L, tied);
      replay_backward(replay, L, tied);
    }
    replay.finish_backward();
    replay.step_stats(slots + 2);
    replay.adamw_step();
    if (pass == 0 && in.eval) {
      replay.begin_pass();
      replay_forward(replay, L, tied);
    }
  }
  const Transients& t = replay.transients();
  int64_t steady_total = 0;
  for (int c = 0; c < kNumMemCategories; ++c) {
    steady_total += plan.steady[size_t(c)];
    plan.peak[size_t(c)] = plan.steady[size_t(c)] + t.peak[size_t(c)];
    plan.at_peak[size_t(c)] = plan.steady[size_t(c)] + t.at_peak[size_t(c)];
  }
  plan.peak_total = steady_total + t.peak_total;
  return plan;
}

std::vector<MemCandidate> plan_candidates(const MemPlanInput& in, int64_t device_bytes) {
  std::vector<MemCandidate> out;
  for (int tp = 1; tp <= in.world; ++tp) {
    if (in.world % tp != 0 || in.H % tp != 0) continue;
    for (int stage = 0; stage <= 3; ++stage) {
      for (proto::Recompute mode : {proto::NONE, proto::SELECTIVE, proto::FULL}) {
        MemPlanInput c = in;
        c.tp = tp;
        c.zero_stage = stage;
        c.sequence_parallel = in.sequence_parallel && tp > 1;
        c.recompute = mode;
        c.recompute_layers =
            mode == proto::FULL && in.recompute == proto::FULL ? in.recompute_layers : 0;
        MemCandidate row;
        row.zero_stage = stage;
        row.tp = tp;
        row.recompute = mode;
        row.total = plan_memory(c).peak_total;
        row.fits = row.total <= device_bytes;
        // The peak grows with B (activations, workspace); bisect for the largest that fits.
        auto fits = [&](int64_t b) {
          c.B = b;
          return plan_memory(c).peak_total <= device_bytes;
        };
        if (fits(1)) {
          // The peak is affine in B (a + b B): bound the search near (device - a) / b so that no
          // trial sizes a micro-batch whose bytes overflow int64, then bisect on the real plan.
          c.B = 1;
          const int64_t p1 = plan_memory(c).peak_total;
          c.B = 2;
          const int64_t slope = std::max<int64_t>(1, plan_memory(c).peak_total - p1);
          int64_t lo = 1, hi = std::min(kMaxMicroBatch, (device_bytes - p1) / slope + 2);
          if (fits(hi)) {
            lo = hi;
          } else {
            while (hi - lo > 1) {
              const int64_t mid = lo + (hi - lo) / 2;
              (fits(mid) ? lo : hi) = mid;
            }
          }
          row.max_micro_batch = lo;
        }
        out.push_back(row);
      }
    }
  }
  return out;
}

double zero_paper_bytes(double psi, int64_t nd, int stage, double param_bytes, double grad_bytes,
                        double k_bytes) {
  const double n = double(nd);
  switch (stage) {
    case 0:
      return (param_bytes + grad_bytes + k_bytes) * psi;
    case 1:
      return (param_bytes + grad_bytes) * psi + k_bytes * psi / n;
    case 2:
      return param_bytes * psi + (grad_bytes + k_bytes) * psi / n;
    case 3:
      return (param_bytes + grad_bytes + k_bytes) * psi / n;
    default:
      ST_CHECK(false, "ZeRO stage ", stage);
  }
  return 0;
}

int64_t parse_byte_size(const std::string& text, const std::string& flag) {
  static const std::regex re(R"(^\s*([0-9]+(\.[0-9]*)?([eE][0-9]+)?)\s*([A-Za-z]*)\s*$)");
  std::smatch m;
  auto bad = [&]() {
    return UserError(str_cat(flag, ": '", text,
                             "' is not a byte size (examples: 80GiB, 40GB, 512MiB, 1073741824)"));
  };
  if (!std::regex_match(text, m, re)) throw bad();
  std::string unit = m[4].str();
  for (char& ch : unit) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  double scale = 0;
  const std::pair<const char*, double> units[] = {
      {"", 1},         {"b", 1},        {"k", 1e3},      {"kb", 1e3},    {"m", 1e6},
      {"mb", 1e6},     {"g", 1e9},      {"gb", 1e9},     {"t", 1e12},    {"tb", 1e12},
      {"kib", 0x1p10}, {"mib", 0x1p20}, {"gib", 0x1p30}, {"tib", 0x1p40}};
  for (const auto& [name, s] : units) {
    if (unit == name) scale = s;
  }
  if (scale == 0) throw bad();
  const double bytes = std::stod(m[1].str()) * scale;
  // 2^62 bytes (4 EiB) keeps every sum of predicted bytes inside int64.
  if (!(bytes >= 1) || bytes > 0x1p62) {
    throw UserError(str_cat(flag, ": '", text, "' must be between 1 byte and 4 EiB"));
  }
  return int64_t(bytes);
}

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = double(bytes);
  int i = 0;
  while (std::fabs(v) >= 1024 && i < 5) {
    v /= 1024;
    ++i;
  }
  char buf[48];
  if (i == 0) {
    std::snprintf(buf, sizeof buf, "%lld B", (long long)bytes);
  } else {
    std::snprintf(buf, sizeof buf, "%.2f %s", v, units[i]);
  }
  return buf;
}

}  // namespace shardtrain::parallel
