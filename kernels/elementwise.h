// elementwise.h — GELU, SwiGLU, residual add, bias gradient, cast and scale.
//
// Contract: fp32 arithmetic whatever the storage type T (one rounding per stored result);
// fp32 parameter gradients accumulate (+=); results are bitwise independent of the OpenMP
// thread count (reductions use a fixed partition, summed in a fixed order).
#pragma once

#include <cstdint>

#include "kernels/isa.h"

namespace shardtrain::kernels {

SHARDTRAIN_ISA_BEGIN
// GPT-2's tanh GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <class T>
void gelu_forward(T* out, const T* x, int64_t n);
// dx = dout * gelu'(x)  (overwrites dx; dx may alias dout).
template <class T>
void gelu_backward(T* dx, const T* x, const T* dout, int64_t n);

// SwiGLU (Llama's MLP activation): gu (rows, 2F) holds the gate projection in columns [0, F) and
// the up projection in [F, 2F) of each row; out (rows, F) = silu(gate) * up, silu(g) =
// g / (1 + e^-g).
template <class T>
void swiglu_forward(T* out, const T* gu, int64_t rows, int64_t ffn);
// dgu (rows, 2F) = [dout * up * silu'(gate) | dout * silu(gate)] (overwrites; dgu may not alias
// gu or dout).
template <class T>
void swiglu_backward(T* dgu, const T* gu, const T* dout, int64_t rows, int64_t ffn);

// out = a + b (out may alias a or b).
template <class T>
void residual_add(T* out, const T* a, const T* b, int64_t n);

// dbias (cols) += column sums of dout (rows, cols).
template <class T>
void bias_backward(float* dbias, const T* dout, int64_t rows, int64_t cols);

// x (rows, cols) += bias (cols): each element to_float(x) + to_float(bias[c]), rounded once to T.
template <class T>
void add_bias(T* x, const T* bias, int64_t rows, int64_t cols);

// acc[i] += x[i] (fp32).
void add_f32(float* acc, const float* x, int64_t n);

// sum over i of double(x[i])^2 (each square is exact in double, so only the additions round),
// added in one fixed order, which is the definition: x is cut into chunks of 2^16 elements;
// within a chunk, lane j (0..15) sums the elements i = j mod 16 in index order, then the 16
// lanes add in lane order; the chunk sums add in chunk order, from 0.0. The order depends on n
// alone (not on threads, ISA level or x's address), so it is bitwise the same wherever it runs.
double sum_squares(const float* x, int64_t n);
// sum over i of double(x[i]), sequentially in index order.
double sum_f32(const float* x, int64_t n);

// out = in converted (round to nearest even into 16-bit types).
template <class In, class Out>
void cast(Out* out, const In* in, int64_t n);

// x *= s.
template <class T>
void scale(T* x, float s, int64_t n);

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
