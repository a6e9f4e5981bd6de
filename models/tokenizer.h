// tokenizer.h — byte-level BPE (as GPT-2): training, encoding, decoding, and its file format.
//
// Ids. 0..255 are the 256 byte values, so every byte string encodes and there is no unknown
// token. Id 256 + k is the k-th learned merge (LEFT RIGHT -> 256 + k). The last id,
// vocab_size - 1, is the reserved special token <|endoftext|> (eot_id()): encode() never
// produces it from text (the text "<|endoftext|>" encodes as ordinary bytes); decode() turns it
// into the text "<|endoftext|>". So vocab_size = 256 + num_merges + 1.
//
// Pre-tokenisation. Text is first split into pre-tokens and merges never cross their
// boundaries (as GPT-2, so " the" is one unit and "the." never becomes one token). The rules
// are a byte-level simplification of GPT-2's regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with four byte classes instead of Unicode categories:
//   letter: ASCII A-Z a-z and every byte >= 0x80 (so UTF-8 multi-byte characters, including
//           non-ASCII punctuation, group with letters; invalid UTF-8 is just more letters);
//   digit:  ASCII 0-9;
//   space:  ASCII ' ' \t \n \v \f \r;
//   other:  every other byte (ASCII punctuation and control characters).
// At each position, the first rule that applies takes a pre-token:
//   1. a contraction 's 't 're 've 'm 'll 'd (lowercase, as GPT-2: "don't" -> "don" "'t");
//   2. an optional single ' ' then a maximal run of one class among letter/digit/other;
//   3. a run of space-class bytes; when the run is followed by a non-space byte and ends in
//      ' ', that last ' ' is left to start the next pre-token ("a   b" -> "a" "  " " b").
// Differences from GPT-2: Unicode letters/digits/punctuation outside ASCII are not told apart
// (all are letters), and a whitespace run ending in another whitespace byte stays whole
// ("\n\nfoo" -> "\n\n" "foo", where GPT-2 gives "\n" "\n" "foo").
//
// Training (train()): counts distinct pre-tokens, then repeatedly merges the most frequent
// adjacent pair, ties broken by the smallest (left id, right id), so the result depends only
// on the corpus and vocab_size. Pair counts are updated incrementally (only the pre-tokens that
// hold the merged pair are recounted). Training stops early, with a smaller vocabulary, when
// no adjacent pair remains (every distinct pre-token is a single symbol); pairs that occur
// once are still merged, as GPT-2 does.
//
// Encoding applies the merges by rank within each pre-token: the lowest-rank adjacent pair
// first, occurrences of the same pair left to right — the same segmentation training produced.
// Encoded pre-tokens are cached, so encode() is not const and not thread-safe: use one
// tokenizer object per thread (copies are cheap next to the text they encode).
//
// File format (text, versioned; `save` writes it, `load` checks every line):
//   shardtrain-bpe 1          magic and format version
//   vocab_size N              N = 256 + number of merges + 1 (eot)
//   LEFT RIGHT                one line per merge, in merge order, decimal ids; merge k
//   ...                       (0-based, line k + 3) defines id 256 + k and may refer only to
//                             ids below 256 + k. Each line ends with '\n'.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace shardtrain::models {

constexpr int kBpeByteTokens = 256;               // ids 0..255: the bytes
constexpr int kBpeMinVocab = kBpeByteTokens + 1;  // the bytes and <|endoftext|>
constexpr int kBpeFormatVersion = 1;
constexpr std::string_view kBpeMagic = "shardtrain-bpe";
constexpr std::string_view kEndOfText = "<|endoftext|>";

// Splits `text` into pre-tokens by the rules above; the views point into `text`.
std::vector<std::string_view> pretokenize(std::string_view text);

class BpeTokenizer {
 public:
  // One learned merge: ids `left` and `right`, adjacent, become one new id.
  struct Merge {
    int32_t left;
    int32_t right;
    bool operator==(const Merge&) const = default;
  };
  // Called during training after each merge: merges learned so far, merges wanted.
  using TrainProgress = std::function<void(int merges_done, int merges_wanted)>;

  // Learns up to vocab_size - 257 merges from `texts` (each text is a document: pre-tokens
  // never span two). vocab_size < 257 is a UserError. The result's vocab_size() is smaller than
  // asked when the corpus runs out of pairs.
  static BpeTokenizer train(const std::vector<std::string>& texts, int vocab_size,
                            const TrainProgress& progress = {});
  // The same over views, for callers that train on parts of larger buffers without copying.
  static BpeTokenizer train_views(const std::vector<std::string_view>& texts, int vocab_size,
                                  const TrainProgress& progress = {});
  // Reads a file written by save(); every malformed line is a UserError naming file and line.
  static BpeTokenizer load(const std::string& path);
  // Builds a tokenizer from merges (checked as load() checks them; `source` names them in
  // messages).
  static BpeTokenizer from_merges(const std::vector<Merge>& merges, const std::string& source);

  // Writes the file format above atomically (a temporary file, then rename).
  void save(const std::string& path) const;

  std::vector<int32_t> encode(std::string_view text);
  // Appends the encoding of `text` to `out` (no eot is added).
  void encode_append(std::string_view text, std::vector<int32_t>* out);
  // Ids outside [0, vocab_size) are a UserError.
  std::string decode(const int32_t* ids, size_t count) const;
  std::string decode(const std::vector<int32_t>& ids) const {
    return decode(ids.data(), ids.size());
  }

  int vocab_size() const { return kBpeByteTokens + int(merges_.size()) + 1; }
  int32_t eot_id() const { return int32_t(vocab_size() - 1); }
  const std::vector<Merge>& merges() const { return merges_; }

 private:
  explicit BpeTokenizer(std::vector<Merge> merges);
  // Encodes one pre-token (no cache) onto `out`.
  void encode_pretoken(std::string_view piece, std::vector<int32_t>* out) const;
  int32_t merge_rank(int32_t left, int32_t right) const;

  // Hash for the cache: looks up std::string keys by std::string_view without copying.
  struct PieceHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  // Where a cached pre-token's ids lie in cache_ids_.
  struct CacheSpan {
    uint32_t begin;
    uint32_t length;
  };

  std::vector<Merge> merges_;
  std::unordered_map<uint64_t, int32_t> merge_rank_;  // (left << 32 | right) -> merge index
  std::vector<uint32_t> token_offsets_;  // token id t is token_bytes_[offsets[t], offsets[t+1])
  std::string token_bytes_;
  std::unordered_map<std::string, CacheSpan, PieceHash, std::equal_to<>> cache_;
  std::vector<int32_t> cache_ids_;
};

}  // namespace shardtrain::models
