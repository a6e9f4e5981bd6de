// Config loading, --set overrides by reflection, and validation: each malformed input has its
// own expected message, which must name the field (or file position) and the problem.
#include "runtime/config.h"

#include <gtest/gtest.h>

#include <string>

#include "runtime/error.h"
#include "tests/test_util.h"

namespace shardtrain {
namespace {

using shardtrain::testing::error_of;

const char* kValid = R"pb(
  model { n_layer: 2 n_head: 4 d_model: 64 vocab_size: 256 seq_len: 32 }
  parallel { tp: 2 zero_stage: 1 }
  precision { compute: BF16 }
  optimizer { lr: 1e-3 schedule: COSINE warmup_steps: 2 }
  data { train: "a.bin" train: "b.bin" micro_batch: 2 }
  train { steps: 5 }
)pb";

TEST(Config, ParsesTextAndDefaults) {
  Config c = parse_config_text(kValid, "valid.pbtxt");
  EXPECT_EQ(c.model().n_layer(), 2);
  EXPECT_EQ(c.precision().compute(), proto::BF16);
  EXPECT_EQ(c.data().train_size(), 2);
  EXPECT_EQ(c.optimizer().beta2(), 0.95);  // default from the schema
  EXPECT_EQ(c.precision().loss_scale().initial(), 65536);
  EXPECT_NO_THROW(validate_config(c, 4, ValidateFor::kTrain));
}

TEST(Config, OverridesByReflection) {
  Config c = parse_config_text(kValid, "valid.pbtxt");
  apply_overrides(c, {"model.n_layer=6", "optimizer.lr=3e-4", "precision.compute=f16",
                      "parallel.sequence_parallel=true", "data.val=v1.bin,v2.bin",
                      "train.seed=18446744073709551615", "precision.loss_scale.hysteresis=2"});
  EXPECT_EQ(c.model().n_layer(), 6);
  EXPECT_DOUBLE_EQ(c.optimizer().lr(), 3e-4);
  EXPECT_EQ(c.precision().compute(), proto::F16);
  EXPECT_TRUE(c.parallel().sequence_parallel());
  ASSERT_EQ(c.data().val_size(), 2);
  EXPECT_EQ(c.data().val(1), "v2.bin");
  EXPECT_EQ(c.train().seed(), 18446744073709551615ull);
  EXPECT_EQ(c.precision().loss_scale().hysteresis(), 2);
  apply_override(c, "data.train=only.bin");  // a repeated field is replaced, not appended
  ASSERT_EQ(c.data().train_size(), 1);
}

TEST(Config, EffectiveConfigPrintsDefaults) {
  Config c = parse_config_text("model { n_layer: 3 }", "x");
  std::string text = config_to_text(c);
  EXPECT_NE(text.find("n_layer: 3"), std::string::npos);
  EXPECT_NE(text.find("beta2: 0.95"), std::string::npos);
  EXPECT_NE(text.find("device: \"cpu\""), std::string::npos);
  // Printing is faithful: the text parses back to the same config.
  Config back = parse_config_text(text, "printed");
  EXPECT_EQ(back.model().n_layer(), 3);
  EXPECT_EQ(back.optimizer().beta2(), 0.95);
}

struct BadCase {
  const char* name;
  const char* text;  // config file contents
  const char* set;   // one override, or nullptr
  int world;
  const char* expect;  // substring of the message
};

// Each case is a mistake users make; the message must point at it.
const BadCase kBad[] = {
    {"unknown_field", "model { n_layers: 2 }", nullptr, 1,
     "bad.pbtxt:1:17: unknown field \"n_layers\" in model"},
    {"unknown_section", "modle { n_layer: 2 }", nullptr, 1,
     "bad.pbtxt:1:7: unknown field \"modle\" in the top level"},
    {"syntax", "model { n_layer: 2 ", nullptr, 1, "bad.pbtxt:1:"},
    {"wrong_type_in_file", "model { n_layer: \"two\" }", nullptr, 1,
     "bad.pbtxt:1:18: Expected integer"},
    {"bad_enum_in_file", "precision { compute: FP8 }", nullptr, 1,
     "Unknown enumeration value of \"FP8\" for field \"compute\""},
    {"set_unknown", "", "model.n_layers=3", 1,
     "--set model.n_layers: unknown field \"n_layers\" in model"},
    {"set_no_equals", "", "model.n_layer", 1, "expected path.to.field=value"},
    {"set_not_int", "", "model.n_layer=abc", 1,
     "--set model.n_layer: expected an integer, got 'abc'"},
    {"set_out_of_range", "", "model.n_layer=99999999999", 1,
     "--set model.n_layer: 99999999999 is out of range for int32"},
    {"set_bad_enum", "", "precision.compute=fp8", 1,
     "--set precision.compute: 'fp8' is not one of F32, BF16, F16"},
    {"set_section", "", "model=3", 1, "--set model: is a section; set one of its fields"},
    {"set_through_value", "", "model.n_layer.x=3", 1, "model.n_layer is a value, not a section"},
    {"set_bad_bool", "", "parallel.sequence_parallel=yes", 1, "expected true or false, got 'yes'"},
    {"set_not_number", "", "optimizer.lr=fast", 1, "--set optimizer.lr: expected a number"},
    {"heads_not_dividing", "model { d_model: 100 n_head: 3 }", nullptr, 1,
     "config: model.d_model (100) must be divisible by model.n_head (3)"},
    {"tp_not_dividing_heads", "model { n_head: 12 } parallel { tp: 5 }", nullptr, 5,
     "config: parallel.tp (5) must divide model.n_head (12)"},
    {"world_not_divisible", "parallel { tp: 4 }", nullptr, 6,
     "config: parallel.tp (4) must divide the world size (6 ranks)"},
    {"zero_stage", "parallel { zero_stage: 4 }", nullptr, 1,
     "config: parallel.zero_stage must be 0, 1, 2 or 3, got 4"},
    {"beta1", "optimizer { beta1: 1.0 }", nullptr, 1, "config: optimizer.beta1 must be in [0, 1)"},
    {"negative_lr", "optimizer { lr: -1 }", nullptr, 1, "config: optimizer.lr must be >= 0"},
    {"device", "train { device: \"tpu\" }", nullptr, 1,
     "config: train.device 'tpu' is not one of cpu, cuda, cuda-emu"},
    {"micro_batch", "data { micro_batch: 0 }", nullptr, 1, "config: data.micro_batch must be >= 1"},
    {"no_data", "data { micro_batch: 1 }", "data.train=", 1,
     "config: data.train is empty: name at least one token shard"},
    {"seq_parallel_without_tp", "parallel { sequence_parallel: true }", nullptr, 1,
     "config: parallel.sequence_parallel needs parallel.tp > 1"},
    {"grad_accum_dtype", "precision { compute: BF16 grad_accum_dtype: F16 }", nullptr, 1,
     "config: precision.grad_accum_dtype must be F32 or the same as precision.compute"},
    {"recompute_layers_without_full", "model { n_layer: 4 } parallel { recompute: SELECTIVE }",
     "parallel.recompute_layers=2", 1,
     "config: parallel.recompute_layers needs parallel.recompute FULL"},
    {"recompute_layers_past_model",
     "model { n_layer: 4 } parallel { recompute: FULL recompute_layers: 5 }", nullptr, 1,
     "config: parallel.recompute_layers must be between 0 (all) and model.n_layer (4), got 5"},
    {"set_bad_recompute", "", "parallel.recompute=ALL", 1,
     "--set parallel.recompute: 'ALL' is not one of NONE, SELECTIVE, FULL"},
    {"comm_timeout", "parallel { comm_timeout_s: 0 }", nullptr, 1,
     "config: parallel.comm_timeout_s must be > 0 seconds, got 0"},
    {"eval_without_val", "train { eval_every: 10 }", nullptr, 1,
     "config: data.val is empty but train.eval_every asks for validation"},
};

class BadConfig : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadConfig, ClearMessage) {
  const BadCase& b = GetParam();
  std::string msg = error_of([&] {
    Config c = parse_config_text(b.text, "bad.pbtxt");
    if (c.data().train_size() == 0) c.mutable_data()->add_train("t.bin");
    if (b.set) apply_override(c, b.set);
    validate_config(c, b.world, ValidateFor::kTrain);
  });
  EXPECT_NE(msg.find(b.expect), std::string::npos) << "got: " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

INSTANTIATE_TEST_SUITE_P(Cases, BadConfig, ::testing::ValuesIn(kBad),
                         [](const auto& test_info) { return std::string(test_info.param.name); });

TEST(Config, UnknownOverrideListsTheFields) {
  Config c;
  std::string msg = error_of([&] { apply_override(c, "model.n_layers=3"); });
  EXPECT_NE(msg.find("unknown field \"n_layers\" in model (fields: model.n_layer, model.n_head"),
            std::string::npos)
      << msg;
}

TEST(Config, MissingFileNamesIt) {
  std::string msg = error_of([] { load_config_file("/nonexistent/x.pbtxt"); });
  EXPECT_EQ(msg, "/nonexistent/x.pbtxt: cannot open config file");
}

}  // namespace
}  // namespace shardtrain
