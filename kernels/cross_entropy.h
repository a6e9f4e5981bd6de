// cross_entropy.h — fused softmax cross-entropy over the vocabulary.
//
// Contract: max-subtracted, fp32 accumulation; rows whose target is negative (kIgnoreIndex)
// contribute loss 0 and gradient 0. The caller forms the mean (it knows the global count of
// targets across micro-steps and ranks) and passes each row's gradient weight to backward.
// Bitwise independent of the OpenMP thread count.
#pragma once

#include <cstdint>

#include "kernels/isa.h"

namespace shardtrain::kernels {

constexpr int32_t kIgnoreIndex = -1;

struct LogitsShape {
  int64_t rows;   // N = B*T
  int64_t vocab;  // V (the padded width of the logits rows)
};

SHARDTRAIN_ISA_BEGIN
// losses[i] = logsumexp(logits[i]) - logits[i][target[i]] (0 if ignored); lse[i] saved.
// `valid_vocab` <= V: columns at or past it are padding and excluded from the softmax.
template <class T>
void cross_entropy_forward(float* losses,           // (N)
                           float* lse,              // (N)
                           const T* logits,         // (N,V)
                           const int32_t* targets,  // (N)
                           LogitsShape s, int64_t valid_vocab);

// dlogits = (softmax(logits) - onehot(target)) * grad_weight, 0 for ignored rows and padding
// columns. dlogits may alias logits (the usual case: the logits buffer is reused in place).
template <class T>
void cross_entropy_backward(T* dlogits,              // (N,V)
                            const T* logits,         // (N,V)
                            const float* lse,        // (N)
                            const int32_t* targets,  // (N)
                            float grad_weight, LogitsShape s, int64_t valid_vocab);

// ---- Vocab-parallel pieces (Megatron): the caller all-reduces row_max (max), then sum and
// target_logit (sums) over the tensor-parallel group and forms lse = max + log(sum). ---------
// logits (s.rows, s.vocab) is this rank's vocabulary slice, whose column j is global id
// vocab_begin + j; only columns j < valid are real (the rest is padding).

// row_max[i] = max over j < valid of to_float(logits[i][j]) (a float, stored as double; -inf
// if valid == 0); target_logit[i] = double(to_float(logits[i][t])) with t = targets[i] -
// vocab_begin if targets[i] >= 0 and 0 <= t < valid, else 0.
template <class T>
void cross_entropy_partial_max(double* row_max, double* target_logit, const T* logits,
                               const int32_t* targets, int64_t vocab_begin, LogitsShape s,
                               int64_t valid);

// sum[i] = sum over j < valid, in order, of exp(double(to_float(logits[i][j]) -
// float(row_max[i]))) (the float subtraction first, exp in double).
template <class T>
void cross_entropy_partial_sumexp(double* sum, const T* logits, const double* row_max,
                                  LogitsShape s, int64_t valid);

// dlogits[i][j] = T(g * grad_weight), g = (targets[i] >= 0 && j < valid) ?
// exp(to_float(logits[i][j]) - lse[i]) - (j == targets[i] - vocab_begin ? 1 : 0) : 0, exp in
// float (std::exp). dlogits may alias logits.
template <class T>
void cross_entropy_backward_slice(T* dlogits, const T* logits, const float* lse,
                                  const int32_t* targets, int64_t vocab_begin, float grad_weight,
                                  LogitsShape s, int64_t valid);

// The loss from the pieces once they are reduced over the tp group (max, sums, target logits):
// lse[i] = float(row_max[i] + log(sum[i])) (log in double) and losses[i] = targets[i] < 0 ? 0 :
// float(double(lse[i]) - target_logit[i]).
void cross_entropy_from_partials(float* losses, float* lse, const double* row_max,
                                 const double* sum, const double* target_logit,
                                 const int32_t* targets, int64_t n);

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
