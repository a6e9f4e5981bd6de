// attention.cpp — CPU causal self-attention, flash-style forward and backward.
//
// One OpenMP iteration per (b, h) pair (backward: per (b, key/value head), its query heads in
// order), static schedule: each is computed start to finish by one thread in a fixed order, so
// the result is bitwise the same for any thread count. Grouped-query attention (kernels/
// attention.h) only changes which K/V rows a query head reads and where dK/dV are summed. A
// pair's Q, K, V (and dout) rows, strided inside qkv, are first gathered into contiguous fp32
// scratch — widened once for 16-bit storage — and K (and V in backward) also transposed to
// (D, Tp), Tp = T rounded up to the key tile, zero-padded. All five products (S = Q K^T,
// O += P V; backward also dP = dO V^T, dQ += dS K, dK += dS^T Q, dV += P^T dO) then go through
// one register-blocked micro-kernel (gemm_acc): an accumulator block (4 rows x 64 columns with
// AVX-512, 3 x 32 with AVX2) held in registers over the whole inner dimension, vectorised
// along the contiguous output row, so no sum is reassociated (no -ffast-math needed) and each
// loaded row of B feeds one FMA per row of the block. The
// softmax is online: per query row a running max m, sum l and output accumulator, rescaled by
// exp(m_old - m_new) when a key tile raises the max; the T x T score matrix never exists
// (scratch per pair is a few T x D arrays plus two kQueryTile x kKeyTile tiles). Masked keys
// get score -inf, i.e. p exactly 0, so the causal products may run a row block over the keys
// its last row sees: the extra terms are exact zeros. Backward recomputes
// p = exp(s * scale - lse) with the same score code as forward, accumulates dQ, dK, dV in fp32
// scratch per pair, query tile by query tile in order, and writes them into dqkv once.
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "kernels/cpu/vec_util.h"

namespace shardtrain::kernels {
SHARDTRAIN_ISA_BEGIN

using cpu::exp_f32;
using cpu::scratch;

namespace {

// 64 keys = one 256-byte score row (4 zmm / 8 ymm accumulators); 32 query rows share each
// loaded K^T / V tile. The query tile divides the key tile, so every row of a query tile sees
// at least one key of every key tile it visits (the diagonal tile starts at or before it).
constexpr int64_t kKeyTile = 64;
constexpr int64_t kQueryTile = 32;
static_assert(kKeyTile % kQueryTile == 0);
// The micro-kernel's register block: kRowBlock output rows x up to kWideChunk columns of fp32
// accumulators, each loaded row of B feeding kRowBlock FMAs. AVX-512: 4 x 64 = 16 of the 32 zmm.
// AVX2 has 16 ymm, so 3 x 32 = 12 accumulators plus a broadcast A and the B loads fit; 4 x 64
// there spills every accumulator (bench/attention_bench at the step's shape, AMD EPYC capped at
// AVX2, 2 threads: forward 3.9 -> 2.6 ms, backward 8.4 -> 4.9 ms; 4 x 32 and 2 x 32 spill or
// stall too, ~3.5 / 7.5 ms).
#if defined(SHARDTRAIN_CPU_ISA_AVX512) || defined(__AVX512F__)
constexpr int64_t kRowBlock = 4;
constexpr int64_t kWideChunk = 64;
#else
constexpr int64_t kRowBlock = 3;
constexpr int64_t kWideChunk = 32;
#endif

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Element offset of row t, part (0 = Q, 1 = K, 2 = V), head h (a query head for part 0, a
// key/value head otherwise) inside a (B,T,H+2K,D) tensor.
inline int64_t qkv_offset(const AttentionShape& s, int64_t b, int64_t t, int64_t part, int64_t h) {
  const int64_t first = part == 0 ? 0 : s.heads + (part - 1) * kv_heads_of(s);
  return (b * s.seq + t) * qkv_row_numel(s) + (first + h) * s.head_dim;
}
// Element offset of row t, head h inside a (B,T,H,D) tensor.
inline int64_t out_offset(const AttentionShape& s, int64_t b, int64_t t, int64_t h) {
  return ((b * s.seq + t) * s.heads + h) * s.head_dim;
}

inline int64_t padded_seq(int64_t T) { return (T + kKeyTile - 1) / kKeyTile * kKeyTile; }

// Gathers rows t = 0..T-1 of one head from a strided tensor into dst (T,D) in fp32, and, if
// dst_t is given, also transposed into dst_t (D,Tp) with the padding columns T..Tp-1 zeroed.
template <class T>
void gather_rows(float* dst,    // (T,D)
                 float* dst_t,  // (D,Tp) or null
                 const T* src, int64_t row_stride, int64_t seq, int64_t D) {
  for (int64_t t = 0; t < seq; ++t) cpu::widen(dst + t * D, src + t * row_stride, D);
  if (dst_t == nullptr) return;
  // Transpose in blocks of 16 rows: the 16 source lines a block reads stay in L1 across all d.
  const int64_t Tp = padded_seq(seq);
  for (int64_t t0 = 0; t0 < seq; t0 += 16) {
    const int64_t n = std::min<int64_t>(16, seq - t0);
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t t = 0; t < n; ++t) dst_t[d * Tp + t0 + t] = dst[(t0 + t) * D + d];
    }
  }
  for (int64_t d = 0; d < D; ++d) std::fill(dst_t + d * Tp + seq, dst_t + (d + 1) * Tp, 0.0f);
}

// A matrix operand read element by element: (r, k) lives at p[r * row + k * col]. Lets the
// transposed tiles P^T and dS^T be read in place from the row-major (query, key) tiles.
struct View {
  const float* p;
  int64_t row, col;
};

// C[r][0 : kW] += sum over k in [k0, k1) of A(r, k) * B[k][0 : kW], for kR rows r. The kR x kW
// partial sums are a fixed-size local the compiler keeps in registers across the whole k loop
// (an axpy per k would reload and store C every term and serialise on store-to-load
// forwarding). They start from the first term, not from C or zero: GCC turns either
// initialisation into a memcpy / memset call through the stack. Terms add in k order, and the
// block's sum is added onto C once at the end.
template <int64_t kR, int64_t kW>
inline void block_kernel(float* C, int64_t ldc, View A, const float* B, int64_t ldb, int64_t k0,
                         int64_t k1) {
  if (k0 >= k1) return;
  float acc[kR][kW];
  for (int64_t r = 0; r < kR; ++r) {
    const float a = A.p[r * A.row + k0 * A.col];
    for (int64_t w = 0; w < kW; ++w) acc[r][w] = a * B[k0 * ldb + w];
  }
  for (int64_t k = k0 + 1; k < k1; ++k) {
    const float* b = B + k * ldb;
    for (int64_t r = 0; r < kR; ++r) {
      const float a = A.p[r * A.row + k * A.col];
      for (int64_t w = 0; w < kW; ++w) acc[r][w] += a * b[w];
    }
  }
  for (int64_t r = 0; r < kR; ++r) {
    for (int64_t w = 0; w < kW; ++w) C[r * ldc + w] += acc[r][w];
  }
}

// kR rows of C across all N columns, in chunks of kWideChunk, 32, 16, then single columns.
template <int64_t kR>
inline void row_block(float* C, int64_t ldc, int64_t N, View A, const float* B, int64_t ldb,
                      int64_t k0, int64_t k1) {
  int64_t n = 0;
  for (; n + kWideChunk <= N; n += kWideChunk)
    block_kernel<kR, kWideChunk>(C + n, ldc, A, B + n, ldb, k0, k1);
  if constexpr (kWideChunk > 32) {
    for (; n + 32 <= N; n += 32) block_kernel<kR, 32>(C + n, ldc, A, B + n, ldb, k0, k1);
  }
  for (; n + 16 <= N; n += 16) block_kernel<kR, 16>(C + n, ldc, A, B + n, ldb, k0, k1);
  for (; n < N; ++n) block_kernel<kR, 1>(C + n, ldc, A, B + n, ldb, k0, k1);
}

// C (rows, N) += A (rows, K) . B (K, N): the one product behind all five attention matmuls.
// k_range(first_row, last_row) gives the [k0, k1) a block of rows needs; the causal products
// pass the span that the block's rows can see, and the A entries a row cannot see are exact
// zeros (masked probabilities), whose terms leave the sums unchanged.
template <class KRange>
inline void gemm_acc(float* C,  // (rows, ldc)
                     int64_t ldc, int64_t rows, int64_t N, View A,
                     const float* B,  // (K, ldb)
                     int64_t ldb, KRange k_range) {
  int64_t r = 0;
  for (; r + kRowBlock <= rows; r += kRowBlock) {
    const auto [k0, k1] = k_range(r, r + kRowBlock - 1);
    row_block<kRowBlock>(C + r * ldc, ldc, N, {A.p + r * A.row, A.row, A.col}, B, ldb, k0, k1);
  }
  for (; r < rows; ++r) {
    const auto [k0, k1] = k_range(r, r);
    row_block<1>(C + r * ldc, ldc, N, {A.p + r * A.row, A.row, A.col}, B, ldb, k0, k1);
  }
}

// dst (n) = src (n) rounded to the storage type.
template <class T>
inline void store_row(T* dst, const float* src, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, size_t(n) * sizeof(float));
  } else {
    cpu::narrow(dst, src, n);
  }
}

// Number of keys of the tile starting at j0 that query row i may see (causal: keys <= i).
inline int64_t visible(int64_t i, int64_t j0) { return std::min(kKeyTile, i + 1 - j0); }

// Score columns a query tile ending before row `end` needs from the key tile at j0: the keys any
// of its rows can see, rounded up to a 16-float register chunk (at most kKeyTile, a multiple of
// 16). Only the diagonal tile is narrower than kKeyTile; columns past the width are never read.
inline int64_t tile_width(int64_t end, int64_t j0) {
  return (std::min(kKeyTile, end - j0) + 15) / 16 * 16;
}

}  // namespace

template <class T>
void attention_forward(T* out, float* lse, const T* qkv, AttentionShape s) {
  const int64_t B = s.batch, Tn = s.seq, H = s.heads, D = s.head_dim;
  const int64_t Tp = padded_seq(Tn), stride = qkv_row_numel(s), group = H / kv_heads_of(s);
  const float scale = 1.0f / std::sqrt(float(D));
  const int64_t pairs = B * H;
#pragma omp parallel for schedule(static) if (pairs > 1)
  for (int64_t bh = 0; bh < pairs; ++bh) {
    const int64_t b = bh / H, h = bh % H, g = h / group;  // g: the key/value head
    // Per-thread scratch, carved from one buffer.
    float* base = scratch(3 * Tp * D + kQueryTile * (kKeyTile + D + 2), 0);
    float* q = base;                          // (T,D)
    float* kt = q + Tp * D;                   // (D,Tp), columns >= T zero
    float* v = kt + Tp * D;                   // (T,D)
    float* sc = v + Tp * D;                   // (kQueryTile,kKeyTile) scores, then P
    float* acc = sc + kQueryTile * kKeyTile;  // (kQueryTile,D) unnormalised output
    float* m = acc + kQueryTile * D;          // (kQueryTile) running max
    float* l = m + kQueryTile;                // (kQueryTile) running sum
    // 1. Gather this pair's Q, K (transposed) and V in fp32; K's rows are staged in v.
    gather_rows(v, kt, qkv + qkv_offset(s, b, 0, 1, g), stride, Tn, D);
    gather_rows(q, nullptr, qkv + qkv_offset(s, b, 0, 0, h), stride, Tn, D);
    gather_rows(v, nullptr, qkv + qkv_offset(s, b, 0, 2, g), stride, Tn, D);

    for (int64_t i0 = 0; i0 < Tn; i0 += kQueryTile) {
      const int64_t nq = std::min(kQueryTile, Tn - i0);
      std::fill(acc, acc + nq * D, 0.0f);
      std::fill(m, m + nq, kNegInf);
      std::fill(l, l + nq, 0.0f);
      // 2. Walk the key tiles up to the one holding this query tile's last row. The tiles are
      // aligned and kQueryTile divides kKeyTile, so j0 <= i0: every row sees >= 1 key of each.
      for (int64_t j0 = 0; j0 < i0 + nq; j0 += kKeyTile) {
        // 2a. Raw scores Q_i K_j^T.
        const int64_t width = tile_width(i0 + nq, j0);
        std::fill(sc, sc + nq * kKeyTile, 0.0f);
        gemm_acc(sc, kKeyTile, nq, width, {q + i0 * D, D, 1}, kt + j0, Tp,
                 [D](int64_t, int64_t) { return std::pair<int64_t, int64_t>(0, D); });
        for (int64_t r = 0; r < nq; ++r) {
          const int64_t cnt = visible(i0 + r, j0);
          float* p = sc + r * kKeyTile;
          // 2b. Scale; mask keys after i (the padding past T is after i too) to -inf.
          float mt = kNegInf;
#pragma omp simd reduction(max : mt)
          for (int64_t j = 0; j < width; ++j) {
            p[j] = j < cnt ? p[j] * scale : kNegInf;
            mt = p[j] > mt ? p[j] : mt;
          }
          // 2c. Online softmax: new max, rescale the old sum and accumulator by
          // exp(m_old - m_new) (0 on the first tile, where m_old = -inf); P = exp(s - m_new),
          // exactly 0 where masked.
          const float m_new = std::max(m[r], mt);
          const float alpha = exp_f32(m[r] - m_new);
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < width; ++j) {
            p[j] = exp_f32(p[j] - m_new);
            sum += p[j];
          }
          m[r] = m_new;
          l[r] = l[r] * alpha + sum;
          if (alpha != 1.0f) {
            float* o = acc + r * D;
            for (int64_t d = 0; d < D; ++d) o[d] *= alpha;
          }
        }
        // 2d. acc += P V_j over the keys the block's last row can see.
        gemm_acc(acc, D, nq, D, {sc, kKeyTile, 1}, v + j0 * D, D, [=](int64_t, int64_t last) {
          return std::pair<int64_t, int64_t>(0, visible(i0 + last, j0));
        });
      }
      // 3. Normalise, store the rows and their logsumexp.
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t i = i0 + r;
        float* o = acc + r * D;
        const float inv = 1.0f / l[r];
        for (int64_t d = 0; d < D; ++d) o[d] *= inv;
        store_row(out + out_offset(s, b, i, h), o, D);
        lse[bh * Tn + i] = m[r] + std::log(l[r]);
      }
    }
  }
}

template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse,
                        AttentionShape s) {
  const int64_t B = s.batch, Tn = s.seq, H = s.heads, D = s.head_dim, K = kv_heads_of(s);
  const int64_t Tp = padded_seq(Tn), stride = qkv_row_numel(s), ostride = H * D, group = H / K;
  const float scale = 1.0f / std::sqrt(float(D));
  // One iteration per (b, key/value head): it owns dK and dV, summed over its query heads in
  // head order (with K = H, one query head: the multi-head computation).
  const int64_t pairs = B * K;
#pragma omp parallel for schedule(static) if (pairs > 1)
  for (int64_t bg = 0; bg < pairs; ++bg) {
    const int64_t b = bg / K, g = bg % K;
    float* base = scratch(9 * Tp * D + Tp + 2 * kQueryTile * kKeyTile, 0);
    float* q = base;                          // (T,D)
    float* k = q + Tp * D;                    // (T,D)
    float* kt = k + Tp * D;                   // (D,Tp), columns >= T zero
    float* vt = kt + Tp * D;                  // (D,Tp), columns >= T zero
    float* dout_f = vt + Tp * D;              // (T,D)
    float* dq = dout_f + Tp * D;              // (T,D)
    float* dk = dq + Tp * D;                  // (T,D)
    float* dv = dk + Tp * D;                  // (T,D)
    float* tmp = dv + Tp * D;                 // (T,D) staging for V, then out rows
    float* drow = tmp + Tp * D;               // (T) dout_i . out_i
    float* pt = drow + Tp;                    // (kQueryTile,kKeyTile) scores, then P
    float* dst = pt + kQueryTile * kKeyTile;  // (kQueryTile,kKeyTile) dP, then dS * scale

    // 1. Gather K (+ transposed) and V (transposed only) of the key/value head; then per query
    //    head Q, dout, and Drow_i = dout_i . out_i.
    gather_rows(k, kt, qkv + qkv_offset(s, b, 0, 1, g), stride, Tn, D);
    gather_rows(tmp, vt, qkv + qkv_offset(s, b, 0, 2, g), stride, Tn, D);
    std::fill(dk, dk + 2 * Tp * D, 0.0f);  // dk, dv are adjacent
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      const float* row_lse = lse + (b * H + h) * Tn;  // (T)
      gather_rows(q, nullptr, qkv + qkv_offset(s, b, 0, 0, h), stride, Tn, D);
      gather_rows(dout_f, nullptr, dout + out_offset(s, b, 0, h), ostride, Tn, D);
      gather_rows(tmp, nullptr, out + out_offset(s, b, 0, h), ostride, Tn, D);
      for (int64_t i = 0; i < Tn; ++i) {
        const float* gr = dout_f + i * D;
        const float* o = tmp + i * D;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t d = 0; d < D; ++d) sum += gr[d] * o[d];
        drow[i] = sum;
      }
      std::fill(dq, dq + Tp * D, 0.0f);

      const auto all_d = [D](int64_t, int64_t) { return std::pair<int64_t, int64_t>(0, D); };
      for (int64_t i0 = 0; i0 < Tn; i0 += kQueryTile) {
        const int64_t nq = std::min(kQueryTile, Tn - i0);
        for (int64_t j0 = 0; j0 < i0 + nq; j0 += kKeyTile) {
          // 2. Recompute the raw scores exactly as forward did, and dP = dO_i V_j^T.
          const int64_t width = tile_width(i0 + nq, j0);
          std::fill(pt, pt + 2 * kQueryTile * kKeyTile, 0.0f);  // pt and dst are adjacent
          gemm_acc(pt, kKeyTile, nq, width, {q + i0 * D, D, 1}, kt + j0, Tp, all_d);
          gemm_acc(dst, kKeyTile, nq, width, {dout_f + i0 * D, D, 1}, vt + j0, Tp, all_d);
          // 3. P = exp(s * scale - lse), exactly 0 where masked; dS * scale = P (dP - Drow) scale.
          for (int64_t r = 0; r < nq; ++r) {
            const int64_t i = i0 + r, cnt = visible(i, j0);
            const float li = row_lse[i], di = drow[i];
            float* p = pt + r * kKeyTile;
            float* ds = dst + r * kKeyTile;
#pragma omp simd
            for (int64_t j = 0; j < width; ++j) {
              const float pj = j < cnt ? exp_f32(p[j] * scale - li) : 0.0f;
              p[j] = pj;
              ds[j] = pj * (ds[j] - di) * scale;
            }
          }
          // 4. dQ_i += dS K_j over the keys the block's last query row can see.
          gemm_acc(dq + i0 * D, D, nq, D, {dst, kKeyTile, 1}, k + j0 * D, D,
                   [=](int64_t, int64_t last) {
                     return std::pair<int64_t, int64_t>(0, visible(i0 + last, j0));
                   });
          // 5. dV_j += P^T dO_i and dK_j += dS^T Q_i over the query rows that see the block's
          // first key (rows i >= key), read transposed in place.
          const int64_t nk = std::min(kKeyTile, i0 + nq - j0);
          const auto seen_by = [=](int64_t first, int64_t) {
            return std::pair<int64_t, int64_t>(std::max<int64_t>(0, j0 + first - i0), nq);
          };
          gemm_acc(dv + j0 * D, D, nk, D, {pt, 1, kKeyTile}, dout_f + i0 * D, D, seen_by);
          gemm_acc(dk + j0 * D, D, nk, D, {dst, 1, kKeyTile}, q + i0 * D, D, seen_by);
        }
      }
      // 6. This query head's dQ into dqkv (overwrite).
      for (int64_t t = 0; t < Tn; ++t) store_row(dqkv + qkv_offset(s, b, t, 0, h), dq + t * D, D);
    }
    // 7. dK | dV of the key/value head, summed over its query heads (overwrite).
    for (int64_t part = 1; part < 3; ++part) {
      const float* src = dk + (part - 1) * Tp * D;
      for (int64_t t = 0; t < Tn; ++t) {
        store_row(dqkv + qkv_offset(s, b, t, part, g), src + t * D, D);
      }
    }
  }
}

template <class T>
void attention_decode(T* out, const T* q, int64_t q_stride, const T* k, const T* v,
                      int64_t k_stride, AttentionShape s, int64_t pos, int64_t n) {
  const int64_t H = s.heads, D = s.head_dim, group = H / kv_heads_of(s);
  const float scale = 1.0f / std::sqrt(float(D));
  const int64_t pairs = n * H;
#pragma omp parallel for schedule(static) if (pairs > 1)
  for (int64_t ih = 0; ih < pairs; ++ih) {
    const int64_t i = ih / H, h = ih % H, g = h / group, keys = pos + i + 1;
    float* base = scratch(2 * D + keys, 0);
    float* qf = base;     // (D) the query row
    float* acc = qf + D;  // (D) the output accumulator
    float* sc = acc + D;  // (keys) scores, then exp
    cpu::widen(qf, q + i * q_stride + h * D, D);
    float m = kNegInf;
    for (int64_t j = 0; j < keys; ++j) {
      const T* kr = k + j * k_stride + g * D;
      float dot = 0.0f;
      for (int64_t d = 0; d < D; ++d) dot += qf[d] * to_float(kr[d]);
      sc[j] = dot * scale;
      m = std::max(m, sc[j]);
    }
    float sum = 0.0f;
    std::fill(acc, acc + D, 0.0f);
    for (int64_t j = 0; j < keys; ++j) {
      const float p = exp_f32(sc[j] - m);
      sum += p;
      const T* vr = v + j * k_stride + g * D;
      for (int64_t d = 0; d < D; ++d) acc[d] += p * to_float(vr[d]);
    }
    const float inv = 1.0f / sum;
    for (int64_t d = 0; d < D; ++d) acc[d] *= inv;
    store_row(out + (i * H + h) * D, acc, D);
  }
}

#define ST_INSTANTIATE_ATTENTION(T)                                                     \
  template void attention_forward<T>(T*, float*, const T*, AttentionShape);             \
  template void attention_backward<T>(T*, const T*, const T*, const T*, const float*,   \
                                      AttentionShape);                                  \
  template void attention_decode<T>(T*, const T*, int64_t, const T*, const T*, int64_t, \
                                    AttentionShape, int64_t, int64_t);
ST_INSTANTIATE_ATTENTION(float)
ST_INSTANTIATE_ATTENTION(BFloat16)
ST_INSTANTIATE_ATTENTION(Half)
#undef ST_INSTANTIATE_ATTENTION

SHARDTRAIN_ISA_END
}  // namespace shardtrain::kernels
