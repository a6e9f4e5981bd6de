// The `tokenize` subcommand's work (run_tokenize) on temporary files: outputs decode back to
// the inputs, the validation cut sits at a line start, a loaded tokenizer reproduces the
// shards, chunked encoding equals whole encoding, and user mistakes give named errors.
#include "launch/tokenize.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>

#include "models/data.h"
#include "models/tokenizer.h"
#include "runtime/error.h"
#include "tests/test_util.h"

namespace shardtrain::launch {
namespace {

using shardtrain::testing::error_of;
using shardtrain::testing::read_bytes;
using shardtrain::testing::TempDir;
using shardtrain::testing::write_bytes;

namespace fs = std::filesystem;
using models::BpeTokenizer;

std::vector<int32_t> shard_tokens(const std::string& path, int64_t expected_vocab) {
  auto shard = models::TokenShard::open(path);
  EXPECT_EQ(shard->vocab_size(), expected_vocab) << path;
  std::vector<int32_t> out;
  for (int64_t i = 0; i < shard->num_tokens(); ++i) out.push_back(int32_t(shard->token(i)));
  return out;
}

// Numbered lines of prose; line i is distinct so that the text is not trivially periodic.
std::string prose(int lines, int first) {
  std::string text;
  for (int i = first; i < first + lines; ++i) {
    text += str_cat("Verse ", i, ": and the light was good, and it was evening and morning.\n");
    if (i % 7 == 0) text += "    Indented line, with its leading spaces.\n";
  }
  return text;
}

TEST(Tokenize, TrainsAndSplitsAtALineStart) {
  TempDir dir;
  const std::string a = prose(40, 0), b = prose(25, 100);
  write_bytes(dir.file("a.txt"), a);
  write_bytes(dir.file("b.txt"), b);
  TokenizeArgs args;
  args.inputs = {dir.file("a.txt"), dir.file("b.txt")};
  args.vocab_size = 300;
  args.out_dir = dir.file("out");
  args.val_fraction = 0.25;
  ASSERT_EQ(run_tokenize(args), 0);

  BpeTokenizer tok = BpeTokenizer::load(dir.file("out/tokenizer.bpe"));
  ASSERT_EQ(tok.vocab_size(), 300);
  const std::vector<int32_t> train = shard_tokens(dir.file("out/train_000.bin"), 300);
  const std::vector<int32_t> val = shard_tokens(dir.file("out/val_000.bin"), 300);
  // Each file ends with one <|endoftext|>: the cut falls inside b, so both eots are apart.
  EXPECT_EQ(std::count(train.begin(), train.end(), tok.eot_id()), 1);
  EXPECT_EQ(std::count(val.begin(), val.end(), tok.eot_id()), 1);
  EXPECT_EQ(val.back(), tok.eot_id());
  const std::string train_text = tok.decode(train), val_text = tok.decode(val);
  EXPECT_EQ(train_text + val_text, a + "<|endoftext|>" + b + "<|endoftext|>");
  // The cut is at a line start, near 25% of the bytes.
  const size_t total = a.size() + b.size();
  const size_t cut = total - (val_text.size() - std::string("<|endoftext|>").size());
  EXPECT_EQ((a + b)[cut - 1], '\n');
  EXPECT_NEAR(double(total - cut) / double(total), 0.25, 0.02);
}

TEST(Tokenize, LoadedTokenizerReproducesTheShards) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), prose(40, 0));
  TokenizeArgs args;
  args.inputs = {dir.file("a.txt")};
  args.vocab_size = 320;
  args.out_dir = dir.file("first");
  ASSERT_EQ(run_tokenize(args), 0);
  args.tokenizer = dir.file("first/tokenizer.bpe");
  args.vocab_size = 0;  // taken from the file
  args.out_dir = dir.file("second");
  ASSERT_EQ(run_tokenize(args), 0);
  for (const char* name : {"tokenizer.bpe", "train_000.bin", "val_000.bin"}) {
    EXPECT_EQ(read_bytes(dir.file(str_cat("first/", name))),
              read_bytes(dir.file(str_cat("second/", name))))
        << name;
  }
}

TEST(Tokenize, ChunkedEncodingEqualsWholeEncoding) {
  // Over 1 MiB, so encoding runs in several chunks. Most lines are indented, so a chunk that
  // ended at any '\n' would split a whitespace pre-token ("\n   " " Verse") and differ.
  TempDir dir;
  BpeTokenizer tok = BpeTokenizer::train({prose(100, 0)}, 400);
  tok.save(dir.file("tok.bpe"));
  std::string text;
  for (int i = 0; text.size() < (size_t(3) << 19); ++i) {
    text += str_cat(i % 50 == 0 ? "" : "    ", "Verse ", i, ": and it was evening and morning.\n");
  }
  ASSERT_GT(text.size(), size_t(1) << 20);
  write_bytes(dir.file("big.txt"), text);
  TokenizeArgs args;
  args.inputs = {dir.file("big.txt")};
  args.out_dir = dir.file("out");
  args.val_fraction = 0;
  args.tokenizer = dir.file("tok.bpe");
  ASSERT_EQ(run_tokenize(args), 0);
  std::vector<int32_t> expected = tok.encode(text);
  expected.push_back(tok.eot_id());
  EXPECT_EQ(shard_tokens(dir.file("out/train_000.bin"), 400), expected);
  EXPECT_FALSE(fs::exists(dir.file("out/val_000.bin")));  // val_fraction 0: no validation
}

TEST(Tokenize, CutsAtAFileBoundary) {
  // No '\n' anywhere: the only line start is b's first byte, at exactly 70% of the bytes.
  TempDir dir;
  write_bytes(dir.file("a.txt"), std::string(70, 'x'));
  write_bytes(dir.file("b.txt"), std::string(30, 'y'));
  TokenizeArgs args;
  args.inputs = {dir.file("a.txt"), dir.file("b.txt")};
  args.vocab_size = 260;
  args.out_dir = dir.file("out");
  args.val_fraction = 0.1;  // the target (90%) moves back to the file boundary
  ASSERT_EQ(run_tokenize(args), 0);
  BpeTokenizer tok = BpeTokenizer::load(dir.file("out/tokenizer.bpe"));
  EXPECT_EQ(tok.decode(shard_tokens(dir.file("out/train_000.bin"), tok.vocab_size())),
            std::string(70, 'x') + "<|endoftext|>");
  EXPECT_EQ(tok.decode(shard_tokens(dir.file("out/val_000.bin"), tok.vocab_size())),
            std::string(30, 'y') + "<|endoftext|>");
}

TEST(Tokenize, UserErrors) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), prose(5, 0));
  write_bytes(dir.file("oneline.txt"), "no line break here");
  write_bytes(dir.file("empty.txt"), "");
  auto run = [&](std::vector<std::string> inputs, int vocab, double val) {
    TokenizeArgs args;
    args.inputs = std::move(inputs);
    args.vocab_size = vocab;
    args.out_dir = dir.file("out");
    args.val_fraction = val;
    return error_of([&] { run_tokenize(args); });
  };
  EXPECT_EQ(run({dir.file("a.txt"), dir.file("nope.txt")}, 300, 0.1),
            dir.file("nope.txt") + ": cannot open input text file");
  EXPECT_EQ(run({dir.file("a.txt")}, 300, 1.0),
            "tokenize: --val-fraction must be in [0, 1), got 1");
  EXPECT_EQ(run({dir.file("a.txt")}, 300, -0.5),
            "tokenize: --val-fraction must be in [0, 1), got -0.5");
  EXPECT_EQ(run({dir.file("a.txt")}, 100, 0.1),
            "tokenize: --vocab-size 100 is too small (at least 257: 256 bytes and <|endoftext|>)");
  EXPECT_EQ(run({}, 300, 0.1), "tokenize: no input files (--input)");
  EXPECT_EQ(run({dir.file("empty.txt")}, 300, 0.1), "tokenize: the input files are empty");
  EXPECT_EQ(run({dir.file("oneline.txt")}, 300, 0.1),
            "tokenize: cannot cut a validation split: the input has no line start to cut at (a "
            "'\\n' or a second file); use --val-fraction 0 or add line breaks");
  EXPECT_EQ(run({dir.file("oneline.txt")}, 300, 0.0), "<no error>");
}

}  // namespace
}  // namespace shardtrain::launch
