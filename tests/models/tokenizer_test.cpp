// Byte-level BPE: pre-tokenisation rules, a training run worked out by hand, round trips on
// awkward byte strings (checked against a plain GPT-2-style reference encoder), determinism,
// and the file format with one expected message per malformed case.
#include "models/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <unordered_map>

#include "runtime/error.h"
#include "tests/test_util.h"

namespace shardtrain::models {
namespace {

using shardtrain::testing::error_of;
using shardtrain::testing::read_bytes;
using shardtrain::testing::TempDir;
using shardtrain::testing::write_bytes;

namespace fs = std::filesystem;
using Merge = BpeTokenizer::Merge;

// The reference encoder, written as GPT-2's bpe(): per pre-token, find the lowest-rank
// adjacent pair, merge all its occurrences left to right, repeat. O(n^2), obviously right.
std::vector<int32_t> reference_encode(const BpeTokenizer& tok, std::string_view text) {
  std::unordered_map<uint64_t, int32_t> rank;
  for (size_t k = 0; k < tok.merges().size(); ++k) {
    const Merge& m = tok.merges()[k];
    rank[(uint64_t(m.left) << 32) | uint32_t(m.right)] = int32_t(k);
  }
  std::vector<int32_t> out;
  for (std::string_view piece : pretokenize(text)) {
    std::vector<int32_t> s;
    for (char c : piece) s.push_back(static_cast<unsigned char>(c));
    for (;;) {
      int32_t best = -1;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        auto it = rank.find((uint64_t(s[i]) << 32) | uint32_t(s[i + 1]));
        if (it != rank.end() && (best < 0 || it->second < best)) best = it->second;
      }
      if (best < 0) break;
      const Merge& m = tok.merges()[size_t(best)];
      std::vector<int32_t> merged;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == m.left && s[i + 1] == m.right) {
          merged.push_back(kBpeByteTokens + best);
          i += 2;
        } else {
          merged.push_back(s[i++]);
        }
      }
      s = std::move(merged);
    }
    out.insert(out.end(), s.begin(), s.end());
  }
  return out;
}

// The reference trainer: recount every pair of every distinct pre-token before each merge and
// take the highest count, smallest (left, right) on ties. Slow, obviously right.
std::vector<Merge> reference_train(const std::vector<std::string>& texts, int vocab_size) {
  std::map<std::string, int64_t> counts;
  for (const std::string& text : texts) {
    for (std::string_view piece : pretokenize(text)) ++counts[std::string(piece)];
  }
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [piece, count] : counts) {
    std::vector<int32_t> s;
    for (char c : piece) s.push_back(static_cast<unsigned char>(c));
    words.emplace_back(std::move(s), count);
  }
  std::vector<Merge> merges;
  while (int(merges.size()) < vocab_size - kBpeMinVocab) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pairs;  // ascending (left, right)
    for (const auto& [s, count] : words) {
      for (size_t i = 0; i + 1 < s.size(); ++i) pairs[{s[i], s[i + 1]}] += count;
    }
    if (pairs.empty()) break;
    auto best = pairs.begin();
    for (auto it = pairs.begin(); it != pairs.end(); ++it) {
      if (it->second > best->second) best = it;
    }
    const Merge m{best->first.first, best->first.second};
    const int32_t id = kBpeByteTokens + int32_t(merges.size());
    merges.push_back(m);
    for (auto& [s, count] : words) {
      std::vector<int32_t> merged;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == m.left && s[i + 1] == m.right) {
          merged.push_back(id);
          i += 2;
        } else {
          merged.push_back(s[i++]);
        }
      }
      s = std::move(merged);
    }
  }
  return merges;
}

// A small mixed corpus: English prose with contractions, numbers, punctuation, indentation,
// and multi-byte UTF-8.
std::string mixed_corpus() {
  std::string text;
  const char* lines[] = {
      "In the beginning God created the heaven and the earth.\n",
      "  And the earth was without form, and void; and darkness was upon the deep.\n",
      "It's 12:30 -- we're late, aren't we? They'll say we'd've known.\n",
      "Caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9"
      "e \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e "
      "text, 3.14159 and 2718281828.\n",
      "\tif (x != y) { return a[i] + b[i]; }\n\n",
      "The quick brown fox jumps over the lazy dog!!! The end...\n",
  };
  for (int rep = 0; rep < 20; ++rep) {
    for (const char* line : lines) text += line;
  }
  return text;
}

// Trained once for all round-trip tests (training is deterministic, so sharing is safe).
BpeTokenizer& mixed_tokenizer() {
  static BpeTokenizer tok = BpeTokenizer::train({mixed_corpus()}, 512);
  return tok;
}

// Trained on long runs, so that 100k-byte pre-tokens go through many merges.
BpeTokenizer& run_tokenizer() {
  static BpeTokenizer tok =
      BpeTokenizer::train({std::string(5000, 'a'), "x" + std::string(5000, ' ') + "y"}, 300);
  return tok;
}

void expect_round_trip(BpeTokenizer& tok, const std::string& text) {
  const std::vector<int32_t> ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(ids, reference_encode(tok, text));
  for (int32_t id : ids) {
    ASSERT_GE(id, 0);
    ASSERT_LT(id, tok.eot_id());
  }
}

// ---- Pre-tokenisation -----------------------------------------------------------------------

TEST(Pretokenize, Rules) {
  struct Case {
    std::string text;
    std::vector<std::string> pieces;
  };
  const Case cases[] = {
      {"", {}},
      {"Hello, world!", {"Hello", ",", " world", "!"}},
      {"don't we're I'll you've I'm he'd it's",
       {"don", "'t", " we", "'re", " I", "'ll", " you", "'ve", " I", "'m", " he", "'d", " it",
        "'s"}},
      {"'sam", {"'s", "am"}},        // as GPT-2: the contraction wins
      {"DON'T", {"DON", "'", "T"}},  // contractions are lowercase only
      {" 's", {" '", "s"}},          // the space joins the punctuation
      {"!!'s", {"!!'", "s"}},        // a contraction only starts a pre-token
      {"abc 123 4.5", {"abc", " 123", " 4", ".", "5"}},
      {"a   b", {"a", "  ", " b"}},  // the run's last space starts " b"
      {"a \t b", {"a", " \t", " b"}},
      {"a \tb", {"a", " \t", "b"}},  // the run ends in \t: it stays whole
      {"x\n\nfoo", {"x", "\n\n", "foo"}},
      {"end.  \n", {"end", ".", "  \n"}},
      {"trailing   ", {"trailing", "   "}},
      {"caf\xc3\xa9 au", {"caf\xc3\xa9", " au"}},  // UTF-8 bytes group with letters
      {"\xe2\x80\x94x1", {"\xe2\x80\x94x", "1"}},
      {"a\x01\x7f b", {"a", "\x01\x7f", " b"}},  // control bytes are "other"
  };
  for (const Case& c : cases) {
    std::vector<std::string> got;
    for (std::string_view p : pretokenize(c.text)) got.emplace_back(p);
    EXPECT_EQ(got, c.pieces) << "text: '" << c.text << "'";
  }
}

TEST(Pretokenize, PiecesTileRandomText) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    std::string text(size_t(rng() % 300), '\0');
    // Draw from a small alphabet of every class so that every rule fires often.
    const std::string alphabet = "ab Z09 \n\t'srevlmd.,!\xc3\xa9\x80";
    for (char& c : text) c = alphabet[rng() % alphabet.size()];
    std::string joined;
    for (std::string_view p : pretokenize(text)) {
      ASSERT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, text);
  }
}

// ---- Training -------------------------------------------------------------------------------

// The corpus "hug"x10 "pug"x5 "pun"x12 "bun"x4 "hugs"x5, one word per line ("\n" pre-tokens
// are single bytes and hold no pair). Ids: b=98 g=103 h=104 n=110 p=112 s=115 u=117.
// Pair counts, merge by merge (ties: smallest left id, then right id):
//   start:  (h,u)=15 (u,g)=20 (p,u)=17 (u,n)=16 (b,u)=4 (g,s)=5
//   0: (u,g)=20 -> 256 "ug".   Now (h,ug)=15 (p,ug)=5 (p,u)=12 (u,n)=16 (b,u)=4 (ug,s)=5
//   1: (u,n)=16 -> 257 "un".   Now (h,ug)=15 (p,ug)=5 (p,un)=12 (b,un)=4 (ug,s)=5
//   2: (h,ug)=15 -> 258 "hug". Now (p,ug)=5 (p,un)=12 (b,un)=4 (hug,s)=5
//   3: (p,un)=12 -> 259 "pun". Now (p,ug)=5 (b,un)=4 (hug,s)=5
//   4: tie at 5: (p,ug)=(112,256) beats (hug,s)=(258,115) -> 260 "pug"
//   5: (hug,s)=5 -> 261 "hugs"
//   6: (b,un)=4 -> 262 "bun"; no pair remains, so training stops: vocab 256 + 7 + 1 = 264.
std::string hug_corpus() {
  std::string text;
  const std::pair<const char*, int> words[] = {
      {"hug", 10}, {"pug", 5}, {"pun", 12}, {"bun", 4}, {"hugs", 5}};
  for (const auto& [word, count] : words) {
    for (int i = 0; i < count; ++i) text += std::string(word) + "\n";
  }
  return text;
}

TEST(BpeTrain, HandComputedMerges) {
  BpeTokenizer tok = BpeTokenizer::train({hug_corpus()}, 300);
  const std::vector<Merge> expected = {{117, 103}, {117, 110}, {104, 256}, {112, 257},
                                       {112, 256}, {258, 115}, {98, 257}};
  EXPECT_EQ(tok.merges(), expected);
  EXPECT_EQ(tok.vocab_size(), 264);  // stopped early: no pair remains
  EXPECT_EQ(tok.eot_id(), 263);
  EXPECT_EQ(tok.encode("hugs pun\n"), (std::vector<int32_t>{261, 32, 259, 10}));
  EXPECT_EQ(tok.encode("bug"), (std::vector<int32_t>{98, 256}));
  // Asking for fewer merges stops after the tie-break.
  BpeTokenizer five = BpeTokenizer::train({hug_corpus()}, 262);
  EXPECT_EQ(five.merges(), std::vector<Merge>(expected.begin(), expected.begin() + 5));
  EXPECT_EQ(five.vocab_size(), 262);
}

TEST(BpeTrain, MatchesFullRecountReference) {
  // Random "words" over a tiny alphabet give many ties, overlapping pairs ("aaa") and pairs
  // whose counts rise and fall as merges go; the corpus runs out of pairs before the vocab.
  std::vector<std::vector<std::string>> corpora = {{hug_corpus()}, {mixed_corpus()}};
  for (uint32_t seed : {5u, 6u, 7u}) {
    std::mt19937 rng(seed);
    std::string text;
    for (int i = 0; i < 3000; ++i) text += "aab .\n"[rng() % 6];
    corpora.push_back({text, text.substr(0, 500)});
  }
  for (const std::vector<std::string>& texts : corpora) {
    // 7 merges for the hug corpus, 106 to 179 for the others, all short of 800 - 257.
    const std::vector<Merge> expected = reference_train(texts, 800);
    EXPECT_EQ(BpeTokenizer::train(texts, 800).merges(), expected);
    EXPECT_EQ(BpeTokenizer::train(texts, 300).merges(),
              std::vector<Merge>(expected.begin(),
                                 expected.begin() + std::min<size_t>(43, expected.size())));
  }
}

TEST(BpeTrain, TiesBreakBySmallestLeftThenRight) {
  // "ca" "cb" "ab" once each: all pairs tie at 1; order (97,98) < (99,97) < (99,98).
  BpeTokenizer tok = BpeTokenizer::train({"cb\nca\nab\n"}, 260);
  EXPECT_EQ(tok.merges(), (std::vector<Merge>{{97, 98}, {99, 97}, {99, 98}}));
  // Counts weigh by frequency before ids: "cb" twice wins over the smaller (97,98).
  BpeTokenizer freq = BpeTokenizer::train({"cb\ncb\nab\n"}, 258);
  EXPECT_EQ(freq.merges(), (std::vector<Merge>{{99, 98}}));
}

TEST(BpeTrain, MergesNeverCrossPreTokens) {
  // "a b" has the byte pair (a, ' ') but " b" starts a new pre-token.
  BpeTokenizer tok = BpeTokenizer::train({"a b a b a b"}, 400);
  EXPECT_EQ(tok.merges(), (std::vector<Merge>{{32, 98}, {32, 97}}));
}

TEST(BpeTrain, RejectsVocabBelow257) {
  EXPECT_EQ(error_of([] { BpeTokenizer::train({"abc"}, 256); }),
            "vocab_size 256 is too small: a byte-level BPE needs at least 257 ids (256 bytes and "
            "<|endoftext|>)");
  EXPECT_EQ(BpeTokenizer::train({"abc"}, 257).vocab_size(), 257);  // bytes + eot, no merges
}

TEST(BpeTrain, DeterministicBytes) {
  TempDir dir;
  const std::vector<std::string> texts = {mixed_corpus(), hug_corpus()};
  BpeTokenizer::train(texts, 600).save(dir.file("a.bpe"));
  BpeTokenizer::train(texts, 600).save(dir.file("b.bpe"));
  const std::string a = read_bytes(dir.file("a.bpe"));
  EXPECT_GT(a.size(), 100u);
  EXPECT_EQ(a, read_bytes(dir.file("b.bpe")));
}

TEST(BpeTrain, ProgressReportsEveryMerge) {
  std::vector<std::pair<int, int>> calls;
  BpeTokenizer::train({hug_corpus()}, 262,
                      [&](int done, int wanted) { calls.emplace_back(done, wanted); });
  EXPECT_EQ(calls, (std::vector<std::pair<int, int>>{{1, 5}, {2, 5}, {3, 5}, {4, 5}, {5, 5}}));
}

// ---- Round trips ----------------------------------------------------------------------------

TEST(BpeRoundTrip, Empty) {
  EXPECT_TRUE(mixed_tokenizer().encode("").empty());
  EXPECT_EQ(mixed_tokenizer().decode(nullptr, 0), "");
}

TEST(BpeRoundTrip, EverySingleByte) {
  for (int b = 0; b < 256; ++b) {
    const std::string text(1, char(b));
    EXPECT_EQ(mixed_tokenizer().encode(text), std::vector<int32_t>{b});
    expect_round_trip(mixed_tokenizer(), text);
  }
}

TEST(BpeRoundTrip, AllByteValues) {
  std::string text;
  for (int b = 0; b < 256; ++b) text += char(b);
  for (int b = 255; b >= 0; --b) text += char(b);
  expect_round_trip(mixed_tokenizer(), text);
  expect_round_trip(run_tokenizer(), text);
}

TEST(BpeRoundTrip, InvalidUtf8) {
  // Stray continuation bytes, a truncated 3-byte sequence, an overlong '/', and 0xff.
  expect_round_trip(mixed_tokenizer(), "ok \x80\xbf caf\xc3 \xe2\x80 \xc0\xaf \xff\xfe the end");
}

TEST(BpeRoundTrip, LongRuns) {
  for (BpeTokenizer* tok : {&mixed_tokenizer(), &run_tokenizer()}) {
    expect_round_trip(*tok, std::string(100000, ' '));
    expect_round_trip(*tok, std::string(100000, 'a'));
    expect_round_trip(*tok, "x" + std::string(100000, ' ') + "y");
  }
  // The run tokenizer learned long 'a' tokens: 100k bytes become few tokens.
  EXPECT_LT(run_tokenizer().encode(std::string(100000, 'a')).size(), 1000u);
}

TEST(BpeRoundTrip, RandomBytes) {
  for (uint32_t seed : {1u, 2u, 3u, 42u, 1234u}) {
    std::mt19937 rng(seed);
    std::string text(2000 + seed % 100, '\0');
    for (char& c : text) c = char(rng() & 0xff);
    expect_round_trip(mixed_tokenizer(), text);
    expect_round_trip(run_tokenizer(), text);
  }
}

TEST(BpeRoundTrip, MixedText) {
  const std::string text = mixed_corpus() + "Unseen words: tokenizers, quux'll, 99 bottles.\n";
  expect_round_trip(mixed_tokenizer(), text);
  // Trained on this text, the tokenizer compresses it well past one byte per token.
  EXPECT_LT(mixed_tokenizer().encode(text).size() * 3, text.size());
}

// ---- Encoding details -----------------------------------------------------------------------

TEST(BpeEncode, EndOfTextIsNeverProducedFromText) {
  BpeTokenizer& tok = mixed_tokenizer();
  const std::vector<int32_t> ids = tok.encode("a<|endoftext|>b");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok.eot_id()), 0);
  const std::vector<int32_t> eot = {tok.eot_id()};
  EXPECT_EQ(tok.decode(eot), "<|endoftext|>");
  EXPECT_EQ(tok.decode(std::vector<int32_t>{104, tok.eot_id(), 105}), "h<|endoftext|>i");
}

TEST(BpeEncode, CacheOverflowKeepsResults) {
  // More distinct pre-tokens than the cache holds (64k), encoded twice by one object.
  std::string text;
  for (int i = 0; i < 70000; ++i) {
    text += ' ';
    for (int v = i; v > 0; v /= 26) text += char('a' + v % 26);
  }
  BpeTokenizer tok = mixed_tokenizer();
  const std::vector<int32_t> first = tok.encode(text);
  EXPECT_EQ(first, reference_encode(tok, text));
  EXPECT_EQ(tok.encode(text), first);
  EXPECT_EQ(tok.decode(first), text);
}

TEST(BpeDecode, RejectsIdsOutsideTheVocabulary) {
  BpeTokenizer& tok = mixed_tokenizer();
  const int32_t v = tok.vocab_size();
  EXPECT_EQ(
      error_of([&] {
        tok.decode(std::vector<int32_t>{97, v});
      }),
      str_cat("decode: token id ", v, " at position 1 is outside the vocabulary (0..", v - 1, ")"));
  EXPECT_EQ(
      error_of([&] { tok.decode(std::vector<int32_t>{-1}); }),
      str_cat("decode: token id -1 at position 0 is outside the vocabulary (0..", v - 1, ")"));
}

// ---- File format ----------------------------------------------------------------------------

TEST(BpeFile, SaveWritesTheDocumentedFormat) {
  TempDir dir;
  BpeTokenizer::train({hug_corpus()}, 300).save(dir.file("hug.bpe"));
  EXPECT_EQ(read_bytes(dir.file("hug.bpe")),
            "shardtrain-bpe 1\nvocab_size 264\n117 103\n117 110\n104 256\n112 257\n112 256\n"
            "258 115\n98 257\n");
  EXPECT_FALSE(fs::exists(dir.file("hug.bpe.tmp")));
  EXPECT_EQ(error_of([&] { mixed_tokenizer().save(dir.file("no/such/dir.bpe")); }),
            dir.file("no/such/dir.bpe") + ": cannot write tokenizer file");
}

TEST(BpeFile, SaveLoadRoundTrip) {
  TempDir dir;
  BpeTokenizer& tok = mixed_tokenizer();
  tok.save(dir.file("t.bpe"));
  BpeTokenizer loaded = BpeTokenizer::load(dir.file("t.bpe"));
  EXPECT_EQ(loaded.merges(), tok.merges());
  EXPECT_EQ(loaded.vocab_size(), tok.vocab_size());
  const std::string text = mixed_corpus() + "\xff\x00 tail";
  EXPECT_EQ(loaded.encode(text), tok.encode(text));
  loaded.save(dir.file("u.bpe"));
  EXPECT_EQ(read_bytes(dir.file("u.bpe")), read_bytes(dir.file("t.bpe")));
}

TEST(BpeFile, MalformedFilesNameFileAndLine) {
  TempDir dir;
  const std::string p = dir.file("bad.bpe");
  const std::string head = "shardtrain-bpe 1\n";
  // Merges that double a token's length each time: merge 28 takes the table past 1 GiB.
  std::string bomb = head + "vocab_size 297\n97 97\n";
  for (int k = 1; k < 40; ++k) bomb += str_cat(255 + k, " ", 255 + k, "\n");
  struct Case {
    const char* name;
    std::string content;
    std::string message;  // after "PATH:"
  };
  const Case cases[] = {
      {"empty", "", "1: empty file (expected 'shardtrain-bpe 1')"},
      {"magic", "hello 1\n",
       "1: not a shardtrain BPE tokenizer file (expected 'shardtrain-bpe 1', got 'hello 1')"},
      {"binary", std::string("\x89PNG\r\n", 6),
       "1: not a shardtrain BPE tokenizer file (expected 'shardtrain-bpe 1', got '?PNG?')"},
      {"version", "shardtrain-bpe 2\nvocab_size 257\n",
       "1: tokenizer format version 2 is not supported (this build reads version 1)"},
      {"bad_version", "shardtrain-bpe one\n", "1: bad format version 'one'"},
      {"crlf", "shardtrain-bpe 1\r\nvocab_size 257\r\n", "1: bad format version '1?'"},
      {"no_vocab", head, "2: missing 'vocab_size N' line (truncated?)"},
      {"vocab_key", head + "vocab 300\n", "2: expected 'vocab_size N', got 'vocab 300'"},
      {"vocab_number", head + "vocab_size -5\n", "2: expected 'vocab_size N', got 'vocab_size -5'"},
      {"vocab_small", head + "vocab_size 100\n",
       "2: vocab_size 100 is out of range (257..2147483647)"},
      {"vocab_huge", head + "vocab_size 9999999999\n",
       "2: vocab_size 9999999999 is out of range (257..2147483647)"},
      {"merge_text", head + "vocab_size 259\n97 98\n97 x\n",
       "4: expected a merge 'LEFT RIGHT' (two decimal ids), got '97 x'"},
      {"merge_one_id", head + "vocab_size 258\n97\n",
       "3: expected a merge 'LEFT RIGHT' (two decimal ids), got '97'"},
      {"merge_spaces", head + "vocab_size 258\n97  98\n",
       "3: expected a merge 'LEFT RIGHT' (two decimal ids), got '97  98'"},
      {"merge_negative", head + "vocab_size 258\n-1 98\n",
       "3: expected a merge 'LEFT RIGHT' (two decimal ids), got '-1 98'"},
      {"merge_blank", head + "vocab_size 258\n\n",
       "3: expected a merge 'LEFT RIGHT' (two decimal ids), got ''"},
      {"undefined_id", head + "vocab_size 259\n97 98\n256 257\n",
       "4: merge 256 257 refers to id 257, which is not defined yet (this merge defines id 257; "
       "it may use ids 0..256)"},
      {"self_reference", head + "vocab_size 258\n97 256\n",
       "3: merge 97 256 refers to id 256, which is not defined yet (this merge defines id 256; "
       "it may use ids 0..255)"},
      {"repeat", head + "vocab_size 260\n97 98\n99 100\n97 98\n", "5: merge 97 98 repeats line 3"},
      {"truncated", head + "vocab_size 260\n97 98\n99 100\n",
       "5: file ends after 2 merges but vocab_size 260 needs 3 (truncated?)"},
      {"too_many", head + "vocab_size 258\n97 98\n99 100\n",
       "4: more merges than vocab_size 258 allows (1)"},
      {"no_final_newline", head + "vocab_size 258\n97 9",
       "3: last line does not end with a newline (truncated?)"},
      {"table_bomb", bomb, "31: merge 283 283 makes the token table exceed 1073741824 bytes"},
  };
  for (const Case& c : cases) {
    write_bytes(p, c.content);
    EXPECT_EQ(error_of([&] { BpeTokenizer::load(p); }), p + ":" + c.message) << c.name;
  }
  EXPECT_EQ(error_of([&] { BpeTokenizer::load(dir.file("missing.bpe")); }),
            dir.file("missing.bpe") + ": cannot open tokenizer file");
}

TEST(BpeFile, FromMergesChecksLikeLoad) {
  EXPECT_EQ(
      BpeTokenizer::from_merges({{97, 98}, {256, 99}}, "test").decode(std::vector<int32_t>{257}),
      "abc");
  EXPECT_EQ(error_of([] {
              BpeTokenizer::from_merges({{97, 98}, {97, 98}}, "test");
            }),
            "test: merge 1: merge 97 98 repeats merge 0");
  EXPECT_EQ(error_of([] {
              BpeTokenizer::from_merges({{300, 98}}, "test");
            }),
            "test: merge 0: merge 300 98 refers to id 300, which is not defined yet (this merge "
            "defines id 256; it may use ids 0..255)");
}

}  // namespace
}  // namespace shardtrain::models
