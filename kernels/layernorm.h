// layernorm.h — LayerNorm over the channel dimension of N = B*T rows.
//
// Contract (every backend): statistics and arithmetic in fp32 whatever the storage type T;
// mean and rstd are saved in fp32 for backward; parameter gradients accumulate (+=) into fp32
// buffers the caller zeroed; results are bitwise independent of the OpenMP thread count.
#pragma once

#include <cstdint>

namespace shardtrain::kernels {

struct RowsShape {
  int64_t rows;      // N = B*T
  int64_t channels;  // C
};

// out = (x - mean) * rstd * weight + bias, with rstd = 1/sqrt(var + eps) (biased variance).
template <class T>
void layernorm_forward(T* out,           // (N,C)
                       float* mean,      // (N)
                       float* rstd,      // (N)
                       const T* x,       // (N,C)
                       const T* weight,  // (C)
                       const T* bias,    // (C)
                       RowsShape s, float eps);

// dx += dLN/dx . dout (accumulates: in a pre-LN block dx already holds the residual gradient);
// dweight += sum over rows of dout * xhat; dbias += sum over rows of dout.
template <class T>
void layernorm_backward(T* dx,              // (N,C) accumulated
                        float* dweight,     // (C) accumulated
                        float* dbias,       // (C) accumulated
                        const T* dout,      // (N,C)
                        const T* x,         // (N,C)
                        const T* weight,    // (C)
                        const float* mean,  // (N)
                        const float* rstd,  // (N)
                        RowsShape s);

}  // namespace shardtrain::kernels
