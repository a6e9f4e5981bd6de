// The Hugging Face form of a BpeTokenizer (models/tokenizer_hf.h): GPT-2's byte stand-ins,
// the JSON files' contents, the refusal of two ids with the same bytes, and the trainer's
// promise that it never makes such a pair (on random corpora over tiny alphabets, where
// overlapping merges like (a, bc) and (ab, c) are most likely). Whether Hugging Face encodes
// to the same ids is tests/parity/hf_transformers.py.
#include "models/tokenizer_hf.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "runtime/error.h"
#include "tests/test_util.h"

namespace shardtrain::models {
namespace {

using shardtrain::testing::error_of;
using Merge = BpeTokenizer::Merge;

TEST(HfByteLevel, GptTwoStandIns) {
  // bytes_to_unicode(): printable Latin-1 stays, the rest counts up from U+0100.
  EXPECT_EQ(hf_byte_level("a!~"), "a!~");
  EXPECT_EQ(hf_byte_level(" "), "\xC4\xA0");   // U+0120 'Ġ': the 33rd non-printable byte
  EXPECT_EQ(hf_byte_level("\n"), "\xC4\x8A");  // U+010A 'Ċ'
  EXPECT_EQ(hf_byte_level(std::string(1, '\0')), "\xC4\x80");  // U+0100
  EXPECT_EQ(hf_byte_level("\xFF"), "\xC3\xBF");                // U+00FF 'ÿ' is printable
  EXPECT_EQ(hf_byte_level("\xAD"), "\xC5\x83");  // U+0143: soft hyphen is the last stand-in
  std::set<std::string> all;
  for (int b = 0; b < 256; ++b) all.insert(hf_byte_level(std::string(1, char(b))));
  EXPECT_EQ(all.size(), 256u) << "the stand-ins must be a bijection";
}

TEST(HfTokenizerFiles, VocabMergesAndEndOfText) {
  const BpeTokenizer tok =
      BpeTokenizer::train({"the cat sat on the mat, the end.\n  then\tthat"}, 280);
  const HfTokenizerFiles files = hf_tokenizer_files(tok, 64, "test");
  const auto j = nlohmann::json::parse(files.tokenizer_json);
  const auto& vocab = j["model"]["vocab"];
  ASSERT_EQ(int(vocab.size()), tok.vocab_size());
  ASSERT_EQ(j["model"]["merges"].size(), tok.merges().size());
  for (int32_t id = 0; id < tok.eot_id(); ++id) {
    EXPECT_EQ(vocab[hf_byte_level(tok.decode(&id, 1))], id);
  }
  EXPECT_EQ(vocab["<|endoftext|>"], tok.eot_id());
  // Merge k, as strings, is the pair that defines id 256 + k.
  for (size_t k = 0; k < tok.merges().size(); ++k) {
    const Merge& m = tok.merges()[k];
    EXPECT_EQ(j["model"]["merges"][k],
              hf_byte_level(tok.decode(&m.left, 1)) + " " + hf_byte_level(tok.decode(&m.right, 1)));
  }
  ASSERT_EQ(j["added_tokens"].size(), 1u);
  EXPECT_EQ(j["added_tokens"][0]["id"], tok.eot_id());
  EXPECT_EQ(j["added_tokens"][0]["special"], true);
  EXPECT_EQ(j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"],
            std::string(kHfPretokenizerRegex));
  EXPECT_EQ(j["pre_tokenizer"]["pretokenizers"][1]["use_regex"], false);
  EXPECT_EQ(j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"], false);
  const auto config = nlohmann::json::parse(files.tokenizer_config_json);
  EXPECT_EQ(config["model_max_length"], 64);
  EXPECT_EQ(config["eos_token"], "<|endoftext|>");
  EXPECT_EQ(config["added_tokens_decoder"][std::to_string(tok.eot_id())]["content"],
            "<|endoftext|>");
  EXPECT_EQ(nlohmann::json::parse(files.special_tokens_map_json)["bos_token"], "<|endoftext|>");
}

TEST(HfTokenizerFiles, RefusesTwoIdsWithTheSameBytes) {
  // (a, b) -> 256 "ab", (256, c) -> 257 "abc", (b, c) -> 258 "bc", (a, 258) -> 259 "abc":
  // a valid merges file, but "abc" would need two vocabulary entries.
  const BpeTokenizer tok =
      BpeTokenizer::from_merges({{'a', 'b'}, {256, 'c'}, {'b', 'c'}, {'a', 258}}, "hand-made");
  EXPECT_EQ(error_of([&] { hf_tokenizer_files(tok, 8, "x.bpe"); }),
            "x.bpe: ids 257 and 259 are both the bytes 'abc'; a Hugging Face vocabulary maps "
            "each string to one id, so this tokenizer cannot be exported (shardtrain's trainer "
            "never makes such a pair)");
}

TEST(HfTokenizerFiles, TrainerNeverRepeatsTokenBytes) {
  // Tiny alphabets and many merges: words like "abab a ba" make every overlap possible.
  std::mt19937 rng(7);
  for (const std::string alphabet : {"ab", "abc", "ab ", "a b\n", "aab'"}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::string text;
      std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
      const int n = 200 + 100 * trial;
      for (int i = 0; i < n; ++i) text += alphabet[pick(rng)];
      const BpeTokenizer tok = BpeTokenizer::train({text}, 257 + 300);
      std::set<std::string> seen;
      for (int32_t id = 0; id < tok.vocab_size(); ++id) {
        ASSERT_TRUE(seen.insert(tok.decode(&id, 1)).second)
            << "id " << id << " repeats bytes (alphabet '" << alphabet << "', trial " << trial
            << ")";
      }
      EXPECT_NO_THROW(hf_tokenizer_files(tok, 8, "trained"));
    }
  }
}

}  // namespace
}  // namespace shardtrain::models
