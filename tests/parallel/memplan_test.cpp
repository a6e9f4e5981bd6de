// The memory planner: the ZeRO paper's worked example, model states against the paper's
// formula where no padding applies, ZeroEngine's padding rule, 16-bit gradients, activations
// against the Korthikanti-derived count, tensor-parallel splits, the candidate search, byte
// sizes. (Measured-vs-predicted on real runs: tests/launch/memory_checks.py.)
#include "parallel/memplan.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>

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

int64_t model_states(const MemPlan& p) {
  return p.steady[kParams] + p.steady[kMaster] + p.steady[kGrads] + p.steady[kOptim];
}

// A model whose every unit is a multiple of 4 x 16 elements (no ZeRO padding at dp 1, 2, 4):
// C = 64: embeddings (128 + 32) x 64 = 10240, blocks 12 C^2 + 13 C = 49984 = 64 x 781,
// ln_f 128.
MemPlanInput aligned_model(int world, int stage, DType compute) {
  MemPlanInput in;
  in.L = 2;
  in.H = 4;
  in.C = 64;
  in.V = 128;
  in.Tmax = 32;
  in.T = 32;
  in.B = 4;
  in.world = world;
  in.zero_stage = stage;
  in.compute = compute;
  return in;
}

TEST(ZeroPaper, WorkedExample) {
  // Rajbhandari et al. (REFERENCE.md): Psi = 7.5B, N_d = 64, fp16 params and grads, K = 12:
  // 120 GB, 31.4 GB, 16.6 GB, 1.9 GB per device for DP and stages 1-3 (GB = 1e9 bytes, the
  // paper rounds to one decimal).
  const double psi = 7.5e9;
  const double want[] = {120.0, 31.4, 16.6, 1.9};
  for (int stage = 0; stage <= 3; ++stage) {
    const double gb = zero_paper_bytes(psi, 64, stage, 2, 2, 12) / 1e9;
    EXPECT_NEAR(gb, want[stage], 0.05) << "stage " << stage;
  }
  // Exact values behind the rounding: 16 Psi, 4 Psi + 12 Psi / 64, 2 Psi + 14 Psi / 64,
  // 16 Psi / 64.
  EXPECT_DOUBLE_EQ(zero_paper_bytes(psi, 64, 0, 2, 2, 12), 120e9);
  EXPECT_DOUBLE_EQ(zero_paper_bytes(psi, 64, 1, 2, 2, 12), 31.40625e9);
  EXPECT_DOUBLE_EQ(zero_paper_bytes(psi, 64, 2, 2, 2, 12), 16.640625e9);
  EXPECT_DOUBLE_EQ(zero_paper_bytes(psi, 64, 3, 2, 2, 12), 1.875e9);
}

TEST(MemPlan, ModelStatesEqualThePaperFormulaWithoutPadding) {
  // Our byte sizes: bf16 params, fp32 grads, K = 12 (fp32 master, m, v); fp32 compute has no
  // separate master (K = 8), the parameters are the master weights.
  for (int world : {1, 2, 4}) {
    for (int stage = 0; stage <= 3; ++stage) {
      for (DType dt : {DType::kBF16, DType::kF32}) {
        const MemPlan p = plan_memory(aligned_model(world, stage, dt));
        const double pb = double(dtype_bytes(dt)), k = dt == DType::kF32 ? 8 : 12;
        EXPECT_EQ(p.padding, 0);
        EXPECT_EQ(double(model_states(p)),
                  zero_paper_bytes(double(p.num_params), world, stage, pb, 4, k))
            << "world " << world << " stage " << stage << " " << dtype_name(dt);
      }
    }
  }
}

TEST(MemPlan, PaddingFollowsZeroEngine) {
  // Width 72: a block has 12*72^2 + 13*72 = 63144 elements; at dp 3 units are padded to a
  // multiple of 3 x 16 = 48: 63168 (24 padding); ln_f 144 = 3 x 48 (none); embeddings
  // (128 + 32) x 72 = 11520 = 240 x 48 (none).
  MemPlanInput in = aligned_model(3, 3, DType::kF32);
  in.C = 72;
  const MemPlan p = plan_memory(in);
  const int64_t q = 3 * ZeroEngine::kAlign;
  EXPECT_EQ(q, 48);
  const int64_t padded = 11520 + 2 * 63168 + 144;
  EXPECT_EQ(p.steady[kParams], padded / 3 * 4);
  EXPECT_EQ(p.steady[kGrads], padded / 3 * 4);
  EXPECT_EQ(p.steady[kOptim], padded / 3 * 8);
  // Padding = held minus n / dp per shard: 48 padding elements x 16 bytes / 3 ranks.
  EXPECT_EQ(p.padding, 48 * 16 / 3);
}

TEST(MemPlan, SixteenBitGradientAccumulation) {
  MemPlanInput in = aligned_model(2, 1, DType::kBF16);
  const MemPlan f32 = plan_memory(in);
  in.grad = DType::kBF16;
  const MemPlan bf16 = plan_memory(in);
  EXPECT_EQ(bf16.steady[kGrads] * 2, f32.steady[kGrads]);
  EXPECT_EQ(bf16.steady[kOptim], f32.steady[kOptim]);
  // Stage 2: the transient full-size gradient buffers and reduce shards halve too.
  in.zero_stage = 2;
  const MemPlan s2 = plan_memory(in);
  in.grad = DType::kF32;
  const MemPlan s2f = plan_memory(in);
  EXPECT_EQ(2 * (s2.peak[kGrads] - s2.steady[kGrads]), s2f.peak[kGrads] - s2f.steady[kGrads]);
  EXPECT_EQ(2 * s2.peak[kComm], s2f.peak[kComm]);
}

TEST(MemPlan, ActivationsPerLayerMatchTheKorthikantiCount) {
  // One more layer adds s b h (16 e) + s b (16 + 4 a) bytes: Korthikanti's s b h 34 (16-bit)
  // without the 2 s b h of dropout masks and without the 5 a s^2 b of scores (flash
  // attention), plus fp32 LayerNorm statistics (16 bytes per row) and the logsumexp (4 a).
  for (DType dt : {DType::kBF16, DType::kF32}) {
    MemPlanInput in = aligned_model(1, 0, dt);
    in.B = 3;
    const int64_t s = in.T, b = in.B, h = in.C, a = in.H, e = dtype_bytes(dt);
    const int64_t two = plan_memory(in).steady[kActs];
    in.L = 3;
    const int64_t three = plan_memory(in).steady[kActs];
    EXPECT_EQ(three - two, s * b * h * 16 * e + s * b * (16 + 4 * a));
    if (dt == DType::kBF16) {
      EXPECT_EQ(three - two, s * b * h * (34 - 2) + s * b * (16 + 4 * a));
    }
  }
}

TEST(MemPlan, RecomputationKeepsWhatEachModeSays) {
  // Per layer, by hand from what models::Gpt keeps (models/gpt.h, Recompute), 16-bit (e = 2)
  // and fp32: NONE adds s b h (16 e) + s b (16 + 4 a) per layer (above); SELECTIVE adds the
  // input, qkv, atty, res2, fch (1 + 3 + 1 + 1 + 4 = 10 of s b h) and the logsumexp (4 a s b),
  // ln1, ln2, fch_gelu and the 16 s b of statistics being one shared set; FULL adds the input
  // only (Korthikanti's 2 s b h). The shared set: SELECTIVE s b h (6 e) + 16 s b; FULL all of
  // a layer but its input, s b h (15 e) + s b (16 + 4 a).
  for (DType dt : {DType::kBF16, DType::kF32}) {
    MemPlanInput in = aligned_model(1, 0, dt);
    in.B = 3;
    const int64_t s = in.T, b = in.B, h = in.C, a = in.H, e = dtype_bytes(dt);
    auto acts = [&](proto::Recompute mode, int64_t L, int64_t layers = 0) {
      MemPlanInput c = in;
      c.recompute = mode;
      c.L = L;
      c.recompute_layers = layers;
      return plan_memory(c).steady[kActs];
    };
    const int64_t none2 = acts(proto::NONE, 2);
    EXPECT_EQ(acts(proto::SELECTIVE, 3) - acts(proto::SELECTIVE, 2),
              s * b * h * 10 * e + 4 * a * s * b);
    EXPECT_EQ(acts(proto::FULL, 3) - acts(proto::FULL, 2), s * b * h * e);
    // Against NONE at the same depth: each layer's recomputed part, less one shared copy.
    EXPECT_EQ(none2 - acts(proto::SELECTIVE, 2), (2 - 1) * (s * b * h * 6 * e + 16 * s * b));
    EXPECT_EQ(none2 - acts(proto::FULL, 2), (2 - 1) * (s * b * h * 15 * e + s * b * (16 + 4 * a)));
    // FULL on the first block of 4: three blocks keep everything, one recomputes into the
    // shared set, which costs what it saves.
    EXPECT_EQ(acts(proto::FULL, 4, 1), acts(proto::NONE, 4));
    EXPECT_EQ(acts(proto::FULL, 4, 3),
              acts(proto::NONE, 4) - 2 * (s * b * h * 15 * e + s * b * (16 + 4 * a)));
    if (dt == DType::kBF16) {  // 16-bit: SELECTIVE 20 s b h per layer, FULL 2 s b h
      EXPECT_EQ(acts(proto::SELECTIVE, 3) - acts(proto::SELECTIVE, 2),
                s * b * h * 20 + 4 * a * s * b);
      EXPECT_EQ(acts(proto::FULL, 3) - acts(proto::FULL, 2), 2 * s * b * h);
    }
  }
}

TEST(MemPlan, TensorParallelSplitsAsMegatron) {
  MemPlanInput in = aligned_model(4, 0, DType::kBF16);
  const MemPlan t1 = plan_memory(in);
  in.tp = 2;
  const MemPlan t2 = plan_memory(in);
  // Per tp rank: block weights and column biases halve; LayerNorms, row biases, wpe stay.
  const int64_t C = 64, block1 = 12 * C * C + 13 * C;
  const int64_t block2 = 12 * C * C / 2 + (3 * C + 4 * C) / 2 + 2 * C + 4 * C;
  const int64_t emb2 = 128 * C / 2 + 32 * C;
  // ZeRO stage 0 with dp = 2 (tp 2): full units, padded to a multiple of 32 elements.
  auto pad = [](int64_t n, int64_t q) { return (n + q - 1) / q * q; };
  EXPECT_EQ(t2.steady[kParams], 2 * (pad(emb2, 32) + 2 * pad(block2, 32) + pad(2 * C, 32)));
  EXPECT_EQ(t1.steady[kParams], 2 * (128 * C + 32 * C + 2 * block1 + 2 * C));
  EXPECT_EQ(t2.num_params, t1.num_params);  // the whole model, replicated parts once
  // Korthikanti's tp formula: per layer s b h (10 + 24 / t) in 16-bit (we have no dropout
  // masks: 8 + 24 / t) plus the stats and logsumexp / t.
  in.L = 3;
  const int64_t per_layer = plan_memory(in).steady[kActs] - t2.steady[kActs];
  const int64_t s = in.T, b = in.B, h = C, a = in.H;
  EXPECT_EQ(per_layer, s * b * h * (8 + 24 / 2) + s * b * (16 + 4 * a / 2));
  // Sequence parallel (models::Gpt): the residual, res2 and the LayerNorm statistics hold
  // 1/t of the rows, the LayerNorm outputs ln1, ln2 stay whole (2 + 2/t + 4/t + 8/t elements
  // per s b h: 9 at t = 2, i.e. 18 bytes in 16-bit, against Korthikanti's 34/t = 17).
  in.sequence_parallel = true;
  MemPlanInput two_layers = in;
  two_layers.L = 2;
  const int64_t sp_layer = plan_memory(in).steady[kActs] - plan_memory(two_layers).steady[kActs];
  EXPECT_EQ(sp_layer, s * b * h * 18 + s * b * (16 / 2 + 4 * a / 2));
}

TEST(MemPlan, StageThreeTransientsAreBounded) {
  // At most two gathered units at once (the one computing and the prefetched next): here
  // two blocks, larger than embeddings + a block; gradient buffers: the embeddings' full
  // buffer (alive from the head's backward to the end) plus two blocks; reduce shards: two
  // blocks' (the newest pending and the one just started).
  MemPlanInput in = aligned_model(2, 3, DType::kBF16);
  in.L = 4;
  const MemPlan p = plan_memory(in);
  const int64_t emb = (128 + 32) * 64, block = 49984;
  ASSERT_GT(block, emb);
  EXPECT_EQ(p.peak[kParams] - p.steady[kParams], 2 * block * 2);
  EXPECT_EQ(p.peak[kGrads] - p.steady[kGrads], (emb + 2 * block) * 4);
  EXPECT_EQ(p.peak[kComm], 2 * block / 2 * 4);
}

TEST(MemPlan, CandidatesAndLargestMicroBatch) {
  MemPlanInput in = aligned_model(4, 1, DType::kBF16);
  const int64_t device = int64_t(64) << 20;
  const auto rows = plan_candidates(in, device);
  // tp in {1, 2, 4} (divides 4 heads and 4 ranks) x 4 stages x 3 recomputation modes.
  ASSERT_EQ(rows.size(), 36u);
  for (const auto& r : rows) {
    MemPlanInput c = in;
    c.tp = r.tp;
    c.zero_stage = r.zero_stage;
    c.recompute = r.recompute;
    EXPECT_EQ(r.total, plan_memory(c).peak_total);
    EXPECT_EQ(r.fits, r.total <= device);
    ASSERT_GE(r.max_micro_batch, 1);
    c.B = r.max_micro_batch;
    EXPECT_LE(plan_memory(c).peak_total, device);
    c.B = r.max_micro_batch + 1;
    EXPECT_GT(plan_memory(c).peak_total, device);
  }
}

TEST(MemPlan, RecomputationGrowsTheLargestMicroBatch) {
  // GPT-2 1.5B (configs/gpt2_xl.pbtxt) on 8 ranks of 80 GiB, bf16, micro-batch 4 x 1024: at
  // every stage and tp, SELECTIVE fits a larger micro-batch than NONE and FULL a larger one
  // still, because each keeps fewer activation bytes per sample (RecomputationKeepsWhatEach-
  // ModeSays) while the model states do not change.
  MemPlanInput in;
  in.L = 48;
  in.H = 25;
  in.C = 1600;
  in.V = 50257;
  in.Tmax = in.T = 1024;
  in.B = 4;
  in.world = 8;
  in.compute = DType::kBF16;
  const auto rows = plan_candidates(in, int64_t(80) << 30);
  ASSERT_EQ(rows.size(), 1u * 4u * 3u);  // tp 1 only: 25 heads
  for (size_t i = 0; i < rows.size(); i += 3) {
    ASSERT_EQ(rows[i].recompute, proto::NONE);
    ASSERT_EQ(rows[i + 1].recompute, proto::SELECTIVE);
    ASSERT_EQ(rows[i + 2].recompute, proto::FULL);
    EXPECT_GT(rows[i].total, rows[i + 1].total);
    EXPECT_GT(rows[i + 1].total, rows[i + 2].total);
    EXPECT_GE(rows[i].max_micro_batch, 1);
    EXPECT_GT(rows[i + 1].max_micro_batch, rows[i].max_micro_batch)
        << "stage " << rows[i].zero_stage;
    EXPECT_GT(rows[i + 2].max_micro_batch, rows[i + 1].max_micro_batch);
  }
}

TEST(MemPlan, SevenBillionOnSixtyFourRanksIsFast) {
  // GPT with L 32, H 32, C 4096, T 2048, GPT-2 vocabulary: 6.66e9 parameters.
  MemPlanInput in;
  in.L = 32;
  in.H = 32;
  in.C = 4096;
  in.V = 50257;
  in.Tmax = in.T = 2048;
  in.B = 1;
  in.world = 64;
  in.compute = DType::kBF16;
  const auto t0 = std::chrono::steady_clock::now();
  const auto rows = plan_candidates(in, int64_t(80) << 30);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 5.0);  // thousands of replays of 34 units: well under a second normally
  EXPECT_EQ(rows.size(), 6u * 4u * 3u);  // tp 1, 2, 4, ..., 32 x stages x recompute modes
  EXPECT_FALSE(rows[0].fits);            // plain DP: 16 bytes x 6.66e9 > 80 GiB
  EXPECT_EQ(rows[0].max_micro_batch, 0);
  EXPECT_EQ(rows[9].zero_stage, 3);
  EXPECT_EQ(rows[9].recompute, proto::NONE);
  EXPECT_TRUE(rows[9].fits);  // ZeRO-3
  const MemPlan p = plan_memory(in);
  EXPECT_EQ(p.num_params,
            50304LL * 4096 + 2048LL * 4096 + 32 * (12LL * 4096 * 4096 + 13 * 4096) + 2 * 4096);
}

TEST(ByteSize, ParsesUnitsAndRejectsGarbage) {
  EXPECT_EQ(parse_byte_size("80GiB", "--m"), int64_t(80) << 30);
  EXPECT_EQ(parse_byte_size("40GB", "--m"), int64_t(40e9));
  EXPECT_EQ(parse_byte_size("1.5 TiB", "--m"), int64_t(3) << 39);
  EXPECT_EQ(parse_byte_size("512mib", "--m"), int64_t(512) << 20);
  EXPECT_EQ(parse_byte_size("1073741824", "--m"), int64_t(1) << 30);
  EXPECT_EQ(parse_byte_size("2e9", "--m"), int64_t(2e9));
  for (const char* bad : {"", "GiB", "80XB", "-1GiB", "0", "8 0GB", "1e30"}) {
    EXPECT_THROW(parse_byte_size(bad, "--m"), UserError) << bad;
  }
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(12), "12 B");
}

}  // namespace
}  // namespace shardtrain::parallel
