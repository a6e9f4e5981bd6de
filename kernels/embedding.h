// embedding.h — GPT-2's token + learned position embedding.
//
// Contract: backward is deterministic (each gradient row is summed in token order, never with
// atomics) and bitwise independent of the OpenMP thread count; gradients accumulate (+=) in fp32.
// Token ids are validated by the data loader, not here.
#pragma once

#include <cstdint>

namespace shardtrain::kernels {

struct EmbeddingShape {
  int64_t batch;     // B
  int64_t seq;       // T
  int64_t channels;  // C
};

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

}  // namespace shardtrain::kernels
