// tokenizer_hf.cpp — tokenizer.json, tokenizer_config.json and special_tokens_map.json for a
// BpeTokenizer (the translation is in tokenizer_hf.h).
//
// Why the trainer never gives two ids the same bytes. Suppose merge j = (C, D) and an earlier
// merge k = (A, B) both spell the bytes s. Merge j was counted in some word where C and D were
// adjacent, spanning [p, p + |s|). Symbol boundaries only ever disappear, so p and p + |s|
// have been boundaries since the start: no merge before j crossed them. Merges are applied
// left to right in every word, and a pair at either edge of the span was either not a merge
// or was skipped because its outer symbol had just been consumed, so the span went through
// exactly the steps of the word s on its own: s alone, after merges 0..j-1, is C D. The same
// argument at step k, for the span that merge k turned into the symbol s, says s alone after
// merges 0..k-1 is A B, so after merge k it is one symbol, and a single symbol stays single:
// after merges 0..j-1 it is not C D. Contradiction. (BpeTokenizer::load reads any merges, so
// a file written elsewhere can still hold such a pair; it is refused here.)
#include "models/tokenizer_hf.h"

#include <array>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "runtime/error.h"

namespace shardtrain::models {
namespace {

using Json = nlohmann::ordered_json;  // keeps the files in id order, readable by a person

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68
// (controls, space, DEL, 0x80-0xA0, 0xAD) become U+0100.. in byte order.
constexpr std::array<char32_t, 256> make_byte_level_table() {
  std::array<char32_t, 256> t{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    t[size_t(b)] = printable ? char32_t(b) : next++;
  }
  return t;
}
constexpr std::array<char32_t, 256> kByteLevel = make_byte_level_table();

void append_utf8(char32_t cp, std::string* out) {
  // Every stand-in is below U+0800: one or two bytes.
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else {
    out->push_back(char(0xC0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  }
}

// Bytes as they may appear in a message: printable ASCII as is, others as \xHH.
std::string show_bytes(std::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(char(c));
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

}  // namespace

// Classes (tokenizer.h): letter [A-Za-z\x{80}-\x{10FFFF}], digit [0-9], space [\t-\r ],
// other = the rest of ASCII. The alternatives in order are rule 1 (contractions), rule 2 (an
// optional ' ' and a run of one class), rule 3 (whitespace: a run that ends in ' ' before a
// non-space leaves that ' ' to the next pre-token; any other run is taken whole). Every code
// point is in one class, so the matches tile the text and Split never leaves a gap.
const std::string_view kHfPretokenizerRegex =
    "'(?:[stmd]|re|ve|ll)"
    "| ?[A-Za-z\\x{80}-\\x{10FFFF}]+"
    "| ?[0-9]+"
    "| ?[\\x{0}-\\x{8}\\x{E}-\\x{1F}!-/:-@\\[-`{-\\x{7F}]+"
    "|[\\t-\\r ]+(?= [^\\t-\\r ])"
    "|[\\t-\\r ]+";

std::string hf_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) append_utf8(kByteLevel[c], &out);
  return out;
}

HfTokenizerFiles hf_tokenizer_files(const BpeTokenizer& tokenizer, int64_t model_max_length,
                                    const std::string& source) {
  const int32_t eot = tokenizer.eot_id();
  const std::string eot_text(kEndOfText);

  // 1. The vocabulary: every id's bytes as stand-ins, refusing two ids with one string.
  std::vector<std::string> strings(size_t(tokenizer.vocab_size()));
  std::unordered_map<std::string, int32_t> seen;
  Json vocab = Json::object();
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
    const std::string bytes = tokenizer.decode(&id, 1);
    strings[size_t(id)] = id == eot ? eot_text : hf_byte_level(bytes);
    auto [it, fresh] = seen.emplace(strings[size_t(id)], id);
    if (!fresh) {
      throw UserError(str_cat(source, ": ids ", it->second, " and ", id, " are both the bytes '",
                              show_bytes(bytes),
                              "'; a Hugging Face vocabulary maps each string to one id, so this "
                              "tokenizer cannot be exported (shardtrain's trainer never makes "
                              "such a pair)"));
    }
    vocab[strings[size_t(id)]] = id;
  }
  // 2. Merges by rank, as the two strings they join.
  Json merges = Json::array();
  for (const BpeTokenizer::Merge& m : tokenizer.merges()) {
    merges.push_back(strings[size_t(m.left)] + " " + strings[size_t(m.right)]);
  }

  Json added = {{"id", eot},       {"content", eot_text}, {"single_word", false}, {"lstrip", false},
                {"rstrip", false}, {"normalized", false}, {"special", true}};
  Json eot_token = added;  // tokenizer_config.json's form: the same without the id
  eot_token.erase("id");
  const Json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", false},
                           {"use_regex", false}};
  Json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", Json::array({added})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers", Json::array({{{"type", "Split"},
                                        {"pattern", {{"Regex", std::string(kHfPretokenizerRegex)}}},
                                        {"behavior", "Isolated"},
                                        {"invert", false}},
                                       byte_level})}}},
      {"post_processor", nullptr},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"vocab", std::move(vocab)},
        {"merges", std::move(merges)}}}};

  // 3. transformers' side: the generic fast tokenizer over tokenizer.json, no added prefix
  //    space, no clean-up of spaces in decode (it would change the decoded bytes).
  const Json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                       {"model_max_length", model_max_length},
                       {"bos_token", eot_text},
                       {"eos_token", eot_text},
                       {"add_prefix_space", false},
                       {"clean_up_tokenization_spaces", false},
                       {"added_tokens_decoder", {{std::to_string(eot), eot_token}}}};
  const Json special = {{"bos_token", eot_text}, {"eos_token", eot_text}};
  return {tok.dump(2) + "\n", config.dump(2) + "\n", special.dump(2) + "\n"};
}

}  // namespace shardtrain::models
