// tokenize.h — the `tokenize` subcommand: text files -> BPE tokenizer + token shards.
//
// Outputs, in args.out_dir: tokenizer.bpe (models/tokenizer.h format), train_000.bin and
// val_000.bin (models/data.h shard format, vocab = the tokenizer's vocab_size). The inputs, in
// the given order, form one text; each file's tokens end with <|endoftext|>. The validation
// split is the last val_fraction of that text's bytes, moved to the nearest line start (after
// a '\n', or a file's start) so that no line is split; val_fraction 0 writes no val_000.bin.
// A trained tokenizer learns from the training split only, so validation text stays unseen.
#pragma once

#include <string>
#include <vector>

namespace shardtrain::launch {

struct TokenizeArgs {
  std::vector<std::string> inputs;  // text files, in order
  int vocab_size = 0;               // for training; ignored (taken from it) with `tokenizer`
  std::string out_dir;
  double val_fraction = 0.1;  // in [0, 1)
  std::string tokenizer;      // an existing tokenizer.bpe to use instead of training one
};

// Returns 0; every user-fixable problem (a missing input, a bad fraction, an unwritable
// output) is a UserError naming the file or flag.
int run_tokenize(const TokenizeArgs& args);

}  // namespace shardtrain::launch
