// tokenizer_bench.cpp — BPE training time and single-thread encode throughput on a corpus.
//
//   tokenizer_bench CORPUS [VOCAB_SIZE]      (default 8192)
//   e.g. bible Gen1:1-Rev22:21 > /tmp/kjv.txt && tokenizer_bench /tmp/kjv.txt
//
// Trains on the whole file as one document, then encodes it three times on one thread: with
// a cold cache (a freshly loaded tokenizer, as `tokenize` runs), then warm twice, reporting the
// best warm pass. Also checks that decoding gives the file back, so a fast wrong encoder
// cannot report a number.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "models/tokenizer.h"
#include "runtime/error.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  using shardtrain::models::BpeTokenizer;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS [VOCAB_SIZE]\n", argv[0]);
    return 2;
  }
  try {
    std::ifstream in(argv[1], std::ios::binary);
    if (!in) throw shardtrain::UserError(shardtrain::str_cat(argv[1], ": cannot open corpus"));
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const int vocab = argc > 2 ? std::atoi(argv[2]) : 8192;
    const double mb = double(text.size()) / 1e6;
    std::printf("corpus: %s, %.2f MB\n", argv[1], mb);

    // 1. Training.
    auto t0 = Clock::now();
    BpeTokenizer trained = BpeTokenizer::train({text}, vocab);
    const double train_s = seconds_since(t0);
    std::printf("train:  vocab_size %d (%zu merges) in %.3f s\n", trained.vocab_size(),
                trained.merges().size(), train_s);

    // 2. Encoding: cold cache, then the best of two warm passes.
    const std::string path = "/tmp/tokenizer_bench.bpe";
    trained.save(path);
    BpeTokenizer tok = BpeTokenizer::load(path);
    std::remove(path.c_str());
    t0 = Clock::now();
    std::vector<int32_t> ids = tok.encode(text);
    const double cold_s = seconds_since(t0);
    double warm_s = 1e30;
    for (int pass = 0; pass < 2; ++pass) {
      t0 = Clock::now();
      ids = tok.encode(text);
      warm_s = std::min(warm_s, seconds_since(t0));
    }
    if (tok.decode(ids) != text) {
      std::fprintf(stderr, "tokenizer_bench: decode(encode(corpus)) differs from the corpus\n");
      return 1;
    }
    std::printf(
        "encode: %zu tokens (%.2f bytes/token); cold cache %.3f s = %.1f MB/s, "
        "warm %.3f s = %.1f MB/s (one thread)\n",
        ids.size(), double(text.size()) / double(ids.size()), cold_s, mb / cold_s, warm_s,
        mb / warm_s);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", e.what());
    return 1;
  }
}
