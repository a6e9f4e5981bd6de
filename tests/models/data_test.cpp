// Token shards (format, validation with file-naming messages), the data contract, and the
// safetensors reader's defences.
#include "models/data.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

#include "runtime/error.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace shardtrain::models {
namespace {

using shardtrain::testing::error_of;
using shardtrain::testing::read_bytes;
using shardtrain::testing::TempDir;
using shardtrain::testing::write_bytes;

namespace fs = std::filesystem;

std::vector<int32_t> iota_tokens(int n, int vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[size_t(i)] = i % vocab;
  return t;
}

TEST(TokenShard, RoundTripBothWidths) {
  TempDir dir;
  for (int64_t vocab : {50257, 100000}) {
    std::string p = dir.file(str_cat("s", vocab, ".bin"));
    std::vector<int32_t> tokens = {0, 1, 2, int32_t(vocab - 1), 7};
    write_token_shard(p, tokens, vocab);
    EXPECT_EQ(fs::file_size(p), 64u + tokens.size() * (vocab <= 65536 ? 2 : 4));
    auto s = TokenShard::open(p);
    EXPECT_EQ(s->vocab_size(), vocab);
    ASSERT_EQ(s->num_tokens(), 5);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(s->token(i), tokens[size_t(i)]);
  }
}

TEST(TokenShard, MalformedFilesNameTheFileAndProblem) {
  TempDir dir;
  std::string good = dir.file("good.bin");
  write_token_shard(good, iota_tokens(100, 50), 50);
  const std::string bytes = read_bytes(good);

  struct Case {
    std::string name, contents, expect;
  };
  std::string bad_magic = bytes, bad_version = bytes, bad_width = bytes, bad_vocab = bytes;
  bad_magic[0] = 'X';
  bad_version[8] = 2;
  bad_width[12] = 3;
  for (int i = 16; i < 24; ++i) bad_vocab[size_t(i)] = 0;
  const Case cases[] = {
      {"short.bin", bytes.substr(0, 10), "shorter than the 64-byte header"},
      {"magic.bin", bad_magic, "magic is not STTOKENS"},
      {"version.bin", bad_version, "format version 2 is not supported"},
      {"width.bin", bad_width, "token width 3 bytes"},
      {"vocab.bin", bad_vocab, "vocab size 0 in the header is out of range"},
      {"truncated.bin", bytes.substr(0, bytes.size() - 3), "truncated?"},
  };
  for (const Case& c : cases) {
    std::string p = dir.file(c.name);
    write_bytes(p, c.contents);
    std::string msg = error_of([&] { TokenShard::open(p); });
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << msg;
  }
  EXPECT_NE(error_of([&] { TokenShard::open(dir.file("none.bin")); }).find("cannot open"),
            std::string::npos);
  // A shard whose vocabulary is larger than the model's.
  std::string msg = error_of([&] { TokenStream({good}, 40); });
  EXPECT_NE(msg.find("vocab size 50 exceeds model.vocab_size 40"), std::string::npos) << msg;
}

TEST(TokenStream, WindowsCrossShardsAndWrap) {
  TempDir dir;
  // Stream 0..24 split over two shards; T = 4 gives (25 - 1) / 4 = 6 windows.
  std::vector<int32_t> all = iota_tokens(25, 1000);
  write_token_shard(dir.file("a.bin"), {all.begin(), all.begin() + 10}, 1000);
  write_token_shard(dir.file("b.bin"), {all.begin() + 10, all.end()}, 1000);
  TokenStream s(expand_paths({dir.file("*.bin")}, "data.train"), 1000);
  EXPECT_EQ(s.num_tokens(), 25);
  EXPECT_EQ(s.num_windows(4), 6);
  int32_t w[5];
  s.window(2, 4, w);  // tokens 8..12, crossing from a.bin into b.bin
  for (int i = 0; i < 5; ++i) EXPECT_EQ(w[i], 8 + i);
  s.window(6 + 1, 4, w);  // wraps to window 1
  for (int i = 0; i < 5; ++i) EXPECT_EQ(w[i], 4 + i);
}

TEST(TokenStream, NoMatchNamesTheField) {
  std::string msg = error_of([] { expand_paths({"/nonexistent/*.bin"}, "data.val"); });
  EXPECT_EQ(msg, "data.val: '/nonexistent/*.bin' matches no file");
}

TEST(TokenStream, TokenOutsideModelVocabIsAnError) {
  TempDir dir;
  std::string p = dir.file("x.bin");
  write_token_shard(p, {1, 2, 3, 99, 4}, 100);
  TokenStream s({p}, 100);
  int32_t w[5];
  EXPECT_NO_THROW(s.window(0, 4, w));
  // A shard that claims vocab 100 but holds 200 cannot be written by write_token_shard: patch.
  std::string bytes = read_bytes(p);
  bytes[64 + 3 * 2] = char(200);
  write_bytes(p, bytes);
  TokenStream s2({p}, 100);
  std::string msg = error_of([&] { s2.window(0, 4, w); });
  EXPECT_NE(msg.find("token 200 at position 3 is outside the model vocabulary"), std::string::npos)
      << msg;
}

// The contract: two ranks with B windows each see exactly the windows one rank with 2B sees,
// and two micro-steps of B on one rank see them too.
TEST(DataLoader, ContractIsIndependentOfTheSplit) {
  TempDir dir;
  std::string p = dir.file("t.bin");
  write_token_shard(p, iota_tokens(1000, 997), 997);
  auto stream = std::make_shared<TokenStream>(std::vector<std::string>{p}, 997);
  const int64_t T = 8, B = 3;
  for (int step = 0; step < 5; ++step) {
    std::vector<int32_t> one_in(size_t(2 * B * T)), one_tg(size_t(2 * B * T));
    DataLoader single(stream, 2 * B, T, 0, 1);
    single.set_position(step);
    single.next(one_in.data(), one_tg.data());

    std::vector<int32_t> ranks_in(size_t(2 * B * T)), ranks_tg(size_t(2 * B * T));
    for (int r = 0; r < 2; ++r) {
      DataLoader rank(stream, B, T, r, 2);
      rank.set_position(step);
      rank.next(ranks_in.data() + r * B * T, ranks_tg.data() + r * B * T);
    }
    EXPECT_EQ(one_in, ranks_in);
    EXPECT_EQ(one_tg, ranks_tg);

    std::vector<int32_t> accum_in(size_t(2 * B * T)), accum_tg(size_t(2 * B * T));
    DataLoader micro(stream, B, T, 0, 1);
    micro.set_position(2 * step);
    micro.next(accum_in.data(), accum_tg.data());
    micro.next(accum_in.data() + B * T, accum_tg.data() + B * T);
    EXPECT_EQ(one_in, accum_in);
    for (int64_t i = 0; i + 1 < T; ++i) EXPECT_EQ(one_in[size_t(i + 1)], one_tg[size_t(i)]);
  }
}

TEST(Safetensors, RoundTripAndDefences) {
  TempDir dir;
  std::string p = dir.file("w.safetensors");
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> b = {0x3f80, 0x4000};
  write_safetensors(p, {{"a", DType::kF32, {2, 3}, a.data()}, {"b", DType::kBF16, {2}, b.data()}},
                    {{"format", "pt"}});
  SafetensorsFile f = read_safetensors(p);
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors["a"].shape, (Shape{2, 3}));
  EXPECT_EQ(reinterpret_cast<const float*>(f.tensors["a"].bytes.data())[5], 6.0f);
  EXPECT_EQ(f.tensors["b"].dtype, DType::kBF16);
  EXPECT_EQ(f.metadata["format"], "pt");

  const std::string good = read_bytes(p);
  auto with_header = [](const std::string& json, size_t data_bytes) {
    std::string s(8, '\0');
    uint64_t n = json.size();
    for (int i = 0; i < 8; ++i) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
    return s + json + std::string(data_bytes, '\0');
  };
  struct Case {
    std::string contents, expect;
  };
  const Case cases[] = {
      {"abc", "shorter than its 8-byte header"},
      {std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8) + "{}", "exceeds the file"},
      {with_header("{not json", 0), "not valid JSON"},
      {with_header(R"({"x": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", 8),
       "tensor 'x': unsupported dtype \"F64\""},
      {with_header(R"({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8),
       "tensor 'x': data_offsets point outside the file"},
      {with_header(R"({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8),
       "tensor 'x': data_offsets length does not match shape and dtype"},
      {with_header(R"({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8),
       "tensor 'x': bad shape"},
      {good.substr(0, good.size() - 2), "tensor 'b': data_offsets point outside the file"},
  };
  for (const Case& c : cases) {
    std::string bad = dir.file("bad.safetensors");
    write_bytes(bad, c.contents);
    std::string msg = error_of([&] { read_safetensors(bad); });
    EXPECT_NE(msg.find(bad), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace shardtrain::models
