// data.h — token shards and the data contract.
//
// Shard format (fixed; users write shards from Python): a 64-byte header — magic "STTOKENS",
// u32 format version (1), u32 token width in bytes (2 or 4), u64 vocab size, u64 token count,
// zero padding — then the tokens, little-endian. Shards are memory-mapped and read lazily.
//
// Data contract (README): the shards, in the given order, form one token stream. Window i is
// tokens [i*T, i*T+T] (T inputs; targets are the same window shifted by one). Micro-batch m,
// counted across all micro-steps of all optimizer steps, is windows m*B*dp ... m*B*dp+B*dp-1;
// data-parallel rank r takes the B windows starting at m*B*dp + r*B; past the last window the
// index wraps to 0. So the tokens of an optimizer step do not depend on how the global batch is
// split across ranks and micro-steps.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace shardtrain::models {

constexpr char kTokenMagic[8] = {'S', 'T', 'T', 'O', 'K', 'E', 'N', 'S'};
constexpr uint32_t kTokenFormatVersion = 1;
constexpr int64_t kTokenHeaderBytes = 64;

class TokenShard {
 public:
  // Maps `path` and checks its header and size; every problem is a UserError naming the file.
  static std::shared_ptr<TokenShard> open(const std::string& path);
  ~TokenShard();
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  int64_t vocab_size() const { return vocab_size_; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t token(int64_t i) const;  // no bounds check beyond an internal invariant

 private:
  TokenShard() = default;
  std::string path_;
  const unsigned char* map_ = nullptr;
  int64_t map_bytes_ = 0;
  int token_bytes_ = 0;
  int64_t vocab_size_ = 0;
  int64_t num_tokens_ = 0;
};

// Writes a shard (token width chosen from the vocab: 2 bytes when vocab <= 65536).
void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens,
                       int64_t vocab_size);

// Expands globs (sorted within each pattern; patterns in the given order) into paths; a
// pattern that matches nothing is a UserError naming `field`.
std::vector<std::string> expand_paths(const std::vector<std::string>& patterns,
                                      const std::string& field);

// The concatenation of shards, read as windows of T+1 tokens.
class TokenStream {
 public:
  // Checks every shard: readable, same token format, vocab <= `model_vocab`.
  TokenStream(const std::vector<std::string>& paths, int64_t model_vocab);

  int64_t num_tokens() const { return total_; }
  int64_t num_windows(int64_t T) const;  // windows of T+1 tokens that fit
  // Copies window (index mod num_windows) into out[0..T]; checks every token < model vocab.
  void window(int64_t index, int64_t T, int32_t* out) const;

 private:
  std::vector<std::shared_ptr<TokenShard>> shards_;
  std::vector<int64_t> starts_;  // first global token index of each shard
  int64_t total_ = 0;
  int64_t model_vocab_;
};

// One data-parallel rank's view of the contract above.
class DataLoader {
 public:
  DataLoader(std::shared_ptr<const TokenStream> stream, int64_t B, int64_t T, int dp_rank,
             int dp_size);
  // Fills inputs and targets (B,T) for micro-batch `position()`, then advances.
  void next(int32_t* inputs, int32_t* targets);
  int64_t position() const { return micro_batch_; }
  void set_position(int64_t micro_batch) { micro_batch_ = micro_batch; }

 private:
  std::shared_ptr<const TokenStream> stream_;
  int64_t B_, T_;
  int dp_rank_, dp_size_;
  int64_t micro_batch_ = 0;
  std::vector<int32_t> window_;
};

}  // namespace shardtrain::models
