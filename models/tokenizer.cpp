// tokenizer.cpp — byte-level BPE: pre-tokeniser, trainer, encoder, file format.
//
// The trainer is the classic incremental one: pair counts and a pair -> words index are kept up
// to date as merges happen, so a merge costs time in proportion to the words that hold the
// pair, not to the corpus. A max-heap picks the next pair; its entries are invalidated lazily
// (an entry whose count no longer matches is re-queued with the current count). That is exact
// because a merge only lowers the counts of pairs that existed before it and creates pairs that
// contain the new id, which are queued fresh: every stale entry overstates its pair.
//
// The encoder runs the same merges per pre-token with a min-heap keyed by (rank, position),
// so long pre-tokens (a 100k-byte run of spaces) cost O(n log n), not O(n^2), and caches the
// result for short pre-tokens, which in natural text repeat heavily.
#include "models/tokenizer.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "runtime/error.h"

namespace shardtrain::models {
namespace {

// Byte classes of the pre-tokeniser (see tokenizer.h).
enum ByteClass : uint8_t { kLetter, kDigit, kSpace, kOther };

constexpr std::array<uint8_t, 256> make_byte_classes() {
  std::array<uint8_t, 256> c{};
  for (int b = 0; b < 256; ++b) {
    const bool letter = (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || b >= 0x80;
    const bool space = b == ' ' || (b >= '\t' && b <= '\r');  // \t \n \v \f \r
    c[b] = letter ? kLetter : (b >= '0' && b <= '9') ? kDigit : space ? kSpace : kOther;
  }
  return c;
}
constexpr std::array<uint8_t, 256> kByteClass = make_byte_classes();

inline uint8_t byte_class(char c) { return kByteClass[static_cast<unsigned char>(c)]; }

// Length of the contraction ('s 't 're 've 'm 'll 'd) starting at s[i], or 0.
inline size_t contraction_length(std::string_view s, size_t i) {
  if (s[i] != '\'' || i + 1 >= s.size()) return 0;
  const char a = s[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= s.size()) return 0;
  const char b = s[i + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// Calls f(piece) for every pre-token of `text`, in order; the pieces tile the text.
template <class F>
void for_each_pretoken(std::string_view text, F&& f) {
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    size_t j;
    if (size_t c = contraction_length(text, i)) {
      // Rule 1: a contraction.
      j = i + c;
    } else {
      uint8_t cls = byte_class(text[i]);
      j = i;
      if (text[i] == ' ' && i + 1 < n && byte_class(text[i + 1]) != kSpace) {
        // Rule 2 with its optional leading space.
        cls = byte_class(text[i + 1]);
        j = i + 1;
      }
      if (cls != kSpace) {
        // Rule 2: a run of one class.
        while (j < n && byte_class(text[j]) == cls) ++j;
      } else {
        // Rule 3: whitespace; a trailing ' ' before a non-space starts the next pre-token.
        while (j < n && byte_class(text[j]) == kSpace) ++j;
        if (j < n && j - i >= 2 && text[j - 1] == ' ') --j;
      }
    }
    f(text.substr(i, j - i));
    i = j;
  }
}

inline uint64_t pair_key(int32_t left, int32_t right) {
  return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
}
inline int32_t key_left(uint64_t key) { return int32_t(key >> 32); }
inline int32_t key_right(uint64_t key) { return int32_t(key & 0xffffffffu); }

// The token byte table is capped: a real vocabulary's table is small (GPT-2's 50257 tokens
// hold about 330 KB), but each merge can double a token's length, so a corrupt or crafted file
// of a few dozen lines could otherwise ask for gigabytes. 1 GiB also keeps offsets in uint32.
constexpr uint64_t kMaxTokenTableBytes = uint64_t(1) << 30;

// The encode cache holds at most this many pre-tokens; when full it is cleared and refilled.
// Natural text has a heavy head (the King James Bible's 1.02M pre-tokens are 18k distinct
// ones; 40 MB of Python source has 166k), so 64k entries (about 80 bytes each, some 5 MB)
// catch almost every repeat while bounding memory on a long-tailed corpus.
constexpr size_t kCacheMaxEntries = size_t(1) << 16;
// Pre-tokens longer than this are not cached: they are rare (long whitespace or punctuation
// runs), seldom repeat exactly, and would make the cache's memory depend on the input.
constexpr size_t kCacheMaxPieceBytes = 64;

// Checks merge k (0-based) against the merges before it; returns the problem, or "".
// `lengths` holds the byte length of every id defined so far and grows by one on success;
// `seen` maps each earlier merge to its index. A repeated merge names the earlier one as
// `unit` (index + `unit_base`): "merge 3" for a list, "line 6" for a file.
std::string check_merge(const BpeTokenizer::Merge& m, size_t k, std::vector<uint64_t>* lengths,
                        std::unordered_map<uint64_t, size_t>* seen, uint64_t* table_bytes,
                        const char* unit, size_t unit_base) {
  const int64_t defined = kBpeByteTokens + int64_t(k);  // ids below this exist
  for (int32_t id : {m.left, m.right}) {
    if (id < 0 || id >= defined) {
      return str_cat("merge ", m.left, " ", m.right, " refers to id ", id,
                     ", which is not defined yet (this merge defines id ", defined,
                     "; it may use ids 0..", defined - 1, ")");
    }
  }
  auto [it, fresh] = seen->emplace(pair_key(m.left, m.right), k);
  if (!fresh) {
    return str_cat("merge ", m.left, " ", m.right, " repeats ", unit, " ", it->second + unit_base);
  }
  const uint64_t len = (*lengths)[size_t(m.left)] + (*lengths)[size_t(m.right)];
  *table_bytes += len;
  if (*table_bytes > kMaxTokenTableBytes) {
    return str_cat("merge ", m.left, " ", m.right, " makes the token table exceed ",
                   kMaxTokenTableBytes, " bytes");
  }
  lengths->push_back(len);
  return "";
}

// A line as it may appear in a message: at most 40 bytes, non-printable bytes as '?'.
std::string quote_line(std::string_view line) {
  constexpr size_t kMaxShown = 40;  // enough to recognise a line, short enough for one line
  std::string out = "'";
  for (size_t i = 0; i < std::min(line.size(), kMaxShown); ++i) {
    const unsigned char c = static_cast<unsigned char>(line[i]);
    out += (c >= 0x20 && c < 0x7f) ? char(c) : '?';
  }
  if (line.size() > kMaxShown) out += "...";
  return out + "'";
}

// A non-negative decimal integer of at most 10 digits; false for anything else.
bool parse_decimal(std::string_view s, int64_t* value) {
  if (s.empty() || s.size() > 10) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  int64_t v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  *value = v;
  return true;
}

}  // namespace

std::vector<std::string_view> pretokenize(std::string_view text) {
  std::vector<std::string_view> out;
  for_each_pretoken(text, [&](std::string_view piece) { out.push_back(piece); });
  return out;
}

// ---- Construction -------------------------------------------------------------------------

BpeTokenizer::BpeTokenizer(std::vector<Merge> merges) : merges_(std::move(merges)) {
  // The byte table: bytes, then each merge's concatenation, then the eot text.
  token_offsets_.reserve(size_t(vocab_size()) + 1);
  token_offsets_.push_back(0);
  for (int b = 0; b < kBpeByteTokens; ++b) {
    token_bytes_.push_back(char(b));
    token_offsets_.push_back(uint32_t(token_bytes_.size()));
  }
  merge_rank_.reserve(merges_.size());
  for (size_t k = 0; k < merges_.size(); ++k) {
    const Merge& m = merges_[k];
    for (int32_t id : {m.left, m.right}) {
      const uint32_t begin = token_offsets_[size_t(id)], end = token_offsets_[size_t(id) + 1];
      token_bytes_.append(token_bytes_, begin, end - begin);
    }
    token_offsets_.push_back(uint32_t(token_bytes_.size()));
    merge_rank_.emplace(pair_key(m.left, m.right), int32_t(k));
  }
  token_bytes_.append(kEndOfText);
  token_offsets_.push_back(uint32_t(token_bytes_.size()));
}

BpeTokenizer BpeTokenizer::from_merges(const std::vector<Merge>& merges,
                                       const std::string& source) {
  std::vector<uint64_t> lengths(kBpeByteTokens, 1);
  std::unordered_map<uint64_t, size_t> seen;
  uint64_t table_bytes = kBpeByteTokens;
  for (size_t k = 0; k < merges.size(); ++k) {
    std::string problem = check_merge(merges[k], k, &lengths, &seen, &table_bytes, "merge", 0);
    if (!problem.empty()) throw UserError(str_cat(source, ": merge ", k, ": ", problem));
  }
  return BpeTokenizer(merges);
}

// ---- Training -----------------------------------------------------------------------------

BpeTokenizer BpeTokenizer::train(const std::vector<std::string>& texts, int vocab_size,
                                 const TrainProgress& progress) {
  return train_views(std::vector<std::string_view>(texts.begin(), texts.end()), vocab_size,
                     progress);
}

BpeTokenizer BpeTokenizer::train_views(const std::vector<std::string_view>& texts, int vocab_size,
                                       const TrainProgress& progress) {
  ST_USER_CHECK(vocab_size >= kBpeMinVocab, "vocab_size ", vocab_size,
                " is too small: a byte-level BPE needs at least ", kBpeMinVocab,
                " ids (256 bytes and <|endoftext|>)");
  const size_t wanted = size_t(vocab_size - kBpeMinVocab);

  // 1. Count distinct pre-tokens. Single bytes hold no pair and are left out.
  std::unordered_map<std::string, int64_t, PieceHash, std::equal_to<>> piece_counts;
  for (std::string_view text : texts) {
    for_each_pretoken(text, [&](std::string_view piece) {
      if (piece.size() < 2) return;
      auto it = piece_counts.find(piece);
      if (it != piece_counts.end()) {
        ++it->second;
      } else {
        piece_counts.emplace(std::string(piece), 1);
      }
    });
  }

  // 2. One word per distinct pre-token, in byte order, as a sequence of symbols (ids). The
  //    order makes the internal layout reproducible; the merges do not depend on it.
  struct Word {
    std::vector<int32_t> symbols;
    int64_t count;
  };
  std::vector<std::pair<std::string, int64_t>> sorted(piece_counts.begin(), piece_counts.end());
  piece_counts.clear();
  std::sort(sorted.begin(), sorted.end());
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (const auto& [piece, count] : sorted) {
    Word w{std::vector<int32_t>(piece.size()), count};
    for (size_t i = 0; i < piece.size(); ++i) w.symbols[i] = static_cast<unsigned char>(piece[i]);
    words.push_back(std::move(w));
  }
  sorted.clear();

  // 3. Pair counts (weighted by word frequency) and, per pair, the words that hold it. A word
  //    list is ascending and may name words that no longer hold the pair (checked on use).
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;
  for (size_t w = 0; w < words.size(); ++w) {
    const std::vector<int32_t>& s = words[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t key = pair_key(s[i], s[i + 1]);
      pair_count[key] += words[w].count;
      std::vector<int32_t>& list = pair_words[key];
      if (list.empty() || list.back() != int32_t(w)) list.push_back(int32_t(w));
    }
  }

  // 4. A max-heap on (count, then the smallest pair key = smallest (left, right)).
  struct Entry {
    int64_t count;
    uint64_t key;
  };
  auto heap_less = [](const Entry& a, const Entry& b) {
    return a.count != b.count ? a.count < b.count : a.key > b.key;
  };
  std::vector<Entry> heap;
  heap.reserve(pair_count.size());
  for (const auto& [key, count] : pair_count) heap.push_back({count, key});
  std::make_heap(heap.begin(), heap.end(), heap_less);

  std::vector<Merge> merges;  // not reserved: `wanted` may be far more than the corpus gives
  std::vector<uint64_t> new_pairs;
  while (merges.size() < wanted && !heap.empty()) {
    // 5. Pop the best pair; a stale entry is re-queued with its current count.
    std::pop_heap(heap.begin(), heap.end(), heap_less);
    const Entry top = heap.back();
    heap.pop_back();
    auto count_it = pair_count.find(top.key);
    const int64_t current = count_it == pair_count.end() ? 0 : count_it->second;
    if (current != top.count) {
      if (current > 0) {
        heap.push_back({current, top.key});
        std::push_heap(heap.begin(), heap.end(), heap_less);
      } else {
        // The pair is gone from every word: forget it.
        if (count_it != pair_count.end()) pair_count.erase(count_it);
        pair_words.erase(top.key);
      }
      continue;
    }
    const int32_t left = key_left(top.key), right = key_right(top.key);
    const int32_t new_id = int32_t(kBpeByteTokens + merges.size());
    merges.push_back({left, right});

    // 6. Re-count only the words that hold the pair: remove their pairs, merge every
    //    occurrence left to right, add their pairs back. Only pairs containing new_id can be
    //    new to a word, so only those lists gain entries.
    std::vector<int32_t> affected = std::move(pair_words[top.key]);
    pair_words.erase(top.key);
    new_pairs.clear();
    for (int32_t w : affected) {
      std::vector<int32_t>& s = words[size_t(w)].symbols;
      const int64_t count = words[size_t(w)].count;
      bool holds = false;
      for (size_t i = 0; i + 1 < s.size() && !holds; ++i) holds = s[i] == left && s[i + 1] == right;
      if (!holds) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) pair_count[pair_key(s[i], s[i + 1])] -= count;
      size_t out = 0;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == left && s[i + 1] == right) {
          s[out++] = new_id;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      s.resize(out);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t key = pair_key(s[i], s[i + 1]);
        pair_count[key] += count;
        if (s[i] == new_id || s[i + 1] == new_id) {
          std::vector<int32_t>& list = pair_words[key];
          if (list.empty() || list.back() != w) list.push_back(w);
          new_pairs.push_back(key);
        }
      }
    }
    auto merged_it = pair_count.find(top.key);
    ST_CHECK(merged_it != pair_count.end() && merged_it->second == 0, "merged pair ", left, " ",
             right, " still counted after the merge");
    pair_count.erase(merged_it);

    // 7. Queue the pairs the merge created, once each, with their final counts.
    std::sort(new_pairs.begin(), new_pairs.end());
    new_pairs.erase(std::unique(new_pairs.begin(), new_pairs.end()), new_pairs.end());
    for (uint64_t key : new_pairs) {
      heap.push_back({pair_count[key], key});
      std::push_heap(heap.begin(), heap.end(), heap_less);
    }
    if (progress) progress(int(merges.size()), int(wanted));
  }
  return from_merges(merges, "trained merges");
}

// ---- Encoding -----------------------------------------------------------------------------

int32_t BpeTokenizer::merge_rank(int32_t left, int32_t right) const {
  auto it = merge_rank_.find(pair_key(left, right));
  return it == merge_rank_.end() ? -1 : it->second;
}

void BpeTokenizer::encode_pretoken(std::string_view piece, std::vector<int32_t>* out) const {
  const int32_t n = int32_t(piece.size());
  if (n == 1) {
    out->push_back(static_cast<unsigned char>(piece[0]));
    return;
  }
  // 1. Bytes as a doubly linked list of symbols, so that a merge is O(1).
  const size_t len = piece.size();
  std::vector<int32_t> sym(len), prev(len), next(len);
  for (int32_t i = 0; i < n; ++i) {
    sym[size_t(i)] = static_cast<unsigned char>(piece[size_t(i)]);
    prev[size_t(i)] = i - 1;
    next[size_t(i)] = i + 1 < n ? i + 1 : -1;
  }
  // 2. A min-heap of candidate merges by (rank, left position): lowest rank first, equal ranks
  //    left to right, as training applied them. Entries remember the ids they saw and are
  //    skipped when either symbol has changed since.
  struct Candidate {
    int32_t rank, pos, left_id, right_pos, right_id;
  };
  auto heap_greater = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::vector<Candidate> heap;
  auto consider = [&](int32_t pos) {
    const int32_t r = next[size_t(pos)];
    if (r < 0) return;
    const int32_t rank = merge_rank(sym[size_t(pos)], sym[size_t(r)]);
    if (rank < 0) return;
    heap.push_back({rank, pos, sym[size_t(pos)], r, sym[size_t(r)]});
    std::push_heap(heap.begin(), heap.end(), heap_greater);
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  // 3. Merge until no adjacent pair has a merge. A merge creates pairs containing its new id,
  //    which were learned later, so they never jump ahead of the rank being applied.
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), heap_greater);
    const Candidate c = heap.back();
    heap.pop_back();
    const size_t p = size_t(c.pos), r = size_t(c.right_pos);
    if (sym[p] != c.left_id || next[p] != c.right_pos || sym[r] != c.right_id) continue;
    sym[p] = kBpeByteTokens + c.rank;
    sym[r] = -1;  // dead
    next[p] = next[r];
    if (next[r] >= 0) prev[size_t(next[r])] = c.pos;
    if (prev[p] >= 0) consider(prev[p]);
    consider(c.pos);
  }
  // Position 0 is never the right side of a merge, so the list starts there.
  for (int32_t i = 0; i >= 0; i = next[size_t(i)]) out->push_back(sym[size_t(i)]);
}

void BpeTokenizer::encode_append(std::string_view text, std::vector<int32_t>* out) {
  for_each_pretoken(text, [&](std::string_view piece) {
    if (piece.size() == 1) {
      out->push_back(static_cast<unsigned char>(piece[0]));
      return;
    }
    if (piece.size() > kCacheMaxPieceBytes) {
      encode_pretoken(piece, out);
      return;
    }
    auto it = cache_.find(piece);
    if (it != cache_.end()) {
      const int32_t* ids = cache_ids_.data() + it->second.begin;
      out->insert(out->end(), ids, ids + it->second.length);
      return;
    }
    if (cache_.size() >= kCacheMaxEntries) {
      cache_.clear();
      cache_ids_.clear();
    }
    const size_t begin = out->size();
    encode_pretoken(piece, out);
    const CacheSpan span{uint32_t(cache_ids_.size()), uint32_t(out->size() - begin)};
    cache_ids_.insert(cache_ids_.end(), out->begin() + std::ptrdiff_t(begin), out->end());
    cache_.emplace(std::string(piece), span);
  });
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) {
  std::vector<int32_t> out;
  // English averages a little over 4 bytes per token at an 8k vocabulary; a quarter of the
  // length avoids most regrowth without over-allocating much for byte-heavy input.
  out.reserve(text.size() / 4 + 1);
  encode_append(text, &out);
  return out;
}

std::string BpeTokenizer::decode(const int32_t* ids, size_t count) const {
  std::string out;
  const int32_t vocab = vocab_size();
  for (size_t i = 0; i < count; ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab) {
      throw UserError(str_cat("decode: token id ", id, " at position ", i,
                              " is outside the vocabulary (0..", vocab - 1, ")"));
    }
    const uint32_t begin = token_offsets_[size_t(id)], end = token_offsets_[size_t(id) + 1];
    out.append(token_bytes_, begin, end - begin);
  }
  return out;
}

// ---- File format --------------------------------------------------------------------------

void BpeTokenizer::save(const std::string& path) const {
  std::string text =
      str_cat(kBpeMagic, " ", kBpeFormatVersion, "\nvocab_size ", vocab_size(), "\n");
  for (const Merge& m : merges_) {
    text += std::to_string(m.left);
    text += ' ';
    text += std::to_string(m.right);
    text += '\n';
  }
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) throw UserError(str_cat(path, ": cannot write tokenizer file"));
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw UserError(str_cat(path, ": cannot write tokenizer file"));
  }
}

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(str_cat(path, ": cannot open tokenizer file"));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto fail = [&](size_t line, const std::string& problem) {
    throw UserError(str_cat(path, ":", line, ": ", problem));
  };

  // 1. Split into lines; every line, the last included, must end with '\n'.
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos < text.size();) {
    const size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {
      fail(lines.size() + 1, "last line does not end with a newline (truncated?)");
    }
    lines.push_back(std::string_view(text).substr(pos, nl - pos));
    pos = nl + 1;
  }

  // 2. Magic and version.
  const std::string header = str_cat(kBpeMagic, " ", kBpeFormatVersion);
  if (lines.empty()) fail(1, str_cat("empty file (expected '", header, "')"));
  const std::string_view first = lines[0];
  if (first.substr(0, kBpeMagic.size() + 1) != str_cat(kBpeMagic, " ")) {
    fail(1, str_cat("not a shardtrain BPE tokenizer file (expected '", header, "', got ",
                    quote_line(first), ")"));
  }
  int64_t version = 0;
  if (!parse_decimal(first.substr(kBpeMagic.size() + 1), &version)) {
    fail(1, str_cat("bad format version ", quote_line(first.substr(kBpeMagic.size() + 1))));
  }
  if (version != kBpeFormatVersion) {
    fail(1, str_cat("tokenizer format version ", version,
                    " is not supported (this build reads version ", kBpeFormatVersion, ")"));
  }

  // 3. Vocabulary size.
  if (lines.size() < 2) fail(2, "missing 'vocab_size N' line (truncated?)");
  constexpr std::string_view kVocabKey = "vocab_size ";
  int64_t vocab = 0;
  if (lines[1].substr(0, kVocabKey.size()) != kVocabKey ||
      !parse_decimal(lines[1].substr(kVocabKey.size()), &vocab)) {
    fail(2, str_cat("expected 'vocab_size N', got ", quote_line(lines[1])));
  }
  if (vocab < kBpeMinVocab || vocab > INT32_MAX) {
    fail(2,
         str_cat("vocab_size ", vocab, " is out of range (", kBpeMinVocab, "..", INT32_MAX, ")"));
  }
  const size_t num_merges = size_t(vocab - kBpeMinVocab);

  // 4. Merges, checked one by one as they define ids.
  constexpr size_t kFirstMergeLine = 3;  // 1-based line of merge 0
  std::vector<Merge> merges;
  std::vector<uint64_t> lengths(kBpeByteTokens, 1);
  std::unordered_map<uint64_t, size_t> seen;
  uint64_t table_bytes = kBpeByteTokens;
  for (size_t k = 0; k + kFirstMergeLine - 1 < lines.size(); ++k) {
    const size_t line_no = k + kFirstMergeLine;
    const std::string_view line = lines[line_no - 1];
    if (k >= num_merges) {
      fail(line_no, str_cat("more merges than vocab_size ", vocab, " allows (", num_merges, ")"));
    }
    const size_t space = line.find(' ');
    int64_t left = 0, right = 0;
    if (space == std::string_view::npos || !parse_decimal(line.substr(0, space), &left) ||
        !parse_decimal(line.substr(space + 1), &right) || left > INT32_MAX || right > INT32_MAX) {
      fail(line_no,
           str_cat("expected a merge 'LEFT RIGHT' (two decimal ids), got ", quote_line(line)));
    }
    const Merge m{int32_t(left), int32_t(right)};
    const std::string problem =
        check_merge(m, k, &lengths, &seen, &table_bytes, "line", kFirstMergeLine);
    if (!problem.empty()) fail(line_no, problem);
    merges.push_back(m);
  }
  if (merges.size() != num_merges) {
    fail(lines.size() + 1, str_cat("file ends after ", merges.size(), " merges but vocab_size ",
                                   vocab, " needs ", num_merges, " (truncated?)"));
  }
  return BpeTokenizer(std::move(merges));
}

}  // namespace shardtrain::models
