// tokenizer_hf.h — a BpeTokenizer in the Hugging Face `tokenizers` form (tokenizer.json), so
// that `AutoTokenizer.from_pretrained(dir)` encodes text to the same ids as encode().
//
// The translation, piece by piece:
//   pre-tokeniser  Sequence[Split(kHfPretokenizerRegex, Isolated), ByteLevel(add_prefix_space
//                  false, use_regex false)]: the regex is tokenizer.h's three rules over its
//                  four byte classes, written over code points (every non-ASCII code point is
//                  UTF-8 bytes >= 0x80, all letters, so "letter" = A-Za-z plus any code point
//                  from U+0080); ByteLevel then maps each byte to GPT-2's printable stand-in.
//   model          BPE with vocab (the stand-in string of every id's bytes -> id) and merges
//                  (by rank, "LEFT RIGHT" as stand-in strings). Hugging Face's BPE applies the
//                  lowest-rank adjacent pair first, equal ranks leftmost first, as encode().
//   <|endoftext|>  the last id, in the vocabulary and as a special added token.
//   decoder        ByteLevel (stand-ins back to bytes).
// What cannot match:
//   - Text that is not valid UTF-8: Hugging Face tokenises a str (code points); such bytes
//     cannot reach it at all. encode() takes any bytes.
//   - The literal text "<|endoftext|>": Hugging Face matches added tokens before the
//     pre-tokeniser and gives the special id; encode() gives its bytes' tokens (tokenizer.h).
// Vocabulary strings must be distinct, since the vocab maps string -> id. The trainer never
// gives two ids the same bytes (proof in tokenizer_hf.cpp, tested on random corpora); a file
// written elsewhere might, and hf_tokenizer_files() refuses it, naming both ids.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "models/tokenizer.h"

namespace shardtrain::models {

// tokenizer.h's pre-tokeniser as an Oniguruma regex (the one Hugging Face's Split runs).
extern const std::string_view kHfPretokenizerRegex;

// `bytes` with each byte replaced by GPT-2's byte-level stand-in code point, as UTF-8.
std::string hf_byte_level(std::string_view bytes);

// The files of a Hugging Face tokenizer directory.
struct HfTokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  std::string special_tokens_map_json;
};

// `model_max_length` is the context length; `source` names the tokenizer in messages. Two ids
// with the same bytes are a UserError.
HfTokenizerFiles hf_tokenizer_files(const BpeTokenizer& tokenizer, int64_t model_max_length,
                                    const std::string& source);

}  // namespace shardtrain::models
