// attention.h — causal multi-head self-attention, flash-style.
//
// Contract (every backend): computed tile by tile over keys with an online, max-subtracted
// softmax; the T x T score matrix is never materialised (memory O(T) per row, not O(T^2)).
// Forward saves only the output and each row's logsumexp; backward recomputes the scores.
// Scale 1/sqrt(D). fp32 arithmetic whatever the storage type T. Bitwise independent of the
// OpenMP thread count.
//
// Layout: qkv (B,T,H+2K,D) with K = kv_heads: each row holds the H query heads, then the K key
// heads, then the K value heads, each head D contiguous elements. Query head h attends with
// key/value head h / (H/K) (grouped-query attention; K = 1 is multi-query). With K = H this
// is GPT-2's c_attn output (B,T,3,H,D): Q | K | V. dqkv has the layout of qkv; the gradient of
// a key/value head is summed over the H/K query heads that use it, in head order.
#pragma once

#include <cstdint>

#include "kernels/isa.h"

namespace shardtrain::kernels {

struct AttentionShape {
  int64_t batch;         // B
  int64_t seq;           // T
  int64_t heads;         // H (the query heads this rank holds under tensor parallelism)
  int64_t head_dim;      // D
  int64_t kv_heads = 0;  // K, dividing H; 0 means H (multi-head attention, GPT-2)
};

inline int64_t kv_heads_of(const AttentionShape& s) {
  return s.kv_heads > 0 ? s.kv_heads : s.heads;
}
// Elements of one qkv row: (H + 2K) D.
inline int64_t qkv_row_numel(const AttentionShape& s) {
  return (s.heads + 2 * kv_heads_of(s)) * s.head_dim;
}

SHARDTRAIN_ISA_BEGIN
// out (B,T,H,D) = softmax(Q K^T / sqrt(D), causal) V; lse (B,H,T) = logsumexp of each row of
// the scaled, masked scores.
template <class T>
void attention_forward(T* out,        // (B,T,H,D)
                       float* lse,    // (B,H,T)
                       const T* qkv,  // (B,T,H+2K,D)
                       AttentionShape s);

// dqkv (B,T,H+2K,D) is overwritten with the gradients of Q, K and V.
template <class T>
void attention_backward(T* dqkv,           // (B,T,H+2K,D)
                        const T* dout,     // (B,T,H,D)
                        const T* qkv,      // (B,T,H+2K,D)
                        const T* out,      // (B,T,H,D)
                        const float* lse,  // (B,H,T)
                        AttentionShape s);

// Decoding with a KV cache (generation): out (n, H, D) for n query rows at positions pos ..
// pos+n-1; q rows of q_stride elements with the H query heads first; k, v: the cache, rows
// 0 .. pos+n-1 of K heads x D (k_stride elements apart). Row i attends keys 0 .. pos+i, key/value
// head h / (H/K) for query head h; scale 1/sqrt(D), fp32. Not tiled: a row's pos+i+1 scores are
// held at once (fine for generation's one row per step). s.batch and s.seq are unused.
template <class T>
void attention_decode(T* out, const T* q, int64_t q_stride, const T* k, const T* v,
                      int64_t k_stride, AttentionShape s, int64_t pos, int64_t n);

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
