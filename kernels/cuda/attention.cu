// attention.cu — causal flash-attention forward on tensor cores; one source for nvcc and
// kernels/emu. Contract and layouts: kernels/attention.h (qkv (B,T,3,H,D), out (B,T,H,D), lse
// (B,H,T) fp32, scale 1/sqrt(D)), compared against kernels/cpu/attention.cpp.
//
// Why it is shaped so (FlashAttention-2's forward):
//  - One block of 4 warps per (query tile, b*h). Each warp owns 16 M query rows (M = 2 at
//    D = 64, 1 at D = 128: kMTiles below) for the whole key loop, so the softmax statistics
//    (running max m, sum l) and the output accumulator live in registers and never cross warps:
//    no shared-memory reductions, and the only barriers are the two per K/V tile (tile ready;
//    buffer free). With M = 2 each K/V fragment from shared memory feeds two m-tiles.
//  - Q K^T and P V are mma.sync m16n8k16 (kernels/cuda/mma.h) with fp32 accumulators. The
//    S = Q K^T accumulator fragment (16 x 64 per warp) has exactly the per-lane layout of the A
//    operand of P V (C rows g / g+8, columns 2t..2t+1 of each 8-column tile = A's rows and its
//    two 8-column halves), so P goes from registers to the next mma without shared memory.
//  - P is rounded to the storage type to feed the tensor core (as every FlashAttention does);
//    the row sum l is taken from the fp32 P. That rounding is the one error beyond fp32
//    accumulation order, bounded in the test (tests/kernels/gpu_ops_cases.inc).
//  - Online softmax in base 2: scores are scaled by log2(e)/sqrt(D) once, exp2f is one SFU
//    instruction; lse is converted back to natural log on store. Each thread holds 2 rows x 16
//    of the 64 scores; row max/sum need only the 4 lanes of a quad (shfl_xor 1, 2), and the sum
//    is kept per lane and reduced once at the end (the rescale factor is uniform in a quad).
//  - K/V tiles of kBc = 64 keys are staged in shared memory with rows padded by 8 elements
//    (16 bytes), so the 8 rows of each ldmatrix phase hit distinct banks; two buffers, filled
//    by cp.async one tile ahead, so the next tile's loads overlap this tile's math.
//  - Grid (query tiles, H, B), query tiles fastest and longest first: the blocks of one
//    (b, h) are adjacent in launch order, run together and walk the key tiles in the same
//    order, so K/V re-reads hit L2 and DRAM traffic stays near Q + K + V + out once; within a
//    (b, h) the tiles with the most key tiles start first, so the causal imbalance fills the
//    tail of the grid (FlashAttention-2's order).
//  - Causal: key tiles past the query tile are never loaded; within the diagonal tiles (the last
//    M) keys after the row get -inf, i.e. P = 0 exactly, and a warp whose rows all precede a
//    tile skips its math. Each row sees key j0 <= row of every tile it works on (tiles aligned
//    to 64), so the running max is finite after the first tile. Rows/keys past T are
//    zero-filled in shared memory and never stored.
#include <cmath>

#include "kernels/attention.h"
#include "kernels/cuda/attention_tiles.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

using namespace attention_tiles;  // NOLINT: the shared tile geometry and staging

// Rows per warp (M m-tiles of 16), chosen per head_dim for the register budget (README.md has
// the numbers); every K and V fragment loaded from shared memory feeds M mma pairs. M = 2 at
// D = 64 (query tiles of 128 rows, as FlashAttention-2's): one ldmatrix.x4 (512 bytes, 4 cycles
// of an SM's 128 B/cycle) per four mma, where M = 1 gave two, leaving the tensor cores waiting on
// shared memory. At D = 128 the output accumulator alone is 64 registers per m-tile, so M = 2
// would spill: M = 1 (64-row tiles). attention_forward's m_tiles picks the other one at D = 64
// (bench/attention_gpu_bench times both).
template <int D>
inline constexpr int kMTiles = D == 64 ? 2 : 1;

// Query rows per block: 4 warps x M x 16.
template <int M>
inline constexpr int kBq = kWarps * 16 * M;

// Shared memory per block: the Q tile and two K/V buffers (tile j in buffer j % 2), rows padded.
template <class T, int D, int M>
constexpr size_t smem_bytes() {
  return size_t(kBq<M> + 4 * kBc) * (D + kPad) * sizeof(T);
}

// Stages key tile j0 of K and V into K/V buffer `buf` (stage_tile_pipelined).
template <class T, int D, int M>
ST_DEVICE void stage_kv(const SharedSpan<T>& s, int buf, const T* k_src, const T* v_src,
                        long long stride, int j0, int Tn, bool aligned) {
  const size_t sk = size_t(kBq<M> + 2 * kBc * buf) * (D + kPad), sv = sk + size_t(kBc) * (D + kPad);
  stage_tile_pipelined<T, D>(s, sk, k_src, stride, j0, Tn, aligned);
  stage_tile_pipelined<T, D>(s, sv, v_src, stride, j0, Tn, aligned);
}

template <class T, int D, int M>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(T* __restrict__ out, float* __restrict__ lse,
                             const T* __restrict__ qkv, int Tn, int H, int K, float scale_log2,
                             bool aligned, bool out_aligned) {
  constexpr int kLd = D + kPad, kRows = 16 * M;  // kRows: this warp's rows
  ST_DYNAMIC_SHARED(T, smem);
  const size_t sq = 0;  // the Q tile; K/V buffers after it (stage_kv)
  const int b = int(blockIdx.z), h = int(blockIdx.y), bh = b * H + h;
  const int q0 = int(gridDim.x - 1 - blockIdx.x) * kBq<M>;  // longest query tiles first
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  const int g = lane >> 2, t = lane & 3;  // mma groupID, threadID_in_group
  // qkv row (B,T,H+2K,D): H query heads, K key heads, K value heads; head h reads key/value
  // head h / (H/K).
  const long long stride = (long long)(H + 2 * K) * D;
  const T* q_src = qkv + (long long)b * Tn * stride + (long long)h * D;
  const T* k_src = qkv + (long long)b * Tn * stride + (long long)(H + h / (H / K)) * D;
  const T* v_src = k_src + (long long)K * D;
  const int w0 = q0 + kRows * warp;  // this warp's first row; m-tile m holds w0 + 16 m ..
  // This thread's rows: w0 + 16 m + g (lo) and + 8 (hi) of each m-tile.

  // 1. Q tile -> shared -> this warp's A fragments (kRows x D), kept in registers; key tile 0
  //    on its way into buffer 0 meanwhile.
  const int q_end = q0 + kBq<M> < Tn ? q0 + kBq<M> : Tn;
  stage_kv<T, D, M>(smem, 0, k_src, v_src, stride, 0, Tn, aligned);
  cp_async_commit();
  ST_UNROLL
  for (int r = 0; r < kBq<M>; r += kBr) {  // stage_tile moves kBr rows
    stage_tile<T, D>(smem, sq + size_t(r) * kLd, q_src, stride, q0 + r, Tn, aligned);
  }
  __syncthreads();
  // ldmatrix.x4: lane l addresses row l % 16, column 8 (l / 16) of the 16 x 16 chunk.
  uint32_t qf[M][D / 16][4];
  ST_UNROLL
  for (int m = 0; m < M; ++m) {
    ST_UNROLL
    for (int kc = 0; kc < D / 16; ++kc) {
      ldmatrix<4, false>(
          qf[m][kc],
          &smem[sq + size_t(kRows * warp + 16 * m + lane % 16) * kLd + 16 * kc + 8 * (lane / 16)]);
    }
  }

  float o[M][D / 8][4];    // output accumulator, kRows x D per warp (C layout, 8-column tiles)
  float m_lo[M], m_hi[M];  // running max (base-2 scaled scores)
  float l_lo[M], l_hi[M];  // running sum, this lane's columns only
  ST_UNROLL
  for (int m = 0; m < M; ++m) {
    ST_UNROLL
    for (int n = 0; n < D / 8; ++n) o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.0f;
    m_lo[m] = m_hi[m] = -INFINITY;
    l_lo[m] = l_hi[m] = 0.0f;
  }

  // 2. Key tiles up to the one holding the block's last row.
  for (int j0 = 0; j0 < q_end; j0 += kBc) {
    // 2a. Tile j + 1 into the other buffer (free: the barrier at the end of the last
    // iteration), then wait for tile j's copies (all groups but the newest) and the barrier.
    const int buf = (j0 / kBc) & 1;
    if (j0 + kBc < q_end)
      stage_kv<T, D, M>(smem, buf ^ 1, k_src, v_src, stride, j0 + kBc, Tn, aligned);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const size_t sk = size_t(kBq<M> + 2 * kBc * buf) * kLd, sv = sk + size_t(kBc) * kLd;

    // A warp whose rows all come before the tile's first key has nothing to add (with M = 2,
    // the first half of the block at the last key tile): it only keeps the barriers. (M == 1
    // never skips; saying so lets ptxas drop the branch: 175 registers at D = 128 on sm_90,
    // not 184.)
    if (M == 1 || w0 + kRows - 1 >= j0) {
      // 2b. S = Q K^T: B[k][n] = K[key n][d k], i.e. K rows as stored: one ldmatrix.x4 gives
      // the B registers of two 16-deep chunks (lane l: key 8n + l % 8, columns 32 kc2 +
      // 8 (l / 8)), used by every m-tile.
      float s[M][kBc / 8][4];
      ST_UNROLL
      for (int n = 0; n < kBc / 8; ++n) {
        ST_UNROLL
        for (int m = 0; m < M; ++m) s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.0f;
        ST_UNROLL
        for (int kc2 = 0; kc2 < D / 32; ++kc2) {
          uint32_t kf[4];
          ldmatrix<4, false>(
              kf, &smem[sk + size_t(8 * n + lane % 8) * kLd + 32 * kc2 + 8 * (lane / 8)]);
          const uint32_t k0[2] = {kf[0], kf[1]}, k1[2] = {kf[2], kf[3]};
          ST_UNROLL
          for (int m = 0; m < M; ++m) {
            mma_m16n8k16<T>(s[m][n], qf[m][2 * kc2], k0, s[m][n]);
            mma_m16n8k16<T>(s[m][n], qf[m][2 * kc2 + 1], k1, s[m][n]);
          }
        }
      }

      // 2c. Scale into base 2, mask keys after the row (P = 0 there), row max over the quad.
      // Only tiles reaching past the block's first row (j0 >= q0: the last M ones) have keys
      // after a row or past T: every key of an earlier tile is < q0 <= each row, so those tiles
      // skip the compare. A warp that gets here has w0 >= j0 (both aligned), so each of its
      // rows has a key <= it in the tile.
      const bool diagonal = j0 >= q0;
      ST_UNROLL
      for (int m = 0; m < M; ++m) {
        const int row_lo = w0 + 16 * m + g, row_hi = row_lo + 8;
        float mt_lo = -INFINITY, mt_hi = -INFINITY;
        ST_UNROLL
        for (int n = 0; n < kBc / 8; ++n) {
          ST_UNROLL
          for (int r = 0; r < 4; ++r) {
            const int key = j0 + 8 * n + 2 * t + (r & 1);
            const int row = r < 2 ? row_lo : row_hi;
            s[m][n][r] = !diagonal || key <= row ? s[m][n][r] * scale_log2 : -INFINITY;
          }
          mt_lo = fmaxf(mt_lo, fmaxf(s[m][n][0], s[m][n][1]));
          mt_hi = fmaxf(mt_hi, fmaxf(s[m][n][2], s[m][n][3]));
        }
        ST_UNROLL
        for (int x = 1; x <= 2; x <<= 1) {
          mt_lo = fmaxf(mt_lo, __shfl_xor_sync(kFullMask, mt_lo, x));
          mt_hi = fmaxf(mt_hi, __shfl_xor_sync(kFullMask, mt_hi, x));
        }

        // 2d. Online softmax: rescale by 2^(m_old - m_new) (0 on the first tile), P = 2^(s - m).
        // The first tile holds key 0 <= every row, so m_new is finite from then on.
        const float mn_lo = fmaxf(m_lo[m], mt_lo), mn_hi = fmaxf(m_hi[m], mt_hi);
        const float alpha_lo = exp2f(m_lo[m] - mn_lo), alpha_hi = exp2f(m_hi[m] - mn_hi);
        m_lo[m] = mn_lo;
        m_hi[m] = mn_hi;
        float sum_lo = 0.0f, sum_hi = 0.0f;
        ST_UNROLL
        for (int n = 0; n < kBc / 8; ++n) {
          s[m][n][0] = exp2f(s[m][n][0] - mn_lo);
          s[m][n][1] = exp2f(s[m][n][1] - mn_lo);
          s[m][n][2] = exp2f(s[m][n][2] - mn_hi);
          s[m][n][3] = exp2f(s[m][n][3] - mn_hi);
          sum_lo += s[m][n][0] + s[m][n][1];
          sum_hi += s[m][n][2] + s[m][n][3];
        }
        l_lo[m] = l_lo[m] * alpha_lo + sum_lo;
        l_hi[m] = l_hi[m] * alpha_hi + sum_hi;
        ST_UNROLL
        for (int n = 0; n < D / 8; ++n) {
          o[m][n][0] *= alpha_lo;
          o[m][n][1] *= alpha_lo;
          o[m][n][2] *= alpha_hi;
          o[m][n][3] *= alpha_hi;
        }
      }

      // 2e. O += P V over 16-key chunks: P's A fragment is S tiles 2c, 2c+1 (C layout) rounded
      // to T; B[k][n] = V[key k][d n] is V stored k-major: ldmatrix.x4.trans gives the B
      // registers of two 8-column d tiles (lane l: key 16c + l % 16, columns 8 (n + l / 16)),
      // used by every m-tile.
      ST_UNROLL
      for (int c = 0; c < kBc / 16; ++c) {
        uint32_t pf[M][4];
        ST_UNROLL
        for (int m = 0; m < M; ++m) {
          pf[m][0] = pack_half2(from_float<T>(s[m][2 * c][0]), from_float<T>(s[m][2 * c][1]));
          pf[m][1] = pack_half2(from_float<T>(s[m][2 * c][2]), from_float<T>(s[m][2 * c][3]));
          pf[m][2] =
              pack_half2(from_float<T>(s[m][2 * c + 1][0]), from_float<T>(s[m][2 * c + 1][1]));
          pf[m][3] =
              pack_half2(from_float<T>(s[m][2 * c + 1][2]), from_float<T>(s[m][2 * c + 1][3]));
        }
        ST_UNROLL
        for (int n = 0; n < D / 8; n += 2) {
          uint32_t vf[4];
          ldmatrix<4, true>(vf, &smem[sv + size_t(16 * c + lane % 16) * kLd + 8 * (n + lane / 16)]);
          const uint32_t v0[2] = {vf[0], vf[1]}, v1[2] = {vf[2], vf[3]};
          ST_UNROLL
          for (int m = 0; m < M; ++m) {
            mma_m16n8k16<T>(o[m][n], pf[m], v0, o[m][n]);
            mma_m16n8k16<T>(o[m][n + 1], pf[m], v1, o[m][n + 1]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with buffer buf: tile j + 2 may go there
  }

  // 3. Normalise by the row sums (quad-reduced now). The warp's kRows x D output goes through
  //    its own rows of the Q tile in shared memory (its Q fragments are in registers since
  //    step 1, and no other warp reads these rows), then to global memory as 16-byte packs, one
  //    whole row segment per lane per step (rows < T); lse in natural log.
  ST_UNROLL
  for (int m = 0; m < M; ++m) {
    ST_UNROLL
    for (int x = 1; x <= 2; x <<= 1) {
      l_lo[m] += __shfl_xor_sync(kFullMask, l_lo[m], x);
      l_hi[m] += __shfl_xor_sync(kFullMask, l_hi[m], x);
    }
    const float inv_lo = 1.0f / l_lo[m], inv_hi = 1.0f / l_hi[m];
    const size_t so_lo = sq + size_t(kRows * warp + 16 * m + g) * kLd,
                 so_hi = so_lo + 8 * size_t(kLd);
    ST_UNROLL
    for (int n = 0; n < D / 8; ++n) {
      const int d = 8 * n + 2 * t;
      store_shared_pair<T>(smem, so_lo + size_t(d), o[m][n][0] * inv_lo, o[m][n][1] * inv_lo);
      store_shared_pair<T>(smem, so_hi + size_t(d), o[m][n][2] * inv_hi, o[m][n][3] * inv_hi);
    }
  }
  __syncwarp();
  constexpr int kPacks = D / 8;
  ST_UNROLL
  for (int idx = lane; idx < kRows * kPacks; idx += 32) {
    const int r = idx / kPacks, c = (idx % kPacks) * 8, row = w0 + r;
    if (row >= Tn) continue;
    const Pack<T> v = load_shared_pack(smem, sq + size_t(kRows * warp + r) * kLd + size_t(c));
    T* dst = out + ((long long)b * Tn + row) * H * D + (long long)h * D + c;
    if (out_aligned) {
      store_pack(dst, v);
    } else {
      ST_UNROLL
      for (int e = 0; e < 8; ++e) dst[e] = v.v[e];
    }
  }
  if (t == 0) {
    float* lse_bh = lse + (long long)bh * Tn;  // (T)
    ST_UNROLL
    for (int m = 0; m < M; ++m) {
      const int row_lo = w0 + 16 * m + g, row_hi = row_lo + 8;
      if (row_lo < Tn) lse_bh[row_lo] = (m_lo[m] + log2f(l_lo[m])) * kLn2;
      if (row_hi < Tn) lse_bh[row_hi] = (m_hi[m] + log2f(l_hi[m])) * kLn2;
    }
  }
}

template <class T, int D, int M>
Status launch_forward(T* out, float* lse, const T* qkv, AttentionShape s, Stream stream) {
  const unsigned q_tiles = unsigned((s.seq + kBq<M> - 1) / kBq<M>);
  const float scale_log2 = kLog2e / std::sqrt(float(D));
  return launch(attention_forward_kernel<T, D, M>,
                dim3(q_tiles, unsigned(s.heads), unsigned(s.batch)), dim3(kThreads),
                smem_bytes<T, D, M>(), stream, out, lse, qkv, int(s.seq), int(s.heads),
                int(kv_heads_of(s)), scale_log2, is_aligned16(qkv), is_aligned16(out));
}

}  // namespace

template <class T>
Status attention_forward(T* out, float* lse, const T* qkv, AttentionShape s, Stream stream,
                         int m_tiles) {
  if (s.batch * s.heads == 0 || s.seq == 0) return kOk;
  if (s.batch > 65535 || s.heads > 65535 || s.seq > 0x7fffffffLL) {
    return attention_tiles::unsupported("attention_forward", "grid too large");
  }
  if (kv_heads_of(s) > s.heads || s.heads % kv_heads_of(s) != 0) {
    return attention_tiles::unsupported("attention_forward", "kv_heads must divide heads");
  }
  const int m = m_tiles != 0 ? m_tiles : s.head_dim == 64 ? kMTiles<64> : kMTiles<128>;
  if (s.head_dim == 64 && m == 1) return launch_forward<T, 64, 1>(out, lse, qkv, s, stream);
  if (s.head_dim == 64 && m == 2) return launch_forward<T, 64, 2>(out, lse, qkv, s, stream);
  if (s.head_dim == 128 && m == 1) return launch_forward<T, 128, 1>(out, lse, qkv, s, stream);
  if (s.head_dim == 64 || s.head_dim == 128) {
    return attention_tiles::unsupported("attention_forward",
                                        "m_tiles must be 1 or 2 at head_dim 64, 1 at 128");
  }
  return attention_tiles::unsupported("attention_forward", "head_dim must be 64 or 128");
}

template Status attention_forward<BFloat16>(BFloat16*, float*, const BFloat16*, AttentionShape,
                                            Stream, int);
template Status attention_forward<Half>(Half*, float*, const Half*, AttentionShape, Stream, int);

}  // namespace shardtrain::kernels::ST_GPU_NS
