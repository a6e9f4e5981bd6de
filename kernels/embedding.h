// embedding.h — GPT-2's token + learned position embedding.
//
// Contract: backward is deterministic (each gradient row is summed in token order, never with
// atomics) and bitwise independent of the OpenMP thread count; gradients accumulate (+=) in fp32.
// Token ids are validated by the data loader, not here.
#pragma once

#include <cstdint>

#include "kernels/isa.h"

namespace shardtrain::kernels {

struct EmbeddingShape {
  int64_t batch;     // B
  int64_t seq;       // T
  int64_t channels;  // C
};

SHARDTRAIN_ISA_BEGIN
// out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]
template <class T>
void embedding_forward(T* out,                 // (B,T,C)
                       const int32_t* tokens,  // (B,T)
                       const T* wte,           // (V,C)
                       const T* wpe,           // (T_max,C), T <= T_max
                       EmbeddingShape s);

// dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[t,:] += sum over b of dout[b,t,:]
template <class T>
void embedding_backward(float* dwte,            // (V,C) accumulated
                        float* dwpe,            // (T_max,C) accumulated
                        const T* dout,          // (B,T,C)
                        const int32_t* tokens,  // (B,T)
                        EmbeddingShape s);

// ---- Vocab-parallel pieces (tensor parallelism: each rank holds the wte rows of a vocabulary
// slice [vocab_begin, vocab_begin + vocab_rows) and a contiguous block of the (b,t) rows) ------

// out row i (i < n) = wte row (tokens[i] - vocab_begin) if that is in [0, vocab_rows), else
// zeros (a copy of the stored bits). wte is the slice (vocab_rows, C).
template <class T>
void embedding_lookup_slice(T* out, const int32_t* tokens, const T* wte, int64_t vocab_begin,
                            int64_t vocab_rows, int64_t n, int64_t C);

// x (rows, C): row i += wpe row ((row0 + i) % seq) (fp32 add, one rounding).
template <class T>
void add_positions(T* x, const T* wpe, int64_t rows, int64_t row0, int64_t seq, int64_t C);

// dwte (vocab_rows, C) fp32 += dout row i for every i in [0, n) whose token is in the slice,
// positions summed in index order.
template <class T>
void embedding_backward_slice(float* dwte, const T* dout, const int32_t* tokens,
                              int64_t vocab_begin, int64_t vocab_rows, int64_t n, int64_t C);

// dwpe (seq, C) fp32: row (row0 + i) % seq += dout row i, for i in [0, rows) in order.
template <class T>
void positions_backward(float* dwpe, const T* dout, int64_t rows, int64_t row0, int64_t seq,
                        int64_t C);

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
