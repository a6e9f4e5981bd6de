// gpt.h — GPT-2 and Llama with explicit forward and backward, unit by unit.
//
// A *unit* is the granule of parameter ownership: unit 0 = embeddings (wte, wpe), units
// 1..L = transformer blocks, unit L+1 = the final LayerNorm. Each unit's parameters are one
// flat buffer in Hugging Face GPT-2 order and shapes (REFERENCE.md), so export is a copy and
// ZeRO can shard, gather and reduce a unit as one contiguous range. The model never owns
// parameters: it asks a ParamSource for them, unit by unit, which is where ZeRO-3 gathers and
// where gradient reduction hooks in. The LM head is tied to wte (unit 0), used again last.
//
// Pre-LN block: x -> LN1 -> c_attn -> causal attention -> c_proj -> +x -> LN2 -> c_fc -> GELU
// -> c_proj -> +. Every buffer a backward needs is saved in BlockActivations; nothing is
// recomputed except the attention scores (flash-style, kernels/attention.h), unless
// parallel.recompute asks for more (Recompute below).
//
// Llama (dims.arch): the same pre-norm block with RMSNorm, q|k|v = one GEMM with the three
// (out, in) weights (adjacent in the unit: one matrix), RoPE on q and k in place, grouped-query
// attention, o_proj, and the MLP down(silu(gate) * up) with gate|up one GEMM. No biases, no
// position table; the head is lm_head (unit L+1) unless tie_embeddings. Weights are Hugging
// Face's nn.Linear (out, in), so every projection is a GEMM against W^T.
//
// Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): with tp > 1 each rank of the tp group
// holds a slice of every layer. c_attn is split by heads (its Q, K and V column blocks each),
// c_fc by columns, the two c_proj by rows, wte by vocabulary rows (padded to 64 x tp); the
// LayerNorms, wpe and the c_proj biases are replicated. Forward: one all-reduce after each
// row-parallel c_proj and after the embedding lookup; backward: one all-reduce of the input
// gradient of each column-parallel layer (c_attn, c_fc, the head). The cross-entropy is
// vocab-parallel: the full logits never exist on one rank (max, sum of exponentials and the
// target logit are all-reduced per row).
//
// Sequence parallelism (optional, tp > 1): the residual stream and the LayerNorms hold rows
// [tp_rank*N/tp, (tp_rank+1)*N/tp) only (N = B*T rows); each LayerNorm's output is
// all-gathered before the column-parallel layer, each row-parallel output reduce-scattered,
// and in backward the reverse. Replicated parameters then get partial gradients from their
// rows; the ZeRO engine sums them over the tp group.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "runtime/allocator.h"
#include "runtime/comm.h"
#include "runtime/proto/config.pb.h"
#include "runtime/tensor.h"

namespace shardtrain::models {

// LayerNorm's epsilon, GPT-2's (REFERENCE.md); exports write it into config.json.
constexpr double kGptLayerNormEps = 1e-5;

// The block type (model.arch). GPT2: learned positions, LayerNorm, GELU MLP, biases, tied head.
// LLAMA: rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention, no biases, an untied
// head (unless tie_embeddings).
enum class Arch : uint8_t { kGpt2, kLlama };

// Activation recomputation (parallel.recompute). NONE: a block keeps every buffer its backward
// reads. SELECTIVE: it keeps the outputs of its GEMMs and of the attention (qkv, atty and its
// logsumexp, res2, fch) and recomputes, just before its backward, what is cheap: both norms'
// outputs and statistics and the MLP activation (fch_gelu). FULL: it keeps nothing but its
// input (the residual stream) and runs its forward again just before its backward. The
// recomputed buffers are one set shared by all blocks; every recomputation runs the forward's
// own kernels on the forward's own inputs, so results are bitwise those of NONE.
enum class Recompute : uint8_t { kNone, kSelective, kFull };
Recompute recompute_of(proto::Recompute r);

struct GptDims {
  int64_t L;       // layers
  int64_t H;       // heads
  int64_t C;       // width
  int64_t V;       // vocabulary
  int64_t Vp;      // vocabulary padded to a multiple of 64 x tp (rows past V are zero, unused)
  int64_t Tmax;    // context length (rows of wpe)
  int64_t tp = 1;  // tensor-parallel ranks the layers are split over
  // Sequence parallelism (Korthikanti et al. 2022): with tp > 1, LayerNorm and residual
  // regions hold only 1/tp of the rows; the all-reduces become all-gather + reduce-scatter.
  bool sequence_parallel = false;
  Arch arch = Arch::kGpt2;
  int64_t KV = 0;                              // key/value heads (GPT2: H)
  int64_t F = 0;                               // FFN hidden width (GPT2: 4C)
  bool tied = true;                            // the LM head is the embedding (GPT2 always)
  double rope_theta = 10000, norm_eps = 1e-5;  // LLAMA
  double rope_factor = 0, rope_low = 1, rope_high = 4;  // LLAMA 3.1 rescaling (0: none)
  int64_t rope_original = 8192;
  Recompute recompute = Recompute::kNone;
  int64_t recompute_layers = 0;  // FULL: the first N blocks recompute (0: all of them)
  static GptDims from_config(const proto::ModelConfig& m, int tp = 1, bool sp = false);
  int64_t D() const { return C / H; }
  // What block l recomputes: `recompute`, except NONE for blocks past recompute_layers.
  Recompute block_recompute(int64_t l) const {
    const bool past =
        recompute == Recompute::kFull && recompute_layers > 0 && l >= recompute_layers;
    return past ? Recompute::kNone : recompute;
  }
};

enum class ParamInit : uint8_t { kNormal, kResidualNormal, kZero, kOne };

// How a parameter is split over the tp ranks.
enum class TpSplit : uint8_t {
  kReplicated,  // every rank holds all of it
  kRows,        // rank t holds rows [t*r, (t+1)*r) of the global tensor
  kColumns,     // the last dimension is `parts` blocks (c_attn: Q|K|V); rank t holds the t-th
                // slice of each block, concatenated
  kRowGroups,   // the rows are `parts` blocks (Llama's K/V heads, parts < tp dividing it);
                // rank t holds block t * parts / tp: tp / parts ranks replicate each
};

struct ParamInfo {
  std::string name;  // Hugging Face name, e.g. "h.3.attn.c_attn.weight" (GPT-2),
                     // "model.layers.3.self_attn.q_proj.weight" (Llama)
  Shape shape;       // this rank's slice as stored here (wte: [Vp/tp, C])
  Shape hf_shape;    // the whole tensor as exported (wte: [V, C])
  int64_t offset;    // elements into the unit's flat buffer
  bool decay;        // AdamW weight decay applies (2-D weights)
  ParamInit init;
  TpSplit split = TpSplit::kReplicated;
  int parts = 1;
  int64_t numel() const { return shape_numel(shape); }
  // Row-major index into the global (padded) tensor of this rank's element `local`;
  // indices >= shape_numel(hf_shape) are vocabulary padding.
  int64_t global_index(int64_t local, int tp, int tp_rank) const;
};

struct UnitLayout {
  std::string name;  // "embeddings", "h.0", ..., "ln_f"
  std::vector<ParamInfo> params;
  int64_t numel = 0;
};

std::vector<UnitLayout> gpt_layout(const GptDims& dims);

// The units in the order Gpt::forward then Gpt::backward acquire them (ZeRO-3 prefetches the
// next one; memplan replays them): embeddings, blocks, the final norm, then the tied head
// (embeddings again); backward the head, the final norm, blocks in reverse. Untied (Llama):
// the head is in the final norm's unit, acquired once each way.
std::vector<int> acquire_order(const GptDims& dims);

// Seeded GPT-2 initialisation: the value of global element g of a parameter depends only on
// (seed, name, g), so a rank can initialise any slice of any layout (tp and ZeRO) and get
// exactly the values of the unsplit model. Fills this rank's local elements [begin, end).
void init_param(const ParamInfo& p, const GptDims& dims, uint64_t seed, int64_t begin, int64_t end,
                int tp_rank, float* out);

// Where the model gets parameters and puts gradients (plain storage, or the ZeRO engine).
class ParamSource {
 public:
  virtual ~ParamSource() = default;
  virtual void acquire(int unit) = 0;        // before the unit computes (ZeRO-3: gather)
  virtual const void* params(int unit) = 0;  // compute dtype, valid between acquire/release
  virtual float* grads(int unit) = 0;        // fp32, accumulated into (+=)
  virtual void release(int unit) = 0;        // the unit is done for this pass
  virtual void grads_done(int unit) = 0;     // the unit's backward finished
};

// What one block's backward reads. Shapes for N = B*T rows: ln*, atty, res2 (N,C);
// qkv (N,3C); fch, fch_gelu (N,4C); *_mean, *_rstd (N) fp32; lse (B,H,T) fp32. Llama: qkv
// (N,(H+2KV)D) after RoPE, fch = gate|up (N,2F), fch_gelu = silu(gate) up (N,F), no means.
// Under recomputation the recomputed members are the shared recompute buffers (Recompute).
struct BlockActivations {
  Tensor ln1, ln1_mean, ln1_rstd, qkv, atty, lse, res2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu;
};

template <class S>
class Gpt {
 public:
  // Activations are sized for micro-batch B and sequence length T (<= Tmax) once, here, from
  // `alloc`, which must hand out `backend`'s memory. `tp` is the tensor-parallel group (null
  // when dims.tp == 1). Every buffer access and kernel goes through `backend`
  // (kernels/backend.h): the same code runs on the CPU, a GPU, or the emulated GPU.
  Gpt(const GptDims& dims, int64_t B, int64_t T, TrackingAllocator& alloc,
      Communicator* tp = nullptr, kernels::Backend& backend = kernels::cpu_backend());

  int num_units() const { return int(dims_.L) + 2; }
  const GptDims& dims() const { return dims_; }
  const std::vector<UnitLayout>& layout() const { return layout_; }

  // Forward over inputs (B,T), host memory. With targets (B,T): adds the sum of per-token
  // losses (ignored targets count 0) to loss_sum() and keeps what backward needs. Without:
  // logits only. Nothing here waits for the device: the loss stays in the backend's memory
  // until the caller reads it (once per optimizer step).
  void forward(ParamSource& ps, const int32_t* inputs, const int32_t* targets);
  // One double in the backend's memory: the loss sums of the forwards since zero_loss_sum(),
  // added in forward order (each forward's own sum in the backend's fixed order).
  void zero_loss_sum();
  const double* loss_sum() const { return static_cast<const double*>(loss_sum_.raw()); }
  // Backward of grad_weight * (sum of losses), after forward with targets. Accumulates into
  // ps.grads(); calls ps.grads_done(unit) as each unit finishes, last unit first.
  void backward(ParamSource& ps, float grad_weight);

  // Generation with a KV cache (B = 1, tp = 1, the cpu backend): runs the n tokens at
  // positions pos .. pos+n-1 against the keys and values cached by earlier calls for positions
  // 0 .. pos-1 (pos = 0 starts over), leaving their logits in rows 0 .. n-1 of logits() and
  // their keys and values in the cache. pos + n <= T. A new token costs attention over the
  // pos keys before it, not a forward of the whole window.
  void decode(ParamSource& ps, const int32_t* tokens, int64_t n, int64_t pos);

  // (B,T,Vp/tp) after forward: this rank's vocabulary slice [tp_rank*Vp/tp, ...), in the
  // backend's memory (host memory for cpu and cuda-emu).
  const S* logits() const { return logits_.data<S>(); }

 private:
  template <class P>
  const P* param(const void* unit_base, int unit, int index) const;
  // Tensor-parallel pieces (no-ops or plain kernels when tp == 1).
  void tp_all_reduce(S* x, int64_t n);
  // Rows of the sequence-parallel region: local (this rank's rows) <-> full (all N rows).
  // Without sequence parallelism local and full are the same N rows: gather is a no-op and
  // scatter an in-place all-reduce.
  void gather_rows(const S* local, S* full);
  void scatter_rows(S* full, S* local);
  // LayerNorm (RMSNorm for Llama: mean and bias unused) of this rank's rows of x into `full`,
  // all-gathered under sequence parallelism. With `add`: res = x + add first, in the same pass.
  void layer_norm(Tensor& full, Tensor& mean, Tensor& rstd, const S* x, const S* weight,
                  const S* bias, const S* add = nullptr, S* res = nullptr);
  void norm_backward(S* dx, float* dweight, float* dbias, const S* dout, const S* x,
                     const S* weight, Tensor& mean, Tensor& rstd);
  // One block's forward / backward: GPT-2's and Llama's. With `recompute` (FULL, inside the
  // backward) the forward stops once every buffer the backward reads exists, before the MLP's
  // output projection.
  void gpt2_block_forward(int64_t l, const void* w, bool recompute = false);
  void llama_block_forward(int64_t l, const void* w, bool recompute = false);
  // Refills what block l recomputes (dims.block_recompute) just before its backward.
  void recompute_block(int64_t l, const void* w);
  void gpt2_block_backward(int64_t l, const void* w, float* g);
  void llama_block_backward(int64_t l, const void* w, float* g);
  // What both block backwards start from: dLoss/d(residual) on this rank's rows and its
  // all-gathered form (the same buffer without sequence parallelism), the norm-input gradient
  // (N rows, partial under tp) and its reduced rows here; and parameter `index`'s gradient.
  struct BackwardBuffers {
    S *dres, *dres_full, *dln, *dln_local;
  };
  BackwardBuffers backward_buffers();
  float* param_grad(float* g, int unit, int index) const {
    return g + layout_[size_t(unit)].params[size_t(index)].offset;
  }
  // The row-parallel projection of a block (c_proj / o_proj / down_proj): out = in W (+ bias)
  // over this rank's slice, summed over the tp group (reduce-scattered to this rank's rows
  // under sequence parallelism). Returns the (R, C) result.
  const S* row_parallel(const void* w, int u, const S* in, int64_t K, int wi, int bi);
  // Llama: the unit and parameter index of the LM head (wte when tied).
  int head_unit() const;
  int head_param() const;
  void embed(const void* emb);
  void embed_backward(float* dwte, float* dwpe, const S* dres);
  void vocab_parallel_loss();
  // Row-major GEMMs of the model's three patterns (compute dtype, fp32 weight gradients), for
  // w stored (K, M) (GPT-2's Conv1D) or, with `wt`, (M, K) (nn.Linear, Llama).
  void linear(S* out, const S* in, const S* w, const S* bias, int64_t N, int64_t K, int64_t M,
              bool wt = false);
  void linear_dinput(S* din, const S* dout, const S* w, int64_t N, int64_t K, int64_t M,
                     bool wt = false);
  void linear_dweight(float* dw, const S* in, const S* dout, int64_t N, int64_t K, int64_t M,
                      bool wt = false);

  GptDims dims_;
  int64_t B_, T_;
  Communicator* tp_;
  int tp_rank_ = 0;
  int64_t vocab_begin_ = 0;  // first global vocabulary row of this rank's wte slice
  bool sp_ = false;          // sequence parallel
  int64_t rows_ = 0;         // rows this rank holds in LayerNorm/residual regions: N or N/tp
  int64_t row0_ = 0;         // the first of them
  std::vector<UnitLayout> layout_;
  std::vector<Tensor> residual_;  // L+1 of (B,T,C): the stream entering each block, and out
  std::vector<BlockActivations> blocks_;
  BlockActivations recomputed_;  // the shared recompute buffers (parallel.recompute)
  // The block whose forward values the shared buffers still hold (-1: none): the last block
  // that recomputes, right after the forward. Its backward comes first and needs no refill.
  int64_t recomputed_holds_ = -1;
  Tensor lnf_, lnf_mean_, lnf_rstd_, logits_, losses_, loss_lse_, loss_sum_;
  Tensor inputs_, targets_;
  // Workspace reused by every block: backward scratch, and the sequence-parallel row buffers
  // (local LayerNorm output, reduce-scattered projections and input gradients).
  Tensor dres_, dln_, datty_, dqkv_, dfch_, dscratch_;
  Tensor ln_local_, proj_local_, dln_local_, dres_full_;
  // Llama: RoPE's (T, D/2, 2) cos/sin table (kernels/rope.h), and the SwiGLU input gradient.
  Tensor rope_table_, dact_;
  // decode's key and value caches, per layer (T, KV D), allocated by the first decode.
  std::vector<Tensor> k_cache_, v_cache_;
  TrackingAllocator& alloc_;
  void block_decode(int64_t l, const void* w, int64_t n, int64_t pos);
  // Vocabulary-parallel cross-entropy: per-row statistics in doubles: the max (2N in fp32
  // units), the target logit and the sum of exponentials (4N).
  Tensor ce_max_, ce_aux_;
  kernels::Backend& be_;
  DType dt_;
};

}  // namespace shardtrain::models
