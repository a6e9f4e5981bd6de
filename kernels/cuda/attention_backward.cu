// attention_backward.cu — causal flash-attention backward on tensor cores; one source for nvcc
// and kernels/emu. Contract: kernels/attention.h (dqkv (B,T,3,H,D) overwritten with dQ | dK | dV),
// compared against kernels/cpu/attention.cpp's attention_backward.
//
// Why two kernels: FlashAttention-2 computes dK, dV per key tile and adds each key tile's share
// of dQ with float atomics — fast, but the sum order (and the bits) change run to run, and the
// op set promises determinism where the CPU contract is thread-count independent
// (kernels/cuda/ops.inc). So dQ gets its own pass, and every output has a single owner:
//  1. dq kernel, one block per (query tile, h, b), as forward: walks key tiles 0..diagonal,
//     recomputes S = Q K^T and P = exp2(S log2e/sqrt(D) - lse log2e) (no running max: lse is
//     known), dP = dO V^T, dS = P (dP - Drow), dQ += dS K. It first computes
//     Drow_i = dO_i . out_i for its rows (quad-reduced, fixed order) and writes it to the
//     workspace for pass 2.
//  2. dkv kernel, one block per (key tile, h, b): each warp owns 16 keys and walks the query
//     tiles diagonal..end, computing the transposed products directly: S^T = K Q^T, P^T,
//     dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - Drow), dK += dS^T Q.
// The price is recomputing S and dP once more (7 tile products instead of 5, i.e. 1.4x the
// tensor work of the atomic version); no float atomics, no extra dQ accumulator in memory.
//
// Fragments and tiles as in forward (attention_tiles.h): every product is mma.sync m16n8k16;
// an accumulator in C layout (P, dS, or their transposes) becomes the A operand of the next
// product register to register, rounded to the storage type (as in forward); the row sums
// of the chain (Drow, lse) stay fp32. Operands read as "B[k][n] = X[n][k]" are 32-bit pairs
// of an X row; those read as "B[k][n] = X[k][n]" are 16-bit elements of two consecutive rows.
// Rows and keys past T are zero in shared memory, and get lse = +inf (P = 0), so they add
// nothing; they are never stored.
#include <cmath>

#include "kernels/attention.h"
#include "kernels/cuda/attention_tiles.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

using namespace attention_tiles;  // NOLINT: the shared tile geometry and staging

// Shared memory per block: four 64-row tiles (Q, dO, K, V), rows padded.
template <class T, int D>
constexpr size_t smem_bytes() {
  return size_t(2 * kBr + 2 * kBc) * (D + kPad) * sizeof(T);
}

// B operand "B[k][n] = X[n][k]" for the 8-column tile n8 and 16-deep chunk k16 of a row-major
// shared tile X at `base`: a 32-bit pair of row 8 n8 + g (mma_b_coord gives k = row of B).
template <class T, int D>
ST_DEVICE void load_b_rows(uint32_t (&f)[2], const SharedSpan<T>& s, size_t base, int n8, int k16,
                           int lane) {
  ST_UNROLL
  for (int r = 0; r < 2; ++r) {
    const FragCoord p = mma_b_coord(lane, r, 0);
    f[r] = load_shared_pair(s, base + size_t(8 * n8 + p.col) * (D + kPad) + 16 * k16 + p.row);
  }
}

// B operand "B[k][n] = X[k][n]": elements (k, n) and (k + 1, n) of two consecutive rows.
template <class T, int D>
ST_DEVICE void load_b_cols(uint32_t (&f)[2], const SharedSpan<T>& s, size_t base, int n8, int k16,
                           int lane) {
  ST_UNROLL
  for (int r = 0; r < 2; ++r) {
    const FragCoord p = mma_b_coord(lane, r, 0);
    const size_t i = base + size_t(16 * k16 + p.row) * (D + kPad) + 8 * n8 + p.col;
    f[r] = pack_half2<T>(T(s[i]), T(s[i + D + kPad]));
  }
}

// A operand: rows 16 w .. 16 w + 15 of a row-major shared tile, 16-deep chunk k16.
template <class T, int D>
ST_DEVICE void load_a(uint32_t (&f)[4], const SharedSpan<T>& s, size_t base, int warp, int k16,
                      int lane) {
  ST_UNROLL
  for (int r = 0; r < 4; ++r) {
    const FragCoord p = mma_a_coord(lane, r, 0);
    f[r] = load_shared_pair(s, base + size_t(16 * warp + p.row) * (D + kPad) + 16 * k16 + p.col);
  }
}

// The A operand of a 16-column chunk c from a 16 x 64 accumulator in C layout (8-column tiles
// 2c and 2c+1), rounded to T.
template <class T>
ST_DEVICE void c_to_a(uint32_t (&f)[4], const float (&x)[kBc / 8][4], int c) {
  f[0] = pack_half2(from_float<T>(x[2 * c][0]), from_float<T>(x[2 * c][1]));
  f[1] = pack_half2(from_float<T>(x[2 * c][2]), from_float<T>(x[2 * c][3]));
  f[2] = pack_half2(from_float<T>(x[2 * c + 1][0]), from_float<T>(x[2 * c + 1][1]));
  f[3] = pack_half2(from_float<T>(x[2 * c + 1][2]), from_float<T>(x[2 * c + 1][3]));
}

ST_DEVICE void zero(float (&x)[4]) { x[0] = x[1] = x[2] = x[3] = 0.0f; }

// ---- Pass 1: dQ (and Drow) ------------------------------------------------------------------

template <class T, int D>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(T* __restrict__ dqkv, float* __restrict__ drow_out,
                                 const T* __restrict__ dout, const T* __restrict__ qkv,
                                 const T* __restrict__ out, const float* __restrict__ lse, int Tn,
                                 int H, float scale_log2, float scale, bool aligned) {
  constexpr int kLd = D + kPad;
  ST_DYNAMIC_SHARED(T, smem);
  const size_t sq = 0, sdo = size_t(kBr) * kLd, sk = 2 * sdo, sv = sk + size_t(kBc) * kLd;
  const int b = int(blockIdx.z), h = int(blockIdx.y), bh = b * H + h;
  const int q0 = int(gridDim.x - 1 - blockIdx.x) * kBr;  // longest query tiles first
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  const int g = lane >> 2, t = lane & 3;
  const long long stride = 3LL * H * D, ostride = (long long)H * D;
  const T* q_src = qkv + (long long)b * Tn * stride + (long long)h * D;
  const T* k_src = q_src + ostride;
  const T* v_src = k_src + ostride;
  const T* do_src = dout + (long long)b * Tn * ostride + (long long)h * D;
  const T* o_src = out + (long long)b * Tn * ostride + (long long)h * D;
  const int row_lo = q0 + 16 * warp + g, row_hi = row_lo + 8;

  // 1. Q, dO and out tiles (out in the K slot, only for Drow); Drow = dO . out per row, each
  // lane summing its columns 8n + 2t, 8n + 2t + 1, then the quad in a fixed order.
  stage_tile<T, D>(smem, sq, q_src, stride, q0, Tn, aligned);
  stage_tile<T, D>(smem, sdo, do_src, ostride, q0, Tn, aligned);
  stage_tile<T, D>(smem, sk, o_src, ostride, q0, Tn, aligned);
  __syncthreads();
  float d_lo = 0.0f, d_hi = 0.0f;
  ST_UNROLL
  for (int n = 0; n < D / 8; ++n) {
    ST_UNROLL
    for (int e = 0; e < 2; ++e) {
      const size_t lo = size_t(16 * warp + g) * kLd + 8 * n + 2 * t + e, hi = lo + 8 * kLd;
      d_lo += to_float(T(smem[sdo + lo])) * to_float(T(smem[sk + lo]));
      d_hi += to_float(T(smem[sdo + hi])) * to_float(T(smem[sk + hi]));
    }
  }
  ST_UNROLL
  for (int x = 1; x <= 2; x <<= 1) {
    d_lo += __shfl_xor_sync(kFullMask, d_lo, x);
    d_hi += __shfl_xor_sync(kFullMask, d_hi, x);
  }
  const float* lse_bh = lse + (long long)bh * Tn;                        // (T)
  const float l2_lo = row_lo < Tn ? lse_bh[row_lo] * kLog2e : INFINITY;  // +inf: P = 0
  const float l2_hi = row_hi < Tn ? lse_bh[row_hi] * kLog2e : INFINITY;
  if (t == 0) {
    if (row_lo < Tn) drow_out[(long long)bh * Tn + row_lo] = d_lo;
    if (row_hi < Tn) drow_out[(long long)bh * Tn + row_hi] = d_hi;
  }

  float dq[D / 8][4];
  ST_UNROLL
  for (int n = 0; n < D / 8; ++n) zero(dq[n]);

  // 2. Key tiles up to the diagonal.
  const int q_end = q0 + kBr < Tn ? q0 + kBr : Tn;
  for (int j0 = 0; j0 < q_end; j0 += kBc) {
    __syncthreads();  // the previous tile (or out, for Drow) is no longer read
    stage_tile<T, D>(smem, sk, k_src, stride, j0, Tn, aligned);
    stage_tile<T, D>(smem, sv, v_src, stride, j0, Tn, aligned);
    __syncthreads();

    // 2a. S = Q K^T and dP = dO V^T, 16 x 64 per warp.
    float s[kBc / 8][4], dp[kBc / 8][4];
    ST_UNROLL
    for (int n = 0; n < kBc / 8; ++n) {
      zero(s[n]);
      zero(dp[n]);
      ST_UNROLL
      for (int kc = 0; kc < D / 16; ++kc) {
        uint32_t a[4], bf[2];
        load_a<T, D>(a, smem, sq, warp, kc, lane);
        load_b_rows<T, D>(bf, smem, sk, n, kc, lane);
        mma_m16n8k16<T>(s[n], a, bf, s[n]);
        load_a<T, D>(a, smem, sdo, warp, kc, lane);
        load_b_rows<T, D>(bf, smem, sv, n, kc, lane);
        mma_m16n8k16<T>(dp[n], a, bf, dp[n]);
      }
    }
    // 2b. P = exp2(s log2e/sqrt(D) - lse log2e), 0 for keys after the row; dS = P (dP - Drow).
    // Only the diagonal tile (j0 == q0) has keys after a row or past T (as in the forward).
    const bool diagonal = j0 == q0;
    ST_UNROLL
    for (int n = 0; n < kBc / 8; ++n) {
      ST_UNROLL
      for (int r = 0; r < 4; ++r) {
        const int key = j0 + 8 * n + 2 * t + (r & 1);
        const int row = r < 2 ? row_lo : row_hi;
        const float p =
            !diagonal || key <= row ? exp2f(s[n][r] * scale_log2 - (r < 2 ? l2_lo : l2_hi)) : 0.0f;
        s[n][r] = p * (dp[n][r] - (r < 2 ? d_lo : d_hi));
      }
    }
    // 2c. dQ += dS K.
    ST_UNROLL
    for (int c = 0; c < kBc / 16; ++c) {
      uint32_t a[4];
      c_to_a<T>(a, s, c);
      ST_UNROLL
      for (int n = 0; n < D / 8; ++n) {
        uint32_t bf[2];
        load_b_cols<T, D>(bf, smem, sk, n, c, lane);
        mma_m16n8k16<T>(dq[n], a, bf, dq[n]);
      }
    }
  }

  // 3. dQ = scale * sum, into part 0 of dqkv.
  T* dq_lo = dqkv + ((long long)b * Tn + row_lo) * stride + (long long)h * D;  // (D)
  T* dq_hi = dq_lo + 8 * stride;
  ST_UNROLL
  for (int n = 0; n < D / 8; ++n) {
    const int d = 8 * n + 2 * t;
    if (row_lo < Tn) {
      dq_lo[d] = from_float<T>(dq[n][0] * scale);
      dq_lo[d + 1] = from_float<T>(dq[n][1] * scale);
    }
    if (row_hi < Tn) {
      dq_hi[d] = from_float<T>(dq[n][2] * scale);
      dq_hi[d + 1] = from_float<T>(dq[n][3] * scale);
    }
  }
}

// ---- Pass 2: dK, dV ---------------------------------------------------------------------------

template <class T, int D>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkv_kernel(T* __restrict__ dqkv, const float* __restrict__ drow,
                                  const T* __restrict__ dout, const T* __restrict__ qkv,
                                  const float* __restrict__ lse, int Tn, int H, float scale_log2,
                                  float scale, bool aligned) {
  constexpr int kLd = D + kPad;
  ST_DYNAMIC_SHARED(T, smem);
  ST_SHARED(float, s_lse2, kBr);  // lse * log2e of the query tile's rows (+inf past T)
  ST_SHARED(float, s_drow, kBr);  // Drow of the query tile's rows
  const size_t sq = 0, sdo = size_t(kBr) * kLd, sk = 2 * sdo, sv = sk + size_t(kBc) * kLd;
  const int b = int(blockIdx.z), h = int(blockIdx.y), bh = b * H + h;
  const int j0 = int(blockIdx.x) * kBc;  // key tile 0 sees the most query tiles: first
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  const int g = lane >> 2, t = lane & 3;
  const long long stride = 3LL * H * D, ostride = (long long)H * D;
  const T* q_src = qkv + (long long)b * Tn * stride + (long long)h * D;
  const T* k_src = q_src + ostride;
  const T* v_src = k_src + ostride;
  const T* do_src = dout + (long long)b * Tn * ostride + (long long)h * D;
  const int key_lo = j0 + 16 * warp + g, key_hi = key_lo + 8;  // this thread's two keys

  // 1. This block's K and V tiles, for the whole query loop.
  stage_tile<T, D>(smem, sk, k_src, stride, j0, Tn, aligned);
  stage_tile<T, D>(smem, sv, v_src, stride, j0, Tn, aligned);
  float dk[D / 8][4], dv[D / 8][4];
  ST_UNROLL
  for (int n = 0; n < D / 8; ++n) {
    zero(dk[n]);
    zero(dv[n]);
  }

  // 2. Query tiles from the diagonal to the end.
  for (int i0 = j0; i0 < Tn; i0 += kBr) {
    __syncthreads();  // the previous query tile is no longer read
    stage_tile<T, D>(smem, sq, q_src, stride, i0, Tn, aligned);
    stage_tile<T, D>(smem, sdo, do_src, ostride, i0, Tn, aligned);
    for (int r = int(threadIdx.x); r < kBr; r += kThreads) {
      const bool in = i0 + r < Tn;
      s_lse2[size_t(r)] = in ? lse[(long long)bh * Tn + i0 + r] * kLog2e : INFINITY;
      s_drow[size_t(r)] = in ? drow[(long long)bh * Tn + i0 + r] : 0.0f;
    }
    __syncthreads();

    // 2a. S^T = K Q^T (16 keys x 64 queries per warp); P^T, 0 for queries before the key: only
    // in the diagonal tile (i0 == j0; queries past T have lse = inf, so P = 0 for them anyway).
    const bool diagonal = i0 == j0;
    float p[kBc / 8][4];
    ST_UNROLL
    for (int n = 0; n < kBr / 8; ++n) {
      zero(p[n]);
      ST_UNROLL
      for (int kc = 0; kc < D / 16; ++kc) {
        uint32_t a[4], bf[2];
        load_a<T, D>(a, smem, sk, warp, kc, lane);
        load_b_rows<T, D>(bf, smem, sq, n, kc, lane);
        mma_m16n8k16<T>(p[n], a, bf, p[n]);
      }
      ST_UNROLL
      for (int r = 0; r < 4; ++r) {
        const int col = 8 * n + 2 * t + (r & 1);
        const int key = r < 2 ? key_lo : key_hi;
        p[n][r] =
            !diagonal || i0 + col >= key ? exp2f(p[n][r] * scale_log2 - s_lse2[size_t(col)]) : 0.0f;
      }
    }
    // 2b. dV += P^T dO.
    ST_UNROLL
    for (int c = 0; c < kBr / 16; ++c) {
      uint32_t a[4];
      c_to_a<T>(a, p, c);
      ST_UNROLL
      for (int n = 0; n < D / 8; ++n) {
        uint32_t bf[2];
        load_b_cols<T, D>(bf, smem, sdo, n, c, lane);
        mma_m16n8k16<T>(dv[n], a, bf, dv[n]);
      }
    }
    // 2c. dP^T = V dO^T, then dS^T = P^T (dP^T - Drow) in place of P^T.
    ST_UNROLL
    for (int n = 0; n < kBr / 8; ++n) {
      float dp[4];
      zero(dp);
      ST_UNROLL
      for (int kc = 0; kc < D / 16; ++kc) {
        uint32_t a[4], bf[2];
        load_a<T, D>(a, smem, sv, warp, kc, lane);
        load_b_rows<T, D>(bf, smem, sdo, n, kc, lane);
        mma_m16n8k16<T>(dp, a, bf, dp);
      }
      ST_UNROLL
      for (int r = 0; r < 4; ++r) {
        p[n][r] = p[n][r] * (dp[r] - s_drow[size_t(8 * n + 2 * t + (r & 1))]);
      }
    }
    // 2d. dK += dS^T Q.
    ST_UNROLL
    for (int c = 0; c < kBr / 16; ++c) {
      uint32_t a[4];
      c_to_a<T>(a, p, c);
      ST_UNROLL
      for (int n = 0; n < D / 8; ++n) {
        uint32_t bf[2];
        load_b_cols<T, D>(bf, smem, sq, n, c, lane);
        mma_m16n8k16<T>(dk[n], a, bf, dk[n]);
      }
    }
  }

  // 3. dK = scale * sum into part 1, dV into part 2, keys < T.
  T* dk_lo = dqkv + ((long long)b * Tn + key_lo) * stride + ostride + (long long)h * D;  // (D)
  T* dk_hi = dk_lo + 8 * stride;
  ST_UNROLL
  for (int n = 0; n < D / 8; ++n) {
    const int d = 8 * n + 2 * t;
    if (key_lo < Tn) {
      dk_lo[d] = from_float<T>(dk[n][0] * scale);
      dk_lo[d + 1] = from_float<T>(dk[n][1] * scale);
      dk_lo[ostride + d] = from_float<T>(dv[n][0]);
      dk_lo[ostride + d + 1] = from_float<T>(dv[n][1]);
    }
    if (key_hi < Tn) {
      dk_hi[d] = from_float<T>(dk[n][2] * scale);
      dk_hi[d + 1] = from_float<T>(dk[n][3] * scale);
      dk_hi[ostride + d] = from_float<T>(dv[n][2]);
      dk_hi[ostride + d + 1] = from_float<T>(dv[n][3]);
    }
  }
}

template <class T, int D>
Status launch_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse,
                       float* workspace, AttentionShape s, Stream stream) {
  const unsigned tiles = unsigned((s.seq + kBr - 1) / kBr);
  const float scale = 1.0f / std::sqrt(float(D)), scale_log2 = kLog2e * scale;
  const bool aligned = is_aligned16(qkv) && is_aligned16(dout) && is_aligned16(out);
  const dim3 grid(tiles, unsigned(s.heads), unsigned(s.batch));
  Status e = launch(attention_backward_dq_kernel<T, D>, grid, dim3(kThreads), smem_bytes<T, D>(),
                    stream, dqkv, workspace, dout, qkv, out, lse, int(s.seq), int(s.heads),
                    scale_log2, scale, aligned);
  if (e != kOk) return e;
  return launch(attention_backward_dkv_kernel<T, D>, grid, dim3(kThreads), smem_bytes<T, D>(),
                stream, dqkv, workspace, dout, qkv, lse, int(s.seq), int(s.heads), scale_log2,
                scale, aligned);
}

}  // namespace

template <class T>
Status attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse,
                          float* workspace, AttentionShape s, Stream stream) {
  if (s.batch * s.heads == 0 || s.seq == 0) return kOk;
  if (s.batch > 65535 || s.heads > 65535 || s.seq > 0x7fffffffLL) {
    return attention_tiles::unsupported("attention_backward", "grid too large");
  }
  if (s.head_dim == 64)
    return launch_backward<T, 64>(dqkv, dout, qkv, out, lse, workspace, s, stream);
  if (s.head_dim == 128) {
    return launch_backward<T, 128>(dqkv, dout, qkv, out, lse, workspace, s, stream);
  }
  return attention_tiles::unsupported("attention_backward", "head_dim must be 64 or 128");
}

template Status attention_backward<BFloat16>(BFloat16*, const BFloat16*, const BFloat16*,
                                             const BFloat16*, const float*, float*, AttentionShape,
                                             Stream);
template Status attention_backward<Half>(Half*, const Half*, const Half*, const Half*, const float*,
                                         float*, AttentionShape, Stream);

}  // namespace shardtrain::kernels::ST_GPU_NS
