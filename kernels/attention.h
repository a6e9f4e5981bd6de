// attention.h — causal multi-head self-attention, flash-style.
//
// Contract (every backend): computed tile by tile over keys with an online, max-subtracted
// softmax; the T x T score matrix is never materialised (memory O(T) per row, not O(T^2)).
// Forward saves only the output and each row's logsumexp; backward recomputes the scores.
// Scale 1/sqrt(D). fp32 arithmetic whatever the storage type T. Bitwise independent of the
// OpenMP thread count.
//
// Layout: qkv is the output of GPT-2's c_attn, (B,T,3,H,D): each row of 3*H*D holds Q | K | V,
// heads contiguous inside each (head h uses columns h*D ... h*D+D-1 of its third).
#pragma once

#include <cstdint>

#include "kernels/isa.h"

namespace shardtrain::kernels {

struct AttentionShape {
  int64_t batch;     // B
  int64_t seq;       // T
  int64_t heads;     // H (the heads this rank holds under tensor parallelism)
  int64_t head_dim;  // D
};

SHARDTRAIN_ISA_BEGIN
// out (B,T,H,D) = softmax(Q K^T / sqrt(D), causal) V; lse (B,H,T) = logsumexp of each row of
// the scaled, masked scores.
template <class T>
void attention_forward(T* out,        // (B,T,H,D)
                       float* lse,    // (B,H,T)
                       const T* qkv,  // (B,T,3,H,D)
                       AttentionShape s);

// dqkv (B,T,3,H,D) is overwritten with the gradients of Q, K and V.
template <class T>
void attention_backward(T* dqkv,           // (B,T,3,H,D)
                        const T* dout,     // (B,T,H,D)
                        const T* qkv,      // (B,T,3,H,D)
                        const T* out,      // (B,T,H,D)
                        const float* lse,  // (B,H,T)
                        AttentionShape s);

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
