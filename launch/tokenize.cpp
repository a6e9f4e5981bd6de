// tokenize.cpp — text files -> tokenizer.bpe, train_000.bin, val_000.bin.
//
// Phases: read every input whole (a corpus that fits a shard fits memory), choose the
// train/validation cut, train or load the tokenizer, encode each side, write the shards.
// Encoding runs in chunks only to report progress; chunks end where a pre-token must begin
// (after a '\n' followed by a non-space byte), so the tokens equal those of encoding each
// side whole.
#include "launch/tokenize.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string_view>

#include "models/data.h"
#include "models/tokenizer.h"
#include "runtime/error.h"
#include "runtime/log.h"

namespace shardtrain::launch {
namespace {

using Clock = std::chrono::steady_clock;
using models::BpeTokenizer;

// Progress lines are written only for inputs at least this large: below it, training and
// encoding take a few seconds at most (encoding runs at tens of MB/s), and ten progress lines
// would be noise around the summary.
constexpr size_t kProgressMinBytes = size_t(32) << 20;
// Encoding chunk target: small enough for 10% progress steps on a 32 MiB input, large enough
// that the per-chunk work (a newline search, a progress check) is invisible.
constexpr size_t kChunkBytes = size_t(1) << 20;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double mb(size_t bytes) { return double(bytes) / 1e6; }

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(str_cat(path, ": cannot open input text file"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw UserError(str_cat(path, ": read failed"));
  return text;
}

bool is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

// Byte offset (into the concatenation of `docs`) of the line start nearest to `target`: a
// position after a '\n' or at a document's start, never 0 or the end. npos if there is none.
size_t nearest_line_start(const std::vector<std::string>& docs, size_t target) {
  const size_t npos = std::string::npos;
  size_t before = npos, after = npos, start = 0;
  for (const std::string& doc : docs) {
    const size_t end = start + doc.size();
    if (doc.empty() || end <= target) {
      // A document start before the target is a candidate; a later one is found below.
      if (start > 0 && start <= target) before = start;
      start = end;
      continue;
    }
    if (start > target) {
      after = start;  // the first document start past the target
      break;
    }
    // The target lies in this document: the last '\n' before it, the first at or after it.
    const size_t off = target - start;
    const size_t q = off > 0 ? doc.rfind('\n', off - 1) : npos;
    if (q != npos) {
      before = start + q + 1;
    } else if (start > 0) {
      before = start;
    }
    const size_t r = doc.find('\n', off);
    if (r != npos && start + r + 1 < end) {
      after = start + r + 1;
      break;
    }
    if (r != npos) after = end;  // the '\n' ends the document: the next one starts there
    start = end;
    if (after != npos) break;
  }
  size_t total = 0;
  for (const std::string& doc : docs) total += doc.size();
  if (after != npos && after >= total) after = npos;
  if (before == npos) return after;
  if (after == npos) return before;
  return after - target < target - before ? after : before;
}

// Logs "encoded N%" lines at every 10% of `total` bytes (only for large inputs).
class EncodeProgress {
 public:
  explicit EncodeProgress(size_t total) : total_(total), enabled_(total >= kProgressMinBytes) {}
  void advance(size_t bytes, size_t tokens) {
    done_ += bytes;
    if (!enabled_) return;
    // Ten steps: one line per 10% of the input.
    while (next_tenth_ <= 10 && done_ * 10 >= total_ * size_t(next_tenth_)) {
      log_info("tokenize: encoded ", next_tenth_ * 10, "% (", mb(done_), " MB, ", tokens,
               " tokens)");
      ++next_tenth_;
    }
  }

 private:
  size_t total_, done_ = 0;
  bool enabled_;
  int next_tenth_ = 1;
};

// Appends the tokens of `text` to `out`, in chunks that end where a pre-token begins.
void encode_chunked(BpeTokenizer* tok, std::string_view text, std::vector<int32_t>* out,
                    EncodeProgress* progress, size_t* token_count) {
  while (!text.empty()) {
    size_t end = text.size();
    if (text.size() > kChunkBytes) {
      size_t q = text.find('\n', kChunkBytes - 1);
      while (q != std::string_view::npos && q + 1 < text.size() && is_space(text[q + 1])) {
        q = text.find('\n', q + 1);
      }
      if (q != std::string_view::npos && q + 1 < text.size()) end = q + 1;
    }
    const size_t before = out->size();
    tok->encode_append(text.substr(0, end), out);
    *token_count += out->size() - before;
    progress->advance(end, *token_count);
    text.remove_prefix(end);
  }
}

}  // namespace

int run_tokenize(const TokenizeArgs& args) {
  ST_USER_CHECK(!args.inputs.empty(), "tokenize: no input files (--input)");
  ST_USER_CHECK(!args.out_dir.empty(), "tokenize: no output directory (--out)");
  ST_USER_CHECK(args.val_fraction >= 0 && args.val_fraction < 1,
                "tokenize: --val-fraction must be in [0, 1), got ", args.val_fraction);

  // 1. Read the inputs.
  std::vector<std::string> docs;
  size_t total = 0;
  for (const std::string& path : args.inputs) {
    docs.push_back(read_text_file(path));
    total += docs.back().size();
  }
  ST_USER_CHECK(total > 0, "tokenize: the input files are empty");

  // 2. The cut: global byte offset where validation text starts (total = no validation).
  size_t cut = total;
  if (args.val_fraction > 0) {
    const size_t val_bytes =
        std::min(size_t(std::llround(args.val_fraction * double(total))), total);
    cut = total >= 2 ? nearest_line_start(docs, std::clamp<size_t>(total - val_bytes, 1, total - 1))
                     : std::string::npos;
    ST_USER_CHECK(cut != std::string::npos,
                  "tokenize: cannot cut a validation split: the input has no line start to cut "
                  "at (a '\\n' or a second file); use --val-fraction 0 or add line breaks");
  }
  // Each document's training part is [0, train_len[d]); the rest is validation text.
  std::vector<size_t> train_len;
  std::vector<std::string_view> train_texts;
  size_t start = 0;
  for (const std::string& doc : docs) {
    train_len.push_back(std::min(doc.size(), cut > start ? cut - start : 0));
    if (train_len.back() > 0) {
      train_texts.push_back(std::string_view(doc).substr(0, train_len.back()));
    }
    start += doc.size();
  }
  log_info("tokenize: ", docs.size(), " files, ", mb(total), " MB: training split ", mb(cut),
           " MB, validation split ", mb(total - cut), " MB");

  // 3. The tokenizer: loaded, or trained on the training split.
  std::filesystem::path out_dir(args.out_dir);
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) {
    throw UserError(str_cat(args.out_dir, ": cannot create output directory (", ec.message(), ")"));
  }
  std::optional<BpeTokenizer> tok;
  if (!args.tokenizer.empty()) {
    tok = BpeTokenizer::load(args.tokenizer);
    if (args.vocab_size > 0 && args.vocab_size != tok->vocab_size()) {
      log_warn("tokenize: --vocab-size ", args.vocab_size, " ignored: ", args.tokenizer,
               " has vocab_size ", tok->vocab_size());
    }
  } else {
    ST_USER_CHECK(args.vocab_size >= models::kBpeMinVocab, "tokenize: --vocab-size ",
                  args.vocab_size, " is too small (at least ", models::kBpeMinVocab,
                  ": 256 bytes and <|endoftext|>)");
    const bool verbose = cut >= kProgressMinBytes;
    int next_tenth = 1;
    auto progress = [&](int done, int wanted) {
      // One line per 10% of the merges, for large corpora.
      while (verbose && next_tenth <= 10 && int64_t(done) * 10 >= int64_t(wanted) * next_tenth) {
        log_info("tokenize: learned ", done, "/", wanted, " merges");
        ++next_tenth;
      }
    };
    const auto t0 = Clock::now();
    tok = BpeTokenizer::train_views(train_texts, args.vocab_size, progress);
    log_info("tokenize: trained vocab_size ", tok->vocab_size(), " (", tok->merges().size(),
             " merges) in ", seconds_since(t0), " s");
    if (tok->vocab_size() < args.vocab_size) {
      log_warn("tokenize: the training text ran out of pairs: vocab_size is ", tok->vocab_size(),
               ", not the ", args.vocab_size, " asked for");
    }
  }
  const std::string tok_path = (out_dir / "tokenizer.bpe").string();
  tok->save(tok_path);

  // 4. Encode both sides; a document's <|endoftext|> goes with its last byte's side.
  const auto t0 = Clock::now();
  EncodeProgress progress(total);
  std::vector<int32_t> train_tokens, val_tokens;
  size_t token_count = 0;
  size_t doc_start = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    const std::string_view doc = docs[d];
    encode_chunked(&*tok, doc.substr(0, train_len[d]), &train_tokens, &progress, &token_count);
    encode_chunked(&*tok, doc.substr(train_len[d]), &val_tokens, &progress, &token_count);
    doc_start += doc.size();
    (doc_start <= cut ? train_tokens : val_tokens).push_back(tok->eot_id());
  }
  const double encode_s = seconds_since(t0);
  log_info("tokenize: encoded ", mb(total), " MB into ", train_tokens.size() + val_tokens.size(),
           " tokens in ", encode_s, " s (", mb(total) / std::max(encode_s, 1e-9), " MB/s, ",
           double(total) / double(std::max<size_t>(token_count, 1)), " bytes/token)");

  // 5. The shards.
  const std::string train_path = (out_dir / "train_000.bin").string();
  models::write_token_shard(train_path, train_tokens, tok->vocab_size());
  log_info("tokenize: wrote ", tok_path, " and ", train_path, " (", train_tokens.size(),
           " tokens)");
  if (cut < total) {
    const std::string val_path = (out_dir / "val_000.bin").string();
    models::write_token_shard(val_path, val_tokens, tok->vocab_size());
    log_info("tokenize: wrote ", val_path, " (", val_tokens.size(), " tokens)");
  } else {
    log_info("tokenize: --val-fraction 0: no validation shard");
  }
  return 0;
}

}  // namespace shardtrain::launch
