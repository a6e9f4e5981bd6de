// hf_export.cpp — the export target: one .safetensors file or a Hugging Face model directory
// (rules in hf_export.h).
#include "launch/hf_export.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <system_error>

#include "models/gpt.h"
#include "runtime/atomic_file.h"
#include "runtime/error.h"
#include "runtime/log.h"

namespace shardtrain::launch {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kSafetensorsSuffix = ".safetensors";
constexpr const char* kWeightsFile = "model.safetensors";
constexpr const char* kConfigFile = "config.json";
constexpr const char* kPartialSuffix = ".partial";

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// The directory rule of hf_export.h: "" if PATH may be written, else why not.
std::string directory_problem(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) return "";
  if (!fs::is_directory(st)) {
    return "exists and is not a directory; an export is a file ending in .safetensors or a "
           "model directory";
  }
  if (fs::exists(fs::path(path) / kConfigFile)) return "";  // a model directory: replaced
  if (fs::directory_iterator(path, ec) != fs::directory_iterator()) {
    return "is a directory that is neither empty nor a model directory (no config.json); give "
           "a new path";
  }
  return ec ? ec.message() : "";
}

}  // namespace

HfExportPlan plan_hf_export(const std::string& out, const std::string& tokenizer_flag,
                            const proto::Config& config, bool check) {
  HfExportPlan plan;
  plan.path = out;
  while (plan.path.size() > 1 && plan.path.back() == '/') plan.path.pop_back();
  plan.directory = !ends_with(plan.path, kSafetensorsSuffix);
  if (!check) return plan;
  if (!plan.directory) {
    if (tokenizer_flag.empty() && !config.data().tokenizer().empty()) {
      log_info("data.tokenizer is not exported: ", plan.path,
               " is a .safetensors file, the weights only");
    }
    ST_USER_CHECK(tokenizer_flag.empty(), "--tokenizer ", tokenizer_flag, ": ", plan.path,
                  " is a .safetensors file, which holds the weights only; export into a model "
                  "directory (a path not ending in .safetensors) to write the tokenizer too");
    ST_USER_CHECK(!fs::is_directory(plan.path), plan.path, ": is a directory");
    return plan;
  }
  const std::string problem = directory_problem(plan.path);
  ST_USER_CHECK(problem.empty(), plan.path, ": ", problem);

  // The tokenizer: read now, so that a bad file or a duplicate vocabulary string stops the run
  // before any work.
  plan.tokenizer_path = tokenizer_flag.empty() ? config.data().tokenizer() : tokenizer_flag;
  if (!plan.tokenizer_path.empty()) {
    const models::BpeTokenizer tok = models::BpeTokenizer::load(plan.tokenizer_path);
    ST_USER_CHECK(tok.vocab_size() <= config.model().vocab_size(), plan.tokenizer_path,
                  ": vocabulary of ", tok.vocab_size(), " exceeds model.vocab_size (",
                  config.model().vocab_size(), ")");
    plan.tokenizer = models::hf_tokenizer_files(tok, config.model().seq_len(), plan.tokenizer_path);
    plan.eot_id = tok.eot_id();
  }
  return plan;
}

namespace {

// LlamaConfig's fields (transformers' LlamaForCausalLM): SwiGLU ("silu"), RMSNorm eps, RoPE
// theta, grouped-query heads, no biases; rope_scaling in the "llama3" form that transformers
// reads from 4.43 on (null without one; transformers 4.38, the tests' version, refuses it).
std::string llama_config_json(const proto::ModelConfig& m, int32_t eot_id) {
  const models::GptDims d = models::GptDims::from_config(m);
  const nlohmann::json eot = eot_id >= 0 ? nlohmann::json(eot_id) : nlohmann::json(nullptr);
  nlohmann::ordered_json scaling = nullptr;
  if (m.has_rope_scaling()) {
    scaling = {{"rope_type", "llama3"},
               {"factor", m.rope_scaling().factor()},
               {"low_freq_factor", m.rope_scaling().low_freq_factor()},
               {"high_freq_factor", m.rope_scaling().high_freq_factor()},
               {"original_max_position_embeddings", m.rope_scaling().original_max_position()}};
  }
  const nlohmann::ordered_json c = {{"architectures", {"LlamaForCausalLM"}},
                                    {"model_type", "llama"},
                                    {"vocab_size", m.vocab_size()},
                                    {"hidden_size", m.d_model()},
                                    {"intermediate_size", d.F},
                                    {"num_hidden_layers", m.n_layer()},
                                    {"num_attention_heads", m.n_head()},
                                    {"num_key_value_heads", d.KV},
                                    {"hidden_act", "silu"},
                                    {"max_position_embeddings", m.seq_len()},
                                    {"initializer_range", 0.02},
                                    {"rms_norm_eps", m.norm_eps()},
                                    {"rope_theta", m.rope_theta()},
                                    {"rope_scaling", scaling},
                                    {"attention_bias", false},
                                    {"attention_dropout", 0.0},
                                    {"mlp_bias", false},
                                    {"pretraining_tp", 1},
                                    {"tie_word_embeddings", m.tie_embeddings()},
                                    {"use_cache", true},
                                    {"bos_token_id", eot},
                                    {"eos_token_id", eot},
                                    {"torch_dtype", "float32"}};
  return c.dump(2) + "\n";
}

}  // namespace

std::string hf_config_json(const proto::ModelConfig& m, int32_t eot_id) {
  if (m.arch() == proto::LLAMA) return llama_config_json(m, eot_id);
  // GPT2Config's fields for shardtrain's GPT-2: tanh GELU ("gelu_new"), the LM head tied to
  // wte, 4 x width MLP (n_inner null), no dropout (shardtrain trains without it). vocab_size
  // is the model's, without tensor-parallel padding: export writes wte with that many rows.
  const nlohmann::json eot = eot_id >= 0 ? nlohmann::json(eot_id) : nlohmann::json(nullptr);
  const nlohmann::ordered_json c = {{"architectures", {"GPT2LMHeadModel"}},
                                    {"model_type", "gpt2"},
                                    {"vocab_size", m.vocab_size()},
                                    {"n_positions", m.seq_len()},
                                    {"n_embd", m.d_model()},
                                    {"n_layer", m.n_layer()},
                                    {"n_head", m.n_head()},
                                    {"n_inner", nullptr},
                                    {"activation_function", "gelu_new"},
                                    {"layer_norm_epsilon", models::kGptLayerNormEps},
                                    {"initializer_range", 0.02},
                                    {"resid_pdrop", 0.0},
                                    {"embd_pdrop", 0.0},
                                    {"attn_pdrop", 0.0},
                                    {"scale_attn_weights", true},
                                    {"scale_attn_by_inverse_layer_idx", false},
                                    {"reorder_and_upcast_attn", false},
                                    {"tie_word_embeddings", true},
                                    {"bos_token_id", eot},
                                    {"eos_token_id", eot},
                                    {"torch_dtype", "float32"}};
  return c.dump(2) + "\n";
}

void write_hf_export(const HfExportPlan& plan, parallel::ZeroEngine& engine,
                     const proto::ModelConfig& model, const std::string& model_text, bool writer) {
  if (!plan.directory) {
    engine.export_hf(plan.path, model_text);
    if (writer) log_info("wrote ", plan.path);
    return;
  }
  // 1. Where the files go: a fresh PATH.partial/, or PATH itself without its config.json.
  const bool fresh = !fs::exists(plan.path);
  const std::string dir = fresh ? plan.path + kPartialSuffix : plan.path;
  if (writer) {
    std::error_code ec;
    if (fresh) {
      fs::remove_all(dir, ec);
      fs::create_directories(dir, ec);
      ST_USER_CHECK(!ec, dir, ": cannot create directory: ", ec.message());
    } else {
      const std::string problem = directory_problem(plan.path);  // may have changed since
      ST_USER_CHECK(problem.empty(), plan.path, ": ", problem);
      fs::remove(fs::path(dir) / kConfigFile, ec);
      ST_USER_CHECK(!ec, dir, "/", kConfigFile, ": cannot remove: ", ec.message());
      fsync_path(dir);
    }
  }
  // 2. The weights (collective), then the tokenizer, config.json last.
  engine.export_hf(dir + "/" + kWeightsFile, model_text);
  if (!writer) return;
  if (!plan.tokenizer && fs::exists(fs::path(dir) / "tokenizer.json")) {
    log_warn(dir,
             "/tokenizer.json is left from before: this export has no tokenizer to replace "
             "it with (give --tokenizer)");
  }
  if (plan.tokenizer) {
    write_atomically(dir + "/tokenizer.json", plan.tokenizer->tokenizer_json);
    write_atomically(dir + "/tokenizer_config.json", plan.tokenizer->tokenizer_config_json);
    write_atomically(dir + "/special_tokens_map.json", plan.tokenizer->special_tokens_map_json);
  }
  write_atomically(dir + "/" + kConfigFile, hf_config_json(model, plan.eot_id));
  fsync_path(dir);
  // 3. A fresh directory appears under its name complete, or not at all.
  if (fresh) {
    std::error_code ec;
    fs::rename(dir, plan.path, ec);
    ST_USER_CHECK(!ec, plan.path, ": cannot rename ", dir, " into place: ", ec.message());
    fsync_path(fs::path(plan.path).parent_path().empty()
                   ? "."
                   : fs::path(plan.path).parent_path().string());
  }
  log_info("wrote ", plan.path, "/ (", kWeightsFile, ", ", kConfigFile,
           plan.tokenizer ? str_cat(", tokenizer.json from ", plan.tokenizer_path) : "", ")");
}

}  // namespace shardtrain::launch
