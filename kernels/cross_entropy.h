// cross_entropy.h — fused softmax cross-entropy over the vocabulary.
//
// Contract: max-subtracted, fp32 accumulation; rows whose target is negative (kIgnoreIndex)
// contribute loss 0 and gradient 0. The caller forms the mean (it knows the global count of
// targets across micro-steps and ranks) and passes each row's gradient weight to backward.
// Bitwise independent of the OpenMP thread count.
#pragma once

#include <cstdint>

namespace shardtrain::kernels {

constexpr int32_t kIgnoreIndex = -1;

struct LogitsShape {
  int64_t rows;   // N = B*T
  int64_t vocab;  // V (the padded width of the logits rows)
};

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

}  // namespace shardtrain::kernels
