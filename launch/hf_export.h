// hf_export.h — where `export --out PATH` and `train --export-final PATH` write.
//
// PATH ending in ".safetensors": that one file, the weights in Hugging Face's GPT-2 layout
// (ZeroEngine::export_hf). Any other PATH: a Hugging Face model directory that
// `AutoModelForCausalLM.from_pretrained(PATH)` loads as is: model.safetensors (the same
// file), config.json (GPT2Config), and, when the tokenizer is known (--tokenizer, or
// data.tokenizer), tokenizer.json, tokenizer_config.json and special_tokens_map.json for
// `AutoTokenizer.from_pretrained(PATH)` (models/tokenizer_hf.h).
//
// A directory PATH is written so that it never looks complete while it is not:
//   - PATH absent: everything goes to PATH.partial/ (a leftover of that name is removed),
//     each file fsynced, then the directory is renamed to PATH.
//   - PATH an empty directory, or one with a config.json (a previous export, any Hugging Face
//     model): config.json is removed first, every file is replaced through a temporary name,
//     and config.json comes last, so an interrupted export leaves no config.json (which
//     from_pretrained needs) rather than old and new files mixed. Other files stay.
//   - anything else (a non-empty directory without config.json, a file) is refused.
// plan_hf_export() checks all of that and reads the tokenizer before any work, so a train run
// fails at set-up, not after its last step.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "models/tokenizer_hf.h"
#include "parallel/zero.h"
#include "runtime/proto/config.pb.h"

namespace shardtrain::launch {

struct HfExportPlan {
  std::string path;            // as given, trailing '/' removed
  bool directory = false;      // false: one .safetensors file
  std::string tokenizer_path;  // directory only; empty: no tokenizer files
  std::optional<models::HfTokenizerFiles> tokenizer;
  int32_t eot_id = -1;  // the tokenizer's <|endoftext|>, or -1
};

// `tokenizer_flag` (export --tokenizer) wins over `config`'s data.tokenizer; a flag with a
// .safetensors PATH is refused (it would do nothing). A tokenizer larger than the model's
// vocabulary, an unreadable one, or a bad PATH is a UserError. With check = false (ranks that
// do not write) only PATH's form is read: nothing is checked or loaded.
HfExportPlan plan_hf_export(const std::string& out, const std::string& tokenizer_flag,
                            const proto::Config& config, bool check = true);

// config.json for `model` (GPT2Config); eot_id < 0 leaves bos/eos_token_id null.
std::string hf_config_json(const proto::ModelConfig& model, int32_t eot_id);

// Collective over the engine's groups (every rank calls it); `writer` (world rank 0, which
// ZeroEngine::export_hf writes on) writes the files. `model_text` goes into the weights'
// metadata ("shardtrain.model").
void write_hf_export(const HfExportPlan& plan, parallel::ZeroEngine& engine,
                     const proto::ModelConfig& model, const std::string& model_text, bool writer);

}  // namespace shardtrain::launch
