#include "models/data.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "runtime/error.h"

namespace shardtrain::models {
namespace {

template <class U>
U read_le(const unsigned char* p) {
  U v = 0;
  for (size_t i = 0; i < sizeof(U); ++i) v |= U(p[i]) << (8 * i);
  return v;
}

template <class U>
void put_le(unsigned char* p, U v) {
  for (size_t i = 0; i < sizeof(U); ++i) p[i] = (unsigned char)(v >> (8 * i));
}

}  // namespace

std::shared_ptr<TokenShard> TokenShard::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw UserError(str_cat(path, ": cannot open token shard"));
  struct stat st {};
  ::fstat(fd, &st);
  const int64_t size = st.st_size;
  if (size < kTokenHeaderBytes) {
    ::close(fd);
    throw UserError(str_cat(path, ": not a token shard (", size, " bytes, shorter than the ",
                            kTokenHeaderBytes, "-byte header)"));
  }
  void* map = ::mmap(nullptr, size_t(size), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) throw UserError(str_cat(path, ": cannot map token shard"));
  std::shared_ptr<TokenShard> s(new TokenShard());
  s->path_ = path;
  s->map_ = static_cast<const unsigned char*>(map);
  s->map_bytes_ = size;
  const unsigned char* h = s->map_;
  if (std::memcmp(h, kTokenMagic, 8) != 0) {
    throw UserError(str_cat(path, ": not a token shard (magic is not STTOKENS)"));
  }
  uint32_t version = read_le<uint32_t>(h + 8);
  if (version != kTokenFormatVersion) {
    throw UserError(str_cat(path, ": token shard format version ", version,
                            " is not supported (this build reads version ", kTokenFormatVersion,
                            ")"));
  }
  s->token_bytes_ = int(read_le<uint32_t>(h + 12));
  if (s->token_bytes_ != 2 && s->token_bytes_ != 4) {
    throw UserError(str_cat(path, ": token width ", s->token_bytes_, " bytes (must be 2 or 4)"));
  }
  uint64_t vocab = read_le<uint64_t>(h + 16), count = read_le<uint64_t>(h + 24);
  if (vocab == 0 || vocab > (1ull << 31)) {
    throw UserError(str_cat(path, ": vocab size ", vocab, " in the header is out of range"));
  }
  if (s->token_bytes_ == 2 && vocab > 65536) {
    throw UserError(str_cat(path, ": vocab size ", vocab, " does not fit 2-byte tokens"));
  }
  const uint64_t payload = uint64_t(size - kTokenHeaderBytes);
  if (count > payload / uint64_t(s->token_bytes_) || count * uint64_t(s->token_bytes_) != payload) {
    throw UserError(str_cat(path, ": header says ", count, " tokens of ", s->token_bytes_,
                            " bytes but the file holds ", payload, " bytes (truncated?)"));
  }
  s->vocab_size_ = int64_t(vocab);
  s->num_tokens_ = int64_t(count);
  return s;
}

TokenShard::~TokenShard() {
  if (map_ != nullptr) ::munmap(const_cast<unsigned char*>(map_), size_t(map_bytes_));
}

int64_t TokenShard::token(int64_t i) const {
  const unsigned char* p = map_ + kTokenHeaderBytes + i * token_bytes_;
  return token_bytes_ == 2 ? int64_t(read_le<uint16_t>(p)) : int64_t(read_le<uint32_t>(p));
}

void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens,
                       int64_t vocab_size) {
  const int width = vocab_size <= 65536 ? 2 : 4;
  std::vector<unsigned char> buf(size_t(kTokenHeaderBytes) + tokens.size() * size_t(width), 0);
  std::memcpy(buf.data(), kTokenMagic, 8);
  put_le<uint32_t>(buf.data() + 8, kTokenFormatVersion);
  put_le<uint32_t>(buf.data() + 12, uint32_t(width));
  put_le<uint64_t>(buf.data() + 16, uint64_t(vocab_size));
  put_le<uint64_t>(buf.data() + 24, uint64_t(tokens.size()));
  unsigned char* p = buf.data() + kTokenHeaderBytes;
  for (int32_t t : tokens) {
    ST_CHECK(t >= 0 && t < vocab_size, "token ", t, " outside the vocabulary");
    if (width == 2)
      put_le<uint16_t>(p, uint16_t(t));
    else
      put_le<uint32_t>(p, uint32_t(t));
    p += width;
  }
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) throw UserError(str_cat(path, ": cannot write token shard"));
  bool ok = std::fwrite(buf.data(), 1, buf.size(), f) == buf.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw UserError(str_cat(path, ": write failed"));
  }
}

std::vector<std::string> expand_paths(const std::vector<std::string>& patterns,
                                      const std::string& field) {
  std::vector<std::string> out;
  for (const std::string& pattern : patterns) {
    glob_t g{};
    int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
    if (rc != 0) {
      ::globfree(&g);
      throw UserError(str_cat(field, ": '", pattern, "' matches no file"));
    }
    std::vector<std::string> matched(g.gl_pathv, g.gl_pathv + g.gl_pathc);
    ::globfree(&g);
    std::sort(matched.begin(), matched.end());
    out.insert(out.end(), matched.begin(), matched.end());
  }
  return out;
}

TokenStream::TokenStream(const std::vector<std::string>& paths, int64_t model_vocab)
    : model_vocab_(model_vocab) {
  for (const std::string& p : paths) {
    auto shard = TokenShard::open(p);
    if (shard->vocab_size() > model_vocab) {
      throw UserError(str_cat(p, ": token shard vocab size ", shard->vocab_size(),
                              " exceeds model.vocab_size ", model_vocab));
    }
    starts_.push_back(total_);
    total_ += shard->num_tokens();
    shards_.push_back(std::move(shard));
  }
}

int64_t TokenStream::num_windows(int64_t T) const { return total_ > T ? (total_ - 1) / T : 0; }

void TokenStream::window(int64_t index, int64_t T, int32_t* out) const {
  const int64_t n = num_windows(T);
  ST_CHECK(n > 0, "token stream shorter than one window");
  int64_t pos = (index % n) * T;
  // Find the shard holding `pos`, then copy T+1 tokens, crossing shard boundaries as needed.
  size_t s = size_t(std::upper_bound(starts_.begin(), starts_.end(), pos) - starts_.begin() - 1);
  for (int64_t i = 0; i <= T; ++i, ++pos) {
    while (pos >= starts_[s] + shards_[s]->num_tokens()) ++s;
    int64_t tok = shards_[s]->token(pos - starts_[s]);
    if (tok >= model_vocab_) {
      throw UserError(str_cat(shards_[s]->path(), ": token ", tok, " at position ",
                              pos - starts_[s], " is outside the model vocabulary (", model_vocab_,
                              ")"));
    }
    out[i] = int32_t(tok);
  }
}

DataLoader::DataLoader(std::shared_ptr<const TokenStream> stream, int64_t B, int64_t T, int dp_rank,
                       int dp_size)
    : stream_(std::move(stream)),
      B_(B),
      T_(T),
      dp_rank_(dp_rank),
      dp_size_(dp_size),
      window_(size_t(T + 1)) {
  if (stream_->num_windows(T) == 0) {
    throw UserError(str_cat("data: the token stream has ", stream_->num_tokens(),
                            " tokens, fewer than one window of model.seq_len + 1 = ", T + 1));
  }
}

void DataLoader::next(int32_t* inputs, int32_t* targets) {
  const int64_t first = micro_batch_ * B_ * dp_size_ + int64_t(dp_rank_) * B_;
  for (int64_t b = 0; b < B_; ++b) {
    stream_->window(first + b, T_, window_.data());
    std::copy(window_.begin(), window_.end() - 1, inputs + b * T_);
    std::copy(window_.begin() + 1, window_.end(), targets + b * T_);
  }
  ++micro_batch_;
}

}  // namespace shardtrain::models
