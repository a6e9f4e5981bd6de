// layernorm.h — LayerNorm (GPT-2) and RMSNorm (Llama) over the channel dimension of N = B*T rows.
//
// Contract (every backend): statistics and arithmetic in fp32 whatever the storage type T;
// mean and rstd are saved in fp32 for backward; parameter gradients accumulate (+=) into fp32
// buffers the caller zeroed; results are bitwise independent of the OpenMP thread count.
#pragma once

#include <cstdint>

#include "kernels/isa.h"

namespace shardtrain::kernels {

struct RowsShape {
  int64_t rows;      // N = B*T
  int64_t channels;  // C
};

SHARDTRAIN_ISA_BEGIN
// out = (x - mean) * rstd * weight + bias, with rstd = 1/sqrt(var + eps) (biased variance).
template <class T>
void layernorm_forward(T* out,           // (N,C)
                       float* mean,      // (N)
                       float* rstd,      // (N)
                       const T* x,       // (N,C)
                       const T* weight,  // (C)
                       const T* bias,    // (C)
                       RowsShape s, float eps);

// Fused residual add + LayerNorm forward (a pre-LN block's `x = x + sublayer(x); ln(x)`):
// res = a + b (each element to_float(a) + to_float(b), rounded once to T: exactly
// residual_add), then out/mean/rstd = LayerNorm of res (exactly layernorm_forward(out, mean,
// rstd, res, weight, bias, s, eps)): bit for bit the two calls. res may alias a or b; out must
// not alias any input. The GPU version reads a and b once instead of res a second time.
template <class T>
void residual_layernorm_forward(T* res,           // (N,C)
                                T* out,           // (N,C)
                                float* mean,      // (N)
                                float* rstd,      // (N)
                                const T* a,       // (N,C)
                                const T* b,       // (N,C)
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

// RMSNorm (Llama; Hugging Face's LlamaRMSNorm): out = x * rstd * weight, rstd = 1/sqrt(mean(x^2)
// + eps), all in fp32, rounded once to T (for fp32 exactly HF's; for 16-bit storage HF rounds
// x * rstd before the weight, one more rounding).
template <class T>
void rmsnorm_forward(T* out,           // (N,C)
                     float* rstd,      // (N)
                     const T* x,       // (N,C)
                     const T* weight,  // (C)
                     RowsShape s, float eps);

// Fused residual add + RMSNorm, bit for bit residual_add then rmsnorm_forward (as for
// LayerNorm above; res may alias a or b, out aliases nothing).
template <class T>
void residual_rmsnorm_forward(T* res, T* out, float* rstd, const T* a, const T* b, const T* weight,
                              RowsShape s, float eps);

// With xhat = x rstd: dx += rstd (dout w - xhat mean(dout w xhat)) (accumulates, as LayerNorm);
// dweight += sum over rows of dout * xhat.
template <class T>
void rmsnorm_backward(T* dx,              // (N,C) accumulated
                      float* dweight,     // (C) accumulated
                      const T* dout,      // (N,C)
                      const T* x,         // (N,C)
                      const T* weight,    // (C)
                      const float* rstd,  // (N)
                      RowsShape s);

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
