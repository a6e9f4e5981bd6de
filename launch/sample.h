// sample.h — the `sample` subcommand: generate text from trained weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardtrain::launch {

struct SampleArgs {
  std::string ckpt;               // a .safetensors file written by train --export-final or export
  std::string tokenizer;          // the tokenizer file the training data was encoded with
  std::vector<std::string> sets;  // model fields for files without shardtrain metadata
  std::string prompt;
  int tokens = 200;
  double temperature = 0.8;
  int top_k = 40;
  uint64_t seed = 1;
};

int run_sample(const SampleArgs& args);

}  // namespace shardtrain::launch
