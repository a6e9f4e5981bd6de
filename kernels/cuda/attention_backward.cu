// attention_backward.cu — causal flash-attention backward on tensor cores; one source for nvcc
// and kernels/emu. Contract: kernels/attention.h (dqkv (B,T,3,H,D) overwritten with dQ | dK | dV),
// compared against kernels/cpu/attention.cpp's attention_backward.
//
// The FlashAttention-2 work split, made deterministic. FlashAttention-2 gives each block one key
// tile j: K_j, V_j stay in shared memory and dK_j, dV_j in registers while the block walks the
// query tiles i >= j, computing per tile S^T = K Q^T, P^T, dV += P^T dO, dP^T = V dO^T,
// dS^T = P^T (dP^T - Drow), dK += dS^T Q and dQ_i += dS K_j: 5 tile products per (i, j) pair.
// It adds dQ_i with float atomics, so the sum order (and the bits) change run to run; the op
// set promises determinism (kernels/cuda/ops.inc). Here the key tiles add into dQ_i in a fixed
// order instead, diagonal first (j = i, i-1, ..., 0): an fp32 accumulator per query tile in the
// workspace, read-modify-written by one block at a time, handed on through a per-tile counter
// (launch.h: block_publish / block_wait). Key tile j = 0 adds last and writes dQ itself.
//
// Why that order costs (almost) no waiting: block j reaches query tile i after i - j tiles of
// work, block j + 1 after i - j - 1, so the block it waits for is one tile ahead of it. Blocks
// take their (b, h, j) from an atomic ticket, highest j of a (b, h) first, so the block waited
// for is always already running (deadlock-free whatever order the hardware starts blocks in).
//
// A block holds one key tile for its whole walk over query tiles, so it is the only block an SM
// runs (8 warps, ~200 registers at D = 128): no other block hides its loads. The Q and dO tiles
// are therefore double-buffered: step s + 1's are issued by cp.async into the other buffer right
// after step s's land, and fly during step s's five products; its lse and Drow rows are loaded
// into registers then and stored to shared memory at the top of step s + 1. One barrier per
// step makes a tile visible and frees the other buffer.
//
// Drow_i = dO_i . out_i comes first, from a small kernel that also clears the counters and the
// ticket (the workspace needs no initialisation).
//
// Fragments and tiles as in forward (attention_tiles.h): every product is mma.sync m16n8k16
// with operands from ldmatrix — ".trans" where the operand is stored k-major (dO, Q and K as
// the B of dV, dK and dQ; dS^T as the A of dQ); an accumulator in C layout (P^T, dS^T) becomes
// the A operand of the next product register to register, rounded to the storage type (as in
// forward); the row sums of the chain (Drow, lse) stay fp32. Rows and keys past T are zero in
// shared memory, and get lse = +inf (P = 0), so they add nothing; they are never stored.
#include <cmath>

#include "kernels/attention.h"
#include "kernels/cuda/attention_tiles.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

using namespace attention_tiles;  // NOLINT: the shared tile geometry and staging

// The main kernel: 8 warps. Warp w works on the 16 keys 16 (w % 4) .. of the block's key tile;
// for S^T and dP^T on the query half 32 (w / 4) .., for dK, dV and dQ on the column half
// (D / 2) (w / 4) ..: dK and dV cost D / 2 fp32 registers per thread (64 at D = 128), not D.
// P^T and dS^T go through shared memory between the two halves.
constexpr int kBwdWarps = 8;
constexpr int kBwdThreads = 32 * kBwdWarps;
constexpr int kLdS = kBr + kPad;  // P^T, dS^T rows: 64 queries, padded

// One block of 8 warps per SM is what the register budget is set for (__launch_bounds__): at
// 128 registers (2 blocks) ptxas spills at D = 64 (24 bytes on sm_80 with the GQA head loop,
// 4 on sm_90); D = 128 needs ~200.
constexpr int kBwdMinBlocks = 1;

// Shared memory: two buffers of the Q and dO tiles (query tile s of the block's walk in buffer
// s % 2, the next one filled by cp.async while this one is multiplied), the K and V tiles (rows
// padded), then P^T and dS^T (64 keys x 64 queries).
template <class T, int D>
constexpr size_t smem_bytes() {
  return (size_t(4 * kBr + 2 * kBc) * (D + kPad) + 2 * size_t(kBc) * kLdS) * sizeof(T);
}

// The workspace's regions (ops.inc): the fp32 dQ accumulator (B,H,T,D) first (8-byte aligned
// for float2), then Drow (B,H,T), the int32 counters (B,H,tiles) and the ticket.
struct Workspace {
  float* dq_acc;
  float* drow;
  int* counters;  // counters[bh * tiles + i]: how many key tiles have added into dQ_i
  int* ticket;    // the next block's work item
};

inline Workspace split_workspace(float* ws, AttentionShape s, int tiles) {
  const long long bh = s.batch * s.heads;
  Workspace w;
  w.dq_acc = ws;
  w.drow = ws + bh * s.seq * s.head_dim;
  w.counters = reinterpret_cast<int*>(w.drow + bh * s.seq);
  w.ticket = w.counters + bh * tiles;
  return w;
}

// A operands, rows r0 .. r0 + 15 of a row-major shared tile with row length kLd, all K/16
// chunks of columns c0 .. c0 + K - 1 (ldmatrix.x4: lane l addresses row l % 16, column
// 8 (l / 16) of the 16 x 16 chunk, as in forward).
template <class T, int kLd, int K>
ST_DEVICE void load_rows_a(uint32_t (&f)[K / 16][4], const SharedSpan<T>& s, size_t base, int r0,
                           int c0, int lane) {
  ST_UNROLL
  for (int kc = 0; kc < K / 16; ++kc) {
    ldmatrix<4, false>(f[kc],
                       &s[base + size_t(r0 + lane % 16) * kLd + c0 + 16 * kc + 8 * (lane / 16)]);
  }
}

// acc (16 x 8) += A B with B[k][n] = X[n][k] for the 8 rows n0 .. n0 + 7 of a row-major shared
// tile X (K in S = Q K^T of forward): one ldmatrix.x4 gives two 16-deep chunks.
template <class T, int D>
ST_DEVICE void mma_rows_b(float (&acc)[4], const uint32_t (&a)[D / 16][4], const SharedSpan<T>& s,
                          size_t base, int n0, int lane) {
  ST_UNROLL
  for (int kc2 = 0; kc2 < D / 32; ++kc2) {
    uint32_t f[4];
    ldmatrix<4, false>(f,
                       &s[base + size_t(n0 + lane % 8) * (D + kPad) + 32 * kc2 + 8 * (lane / 8)]);
    const uint32_t b0[2] = {f[0], f[1]}, b1[2] = {f[2], f[3]};
    mma_m16n8k16<T>(acc, a[2 * kc2], b0, acc);
    mma_m16n8k16<T>(acc, a[2 * kc2 + 1], b1, acc);
  }
}

// acc[n] (16 x N) += A B with B[k][n] = X[k][c0 + n], rows 16c .. 16c + 15 of a row-major shared
// tile X with row length kLd (V in O = P V of forward): stored k-major, so ldmatrix.x4.trans,
// two 8-column tiles per load.
template <class T, int kLd, int N>
ST_DEVICE void mma_cols_b(float (&acc)[N / 8][4], const uint32_t (&a)[4], const SharedSpan<T>& s,
                          size_t base, int c, int c0, int lane) {
  ST_UNROLL
  for (int n = 0; n < N / 8; n += 2) {
    uint32_t f[4];
    ldmatrix<4, true>(f, &s[base + size_t(16 * c + lane % 16) * kLd + c0 + 8 * (n + lane / 16)]);
    const uint32_t b0[2] = {f[0], f[1]}, b1[2] = {f[2], f[3]};
    mma_m16n8k16<T>(acc[n], a, b0, acc[n]);
    mma_m16n8k16<T>(acc[n + 1], a, b1, acc[n + 1]);
  }
}

ST_DEVICE void zero(float (&x)[4]) { x[0] = x[1] = x[2] = x[3] = 0.0f; }

// The query tile at row i0 of head h: Q and dO into buffer q (Q at 2 q kBr rows, dO after it).
template <class T, int D>
ST_DEVICE void stage_query(const SharedSpan<T>& s, int q, const T* qkv, const T* dout, int b, int h,
                           int i0, int Tn, long long stride, long long ostride, bool aligned) {
  const size_t sq = size_t(2 * q * kBr) * (D + kPad), sdo = sq + size_t(kBr) * (D + kPad);
  stage_tile_pipelined<T, D, kBwdThreads>(
      s, sq, qkv + (long long)b * Tn * stride + (long long)h * D, stride, i0, Tn, aligned);
  stage_tile_pipelined<T, D, kBwdThreads>(
      s, sdo, dout + (long long)b * Tn * ostride + (long long)h * D, ostride, i0, Tn, aligned);
}

// What the kernel needs of one query row besides Q and dO: lse in base 2 (+inf past T, so P = 0
// there) and Drow (0 past T).
struct QueryRow {
  float lse2;
  float drow;
};

ST_DEVICE QueryRow query_row(const float* lse, const float* drow, long long bh, int row, int Tn) {
  if (row >= Tn) return {INFINITY, 0.0f};
  return {lse[bh * Tn + row] * kLog2e, drow[bh * Tn + row]};
}

// ---- Drow, and the counters cleared ---------------------------------------------------------

// One warp per (b, t, h) row of dout/out: lane l adds elements 2l, 2l + 1 (and + 64 at
// D = 128) in that order, then the warp butterfly (fixed order); Drow written (B,H,T).
template <class T, int D>
__global__ void __launch_bounds__(256)
    attention_backward_prep_kernel(float* __restrict__ drow, int* __restrict__ counters,
                                   long long n_counters, const T* __restrict__ dout,
                                   const T* __restrict__ out, long long rows, int Tn, int H) {
  const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  for (long long i = first; i < n_counters; i += (long long)gridDim.x * blockDim.x) counters[i] = 0;
  const long long row = (long long)blockIdx.x * 8 + threadIdx.x / 32;
  const int lane = int(threadIdx.x) % 32;
  if (row >= rows) return;  // a whole warp
  const T* g = dout + row * D;
  const T* o = out + row * D;
  float acc = 0.0f;
  ST_UNROLL
  for (int d = 2 * lane; d < D; d += 64) {
    acc += to_float(g[d]) * to_float(o[d]);
    acc += to_float(g[d + 1]) * to_float(o[d + 1]);
  }
  acc = warp_sum(acc);
  if (lane == 0) {
    const long long bt = row / H, b = bt / Tn;
    drow[(b * H + row % H) * Tn + bt % Tn] = acc;
  }
}

// ---- dQ, dK, dV -------------------------------------------------------------------------------

template <class T, int D>
__global__ void __launch_bounds__(kBwdThreads, kBwdMinBlocks)
    attention_backward_dqkv_kernel(T* __restrict__ dqkv, Workspace ws, const T* __restrict__ dout,
                                   const T* __restrict__ qkv, const float* __restrict__ lse, int Tn,
                                   int H, int K, int tiles, float scale_log2, float scale,
                                   bool aligned) {
  constexpr int kLd = D + kPad, kHalf = D / 2;
  static_assert(kBwdThreads >= kBr, "threads < kBr stage the query rows' lse and Drow");
  ST_DYNAMIC_SHARED(T, smem);
  ST_SHARED(float, s_lse2, 2 * kBr);  // per buffer: lse * log2e of the tile's rows (+inf past T)
  ST_SHARED(float, s_drow, 2 * kBr);  // per buffer: Drow of the tile's rows
  ST_SHARED(int, s_ticket, 1);
  // Buffer q holds Q at 2 q kBr kLd and dO after it; then K, V, P^T and dS^T.
  const size_t sk = size_t(4 * kBr) * kLd, sv = sk + size_t(kBc) * kLd;
  const size_t sp = sv + size_t(kBc) * kLd, sds = sp + size_t(kBc) * kLdS;

  // 0. The work item, in ticket order: (b, h) by (b, h), the last key tile first (see the top).
  if (threadIdx.x == 0) s_ticket[0] = atomicAdd(ws.ticket, 1);
  __syncthreads();
  const int ticket = s_ticket[0];
  const int bg = ticket / tiles, jt = tiles - 1 - ticket % tiles;
  const int b = bg / K, kvh = bg % K, j0 = jt * kBc;  // kvh: the key/value head
  const int group = H / K;                            // its query heads kvh group ..
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  const int kw = warp % 4, hw = warp / 4;  // 16-row group (keys; queries for dQ), half
  const int g = lane >> 2, t = lane & 3;
  const int qh = 32 * hw, ch = kHalf * hw;  // this warp's query half (S^T, dP^T), column half
  // qkv rows (B,T,H+2K,D): the H query heads, then K key heads, then K value heads.
  const long long stride = (long long)(H + 2 * K) * D, ostride = (long long)H * D;
  const long long kvstride = (long long)K * D;  // from a key head to its value head
  const T* k_src = qkv + (long long)b * Tn * stride + (long long)(H + kvh) * D;
  const T* v_src = k_src + kvstride;
  const int key_lo = j0 + 16 * kw + g, key_hi = key_lo + 8;  // this thread's two keys

  // The walk: the group's query heads in order, for each its query tiles from the diagonal to
  // the end (dK, dV accumulate over all of them). Step st is query head first + st / per_head,
  // query tile jt + st % per_head; its Q and dO sit in buffer st % 2.
  const int per_head = tiles - jt, steps = group * per_head, first = kvh * group;
  const int own = int(threadIdx.x);  // threads < kBr stage row `own` of lse and Drow

  // 1. K and V for the whole walk and step 0's Q and dO, in one group of copies; step 0's lse
  //    and Drow rows into registers (stored at the top of step 0).
  stage_tile_pipelined<T, D, kBwdThreads>(smem, sk, k_src, stride, j0, Tn, aligned);
  stage_tile_pipelined<T, D, kBwdThreads>(smem, sv, v_src, stride, j0, Tn, aligned);
  stage_query<T, D>(smem, 0, qkv, dout, b, first, j0, Tn, stride, ostride, aligned);
  cp_async_commit();
  QueryRow next{0.0f, 0.0f};
  if (own < kBr) next = query_row(lse, ws.drow, (long long)b * H + first, j0 + own, Tn);
  float dk[kHalf / 8][4], dv[kHalf / 8][4];  // 16 keys x D/2 columns
  ST_UNROLL
  for (int n = 0; n < kHalf / 8; ++n) {
    zero(dk[n]);
    zero(dv[n]);
  }

  // 2. The walk.
  for (int st = 0; st < steps; ++st) {
    const int h = first + st / per_head, i0 = j0 + (st % per_head) * kBr, it = i0 / kBr;
    const int buf = st & 1;
    const int bh = b * H + h;
    float* dq_acc = ws.dq_acc + (long long)bh * Tn * D;  // (T, D) of this (b, h)
    int* counters = ws.counters + (long long)bh * tiles;
    const size_t sq = size_t(2 * buf * kBr) * kLd, sdo = sq + size_t(kBr) * kLd;
    const size_t srow = size_t(buf * kBr);  // this step's lse / Drow buffer
    // 2'. This step's lse and Drow rows (loaded a step ahead) go to their buffer, whose last
    // readers (step st - 2) are past the previous barrier; this step's copies land; the barrier
    // shows both to every warp and frees the other buffer (its readers, step st - 1's products,
    // are past it), so step st + 1's Q and dO go there now and fly during this step's math, its
    // lse and Drow in registers until the top of the next step.
    if (own < kBr) {
      s_lse2[srow + size_t(own)] = next.lse2;
      s_drow[srow + size_t(own)] = next.drow;
    }
    cp_async_wait<0>();
    __syncthreads();
    if (st + 1 < steps) {
      const int nh = first + (st + 1) / per_head, ni0 = j0 + ((st + 1) % per_head) * kBr;
      stage_query<T, D>(smem, buf ^ 1, qkv, dout, b, nh, ni0, Tn, stride, ostride, aligned);
      if (own < kBr) next = query_row(lse, ws.drow, (long long)b * H + nh, ni0 + own, Tn);
    }
    cp_async_commit();

    // 2a. S^T = K Q^T (16 keys x 32 queries per warp); P^T, 0 for queries before the key: only
    // in the diagonal tile (i0 == j0; queries past T have lse = inf, so P = 0 for them anyway).
    const bool diagonal = i0 == j0;
    float p[4][4];
    {
      uint32_t kf[D / 16][4];
      load_rows_a<T, kLd, D>(kf, smem, sk, 16 * kw, 0, lane);
      ST_UNROLL
      for (int n = 0; n < 4; ++n) {
        zero(p[n]);
        mma_rows_b<T, D>(p[n], kf, smem, sq, qh + 8 * n, lane);
        ST_UNROLL
        for (int r = 0; r < 4; ++r) {
          const int col = qh + 8 * n + 2 * t + (r & 1);
          const int key = r < 2 ? key_lo : key_hi;
          p[n][r] = !diagonal || i0 + col >= key
                        ? exp2f(p[n][r] * scale_log2 - s_lse2[srow + size_t(col)])
                        : 0.0f;
        }
      }
    }
    // 2b. dP^T = V dO^T, dS^T = P^T (dP^T - Drow); both into shared memory, rounded to T (row =
    // key, column = query: 32-bit stores at word 36 (16 kw + g) + 16 hw + 4 n + t, banks
    // 4 g + t + 16 hw: conflict-free within the warp).
    {
      uint32_t vf[D / 16][4];
      load_rows_a<T, kLd, D>(vf, smem, sv, 16 * kw, 0, lane);
      ST_UNROLL
      for (int n = 0; n < 4; ++n) {
        float dp[4];
        zero(dp);
        mma_rows_b<T, D>(dp, vf, smem, sdo, qh + 8 * n, lane);
        const size_t lo = size_t(16 * kw + g) * kLdS + qh + 8 * n + 2 * t, hi = lo + 8 * kLdS;
        store_shared_pair<T>(smem, sp + lo, p[n][0], p[n][1]);
        store_shared_pair<T>(smem, sp + hi, p[n][2], p[n][3]);
        const float d0 = s_drow[srow + size_t(qh + 8 * n + 2 * t)],
                    d1 = s_drow[srow + size_t(qh + 8 * n + 2 * t + 1)];
        store_shared_pair<T>(smem, sds + lo, p[n][0] * (dp[0] - d0), p[n][1] * (dp[1] - d1));
        store_shared_pair<T>(smem, sds + hi, p[n][2] * (dp[2] - d0), p[n][3] * (dp[3] - d1));
      }
    }
    __syncthreads();  // P^T and dS^T complete

    // 2c. dV += P^T dO and dK += dS^T Q on this warp's 16 keys x D/2 columns; A from the
    // shared P^T / dS^T rows, B = dO / Q stored k-major.
    ST_UNROLL
    for (int c = 0; c < kBr / 16; ++c) {
      uint32_t a[1][4];
      load_rows_a<T, kLdS, 16>(a, smem, sp, 16 * kw, 16 * c, lane);
      mma_cols_b<T, kLd, kHalf>(dv, a[0], smem, sdo, c, ch, lane);
      load_rows_a<T, kLdS, 16>(a, smem, sds, 16 * kw, 16 * c, lane);
      mma_cols_b<T, kLd, kHalf>(dk, a[0], smem, sq, c, ch, lane);
    }

    // 2d. This key tile's turn on dQ_i: tiles it, it-1, ..., jt+1 have added.
    const int turn = it - jt;
    if (turn > 0) block_wait(&counters[it], turn);
    // 2e. dQ_i, the warp's 16 query rows 16 kw .. x D/2 columns, = partial + dS K_j: A[m][k] =
    // dS[query][key] = dS^T[key][query], stored k-major: ldmatrix.x4.trans, lane l addressing
    // key row 16 kc + 8 (l / 16) + l % 8 at query column 16 kw + 8 ((l / 8) & 1); B = K stored
    // k-major. The partial goes through L2 (load_l2 / store_l2).
    uint32_t dsf[kBc / 16][4];
    ST_UNROLL
    for (int kc = 0; kc < kBc / 16; ++kc) {
      ldmatrix<4, true>(dsf[kc], &smem[sds + size_t(16 * kc + 8 * (lane / 16) + lane % 8) * kLdS +
                                       16 * kw + 8 * ((lane / 8) & 1)]);
    }
    const int row_lo = i0 + 16 * kw + g, row_hi = row_lo + 8;
    ST_NO_UNROLL
    for (int n = 0; n < kHalf / 8; n += 2) {
      float acc[2][4];
      ST_UNROLL
      for (int m = 0; m < 2; ++m) {
        zero(acc[m]);
        const int d = ch + 8 * (n + m) + 2 * t;
        if (turn > 0 && row_lo < Tn) {
          const float2 v =
              load_l2(reinterpret_cast<const float2*>(dq_acc + (long long)row_lo * D + d));
          acc[m][0] = v.x;
          acc[m][1] = v.y;
        }
        if (turn > 0 && row_hi < Tn) {
          const float2 v =
              load_l2(reinterpret_cast<const float2*>(dq_acc + (long long)row_hi * D + d));
          acc[m][2] = v.x;
          acc[m][3] = v.y;
        }
      }
      ST_UNROLL
      for (int kc = 0; kc < kBc / 16; ++kc) {
        uint32_t f[4];
        ldmatrix<4, true>(f,
                          &smem[sk + size_t(16 * kc + lane % 16) * kLd + ch + 8 * (n + lane / 16)]);
        const uint32_t b0[2] = {f[0], f[1]}, b1[2] = {f[2], f[3]};
        mma_m16n8k16<T>(acc[0], dsf[kc], b0, acc[0]);
        mma_m16n8k16<T>(acc[1], dsf[kc], b1, acc[1]);
      }
      ST_UNROLL
      for (int m = 0; m < 2; ++m) {
        const int d = ch + 8 * (n + m) + 2 * t;
        if (jt > 0) {  // more key tiles to come: the fp32 partial
          if (row_lo < Tn) {
            store_l2(reinterpret_cast<float2*>(dq_acc + (long long)row_lo * D + d),
                     make_float2(acc[m][0], acc[m][1]));
          }
          if (row_hi < Tn) {
            store_l2(reinterpret_cast<float2*>(dq_acc + (long long)row_hi * D + d),
                     make_float2(acc[m][2], acc[m][3]));
          }
        } else {  // key tile 0 adds last: dQ = scale * sum, into part 0 of dqkv
          T* lo = dqkv + ((long long)b * Tn + row_lo) * stride + (long long)h * D + d;
          if (row_lo < Tn) {
            lo[0] = from_float<T>(acc[m][0] * scale);
            lo[1] = from_float<T>(acc[m][1] * scale);
          }
          if (row_hi < Tn) {
            lo[8 * stride] = from_float<T>(acc[m][2] * scale);
            lo[8 * stride + 1] = from_float<T>(acc[m][3] * scale);
          }
        }
      }
    }
    if (jt > 0) block_publish(&counters[it], turn + 1);
  }

  // 3. dK = scale * sum into part 1, dV into part 2: keys < T, this warp's D/2 columns.
  T* dk_lo = dqkv + ((long long)b * Tn + key_lo) * stride + (long long)(H + kvh) * D + ch;
  T* dk_hi = dk_lo + 8 * stride;
  ST_UNROLL
  for (int n = 0; n < kHalf / 8; ++n) {
    const int d = 8 * n + 2 * t;
    if (key_lo < Tn) {
      dk_lo[d] = from_float<T>(dk[n][0] * scale);
      dk_lo[d + 1] = from_float<T>(dk[n][1] * scale);
      dk_lo[kvstride + d] = from_float<T>(dv[n][0]);
      dk_lo[kvstride + d + 1] = from_float<T>(dv[n][1]);
    }
    if (key_hi < Tn) {
      dk_hi[d] = from_float<T>(dk[n][2] * scale);
      dk_hi[d + 1] = from_float<T>(dk[n][3] * scale);
      dk_hi[kvstride + d] = from_float<T>(dv[n][2]);
      dk_hi[kvstride + d + 1] = from_float<T>(dv[n][3]);
    }
  }
}

template <class T, int D>
Status launch_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse,
                       float* workspace, AttentionShape s, Stream stream) {
  const long long tiles = (s.seq + kBr - 1) / kBr, bh = s.batch * s.heads;
  const long long K = kv_heads_of(s), bg = s.batch * K;
  const long long rows = s.batch * s.seq * s.heads;
  if (bh * tiles > 0x7fffffffLL || (rows + 7) / 8 > 0x7fffffffLL) {
    return unsupported("attention_backward", "grid too large");
  }
  const float scale = 1.0f / std::sqrt(float(D)), scale_log2 = kLog2e * scale;
  const bool aligned = is_aligned16(qkv) && is_aligned16(dout);
  const Workspace ws = split_workspace(workspace, s, int(tiles));
  Status e = launch(attention_backward_prep_kernel<T, D>, dim3(unsigned((rows + 7) / 8)), dim3(256),
                    0, stream, ws.drow, ws.counters, bh * tiles + 1, dout, out, rows, int(s.seq),
                    int(s.heads));
  if (e != kOk) return e;
  return launch(attention_backward_dqkv_kernel<T, D>, dim3(unsigned(bg * tiles)), dim3(kBwdThreads),
                smem_bytes<T, D>(), stream, dqkv, ws, dout, qkv, lse, int(s.seq), int(s.heads),
                int(K), int(tiles), scale_log2, scale, aligned);
}

}  // namespace

template <class T>
Status attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse,
                          float* workspace, AttentionShape s, Stream stream) {
  if (s.batch * s.heads == 0 || s.seq == 0) return kOk;
  if (s.seq > 0x7fffffffLL || s.heads > 0x7fffffffLL) {
    return attention_tiles::unsupported("attention_backward", "grid too large");
  }
  if (kv_heads_of(s) > s.heads || s.heads % kv_heads_of(s) != 0) {
    return attention_tiles::unsupported("attention_backward", "kv_heads must divide heads");
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
