// gpt.h — GPT-2 with explicit forward and backward, unit by unit.
//
// A *unit* is the granule of parameter ownership: unit 0 = embeddings (wte, wpe), units
// 1..L = transformer blocks, unit L+1 = the final LayerNorm. Each unit's parameters are one
// flat buffer in Hugging Face GPT-2 order and shapes (REFERENCE.md), so export is a copy and
// ZeRO can shard, gather and reduce a unit as one contiguous range. The model never owns
// parameters: it asks a ParamSource for them, unit by unit, which is where ZeRO-3 gathers and
// where gradient reduction hooks in. The LM head is tied to wte (unit 0), used again last.
//
// Pre-LN block: x -> LN1 -> c_attn -> causal attention -> c_proj -> +x -> LN2 -> c_fc -> GELU
// -> c_proj -> +. Every buffer a backward needs is saved in Activations; nothing is recomputed
// except the attention scores (flash-style, kernels/attention.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/proto/config.pb.h"
#include "runtime/tensor.h"

namespace shardtrain::models {

struct GptDims {
  int64_t L;     // layers
  int64_t H;     // heads
  int64_t C;     // width
  int64_t V;     // vocabulary
  int64_t Vp;    // vocabulary padded to a multiple of 64 (rows past V are zero, never used)
  int64_t Tmax;  // context length (rows of wpe)
  static GptDims from_config(const proto::ModelConfig& m);
};

enum class ParamInit : uint8_t { kNormal, kResidualNormal, kZero, kOne };

struct ParamInfo {
  std::string name;  // Hugging Face GPT-2 name, e.g. "h.3.attn.c_attn.weight"
  Shape shape;       // as stored here (wte: [Vp, C])
  Shape hf_shape;    // as exported (wte: [V, C])
  int64_t offset;    // elements into the unit's flat buffer
  bool decay;        // AdamW weight decay applies (2-D weights)
  ParamInit init;
  int64_t numel() const { return shape_numel(shape); }
};

struct UnitLayout {
  std::string name;  // "embeddings", "h.0", ..., "ln_f"
  std::vector<ParamInfo> params;
  int64_t numel = 0;
};

std::vector<UnitLayout> gpt_layout(const GptDims& dims);

// Seeded GPT-2 initialisation of one parameter: value i depends only on (seed, name, i), so a
// rank can initialise any slice of any layout and get exactly the unsharded values.
void init_param(const ParamInfo& p, const GptDims& dims, uint64_t seed, int64_t begin,
                int64_t end, float* out);

// Where the model gets parameters and puts gradients (plain storage, or the ZeRO engine).
class ParamSource {
 public:
  virtual ~ParamSource() = default;
  virtual void acquire(int unit) = 0;            // before the unit computes (ZeRO-3: gather)
  virtual const void* params(int unit) = 0;      // compute dtype, valid between acquire/release
  virtual float* grads(int unit) = 0;            // fp32, accumulated into (+=)
  virtual void release(int unit) = 0;            // the unit is done for this pass
  virtual void grads_done(int unit) = 0;         // the unit's backward finished
};

// What one block saves for its backward. Shapes for N = B*T rows: ln*, atty, res2 (N,C);
// qkv (N,3C); fch, fch_gelu (N,4C); *_mean, *_rstd (N) fp32; lse (B,H,T) fp32.
struct BlockActivations {
  Tensor ln1, ln1_mean, ln1_rstd, qkv, atty, lse, res2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu;
};

template <class S>
class Gpt {
 public:
  // Activations are sized for micro-batch B and sequence length T (<= Tmax) once, here.
  Gpt(const GptDims& dims, int64_t B, int64_t T, TrackingAllocator& alloc);

  int num_units() const { return int(dims_.L) + 2; }
  const GptDims& dims() const { return dims_; }
  const std::vector<UnitLayout>& layout() const { return layout_; }

  // Forward over inputs (B,T). With targets (B,T): returns the sum of per-token losses
  // (ignored targets count 0) and keeps what backward needs. Without: computes logits only.
  double forward(ParamSource& ps, const int32_t* inputs, const int32_t* targets);
  // Backward of grad_weight * (sum of losses), after forward with targets. Accumulates into
  // ps.grads(); calls ps.grads_done(unit) as each unit finishes, last unit first.
  void backward(ParamSource& ps, float grad_weight);

  const S* logits() const { return logits_.data<S>(); }  // (B,T,Vp) after forward

 private:
  template <class P>
  const P* param(const void* unit_base, int unit, int index) const;

  GptDims dims_;
  int64_t B_, T_;
  std::vector<UnitLayout> layout_;
  std::vector<Tensor> residual_;  // L+1 of (B,T,C): the stream entering each block, and out
  std::vector<BlockActivations> blocks_;
  Tensor lnf_, lnf_mean_, lnf_rstd_, logits_, losses_, loss_lse_;
  Tensor inputs_, targets_;
  // Backward scratch (workspace), reused by every block.
  Tensor dres_, dln_, datty_, dqkv_, dfch_, dscratch_;
};

}  // namespace shardtrain::models
