// sample.h — the `sample` subcommand: generate text from trained weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardtrain::launch {

struct SampleArgs {
  std::string ckpt;               // weights written by train --export-final or export: a
                                  // .safetensors file or a model directory
  std::string tokenizer;          // the tokenizer file the training data was encoded with
  std::vector<std::string> sets;  // model fields for files without shardtrain metadata
  std::string prompt;
  std::vector<int32_t> prompt_ids;  // or: the prompt as token ids (no tokenizer needed)
  int tokens = 200;
  double temperature = 0.8;
  int top_k = 40;  // 1: greedy (the most likely id, the smallest on a tie)
  uint64_t seed = 1;
  std::string logits_out;  // the prompt's logits, (prompt length, V) fp32, as safetensors
  bool print_ids = false;  // print the ids (prompt and generated) instead of the text
  bool no_cache = false;   // rerun the whole window per token instead of the KV cache
};

int run_sample(const SampleArgs& args);

}  // namespace shardtrain::launch
