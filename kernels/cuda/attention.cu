// attention.cu — causal flash-attention forward on tensor cores; one source for nvcc and
// kernels/emu. Contract and layouts: kernels/attention.h (qkv (B,T,3,H,D), out (B,T,H,D), lse
// (B,H,T) fp32, scale 1/sqrt(D)), compared against kernels/cpu/attention.cpp.
//
// Why it is shaped so (FlashAttention-2's forward):
//  - One block of 4 warps per (query tile of kBr = 64 rows, b*h). Each warp owns 16 query rows
//    for the whole key loop, so the softmax statistics (running max m, sum l) and the output
//    accumulator live in registers and never cross warps: no shared-memory reductions, and the
//    only barriers are the two per K/V tile (tile ready; buffer free).
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
//  - Grid (query tiles, H, B), query tiles fastest and longest first: the T/64 blocks of one
//    (b, h) are adjacent in launch order, run together and walk the key tiles in the same
//    order, so K/V re-reads hit L2 and DRAM traffic stays near Q + K + V + out once; within a
//    (b, h) the tiles with the most key tiles start first, so the causal imbalance fills the
//    tail of the grid (FlashAttention-2's order).
//  - Causal: key tiles past the query tile are never loaded; within the diagonal tile keys
//    after the row get -inf, i.e. P = 0 exactly. Each row sees key j0 <= row of every tile it
//    visits (tiles aligned, kBr == kBc), so the running max is finite after the first tile.
//    Rows/keys past T are zero-filled in shared memory and never stored.
#include <cmath>

#include "kernels/attention.h"
#include "kernels/cuda/attention_tiles.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {
namespace {

using namespace attention_tiles;  // NOLINT: the shared tile geometry and staging

// Shared memory per block: the Q tile and two K/V buffers (tile j in buffer j % 2), rows padded.
template <class T, int D>
constexpr size_t smem_bytes() {
  return size_t(kBr + 4 * kBc) * (D + kPad) * sizeof(T);
}

// Stages key tile j0 of K and V into K/V buffer `buf`: cp.async when the source is aligned
// (the copies join the thread's open group), else plain loads and stores.
template <class T, int D>
ST_DEVICE void stage_kv(const SharedSpan<T>& s, int buf, const T* k_src, const T* v_src,
                        long long stride, int j0, int Tn, bool aligned) {
  const size_t sk = size_t(kBr + 2 * kBc * buf) * (D + kPad), sv = sk + size_t(kBc) * (D + kPad);
  if (aligned) {
    stage_tile_async<T, D>(s, sk, k_src, stride, j0, Tn);
    stage_tile_async<T, D>(s, sv, v_src, stride, j0, Tn);
  } else {
    stage_tile<T, D>(s, sk, k_src, stride, j0, Tn, false);
    stage_tile<T, D>(s, sv, v_src, stride, j0, Tn, false);
  }
}

template <class T, int D>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(T* __restrict__ out, float* __restrict__ lse,
                             const T* __restrict__ qkv, int Tn, int H, int K, float scale_log2,
                             bool aligned, bool out_aligned) {
  constexpr int kLd = D + kPad;
  ST_DYNAMIC_SHARED(T, smem);
  const size_t sq = 0;  // the Q tile; K/V buffers after it (stage_kv)
  const int b = int(blockIdx.z), h = int(blockIdx.y), bh = b * H + h;
  const int q0 = int(gridDim.x - 1 - blockIdx.x) * kBr;  // longest query tiles first
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  const int g = lane >> 2, t = lane & 3;  // mma groupID, threadID_in_group
  // qkv row (B,T,H+2K,D): H query heads, K key heads, K value heads; head h reads key/value
  // head h / (H/K).
  const long long stride = (long long)(H + 2 * K) * D;
  const T* q_src = qkv + (long long)b * Tn * stride + (long long)h * D;
  const T* k_src = qkv + (long long)b * Tn * stride + (long long)(H + h / (H / K)) * D;
  const T* v_src = k_src + (long long)K * D;
  const int row_lo = q0 + 16 * warp + g, row_hi = row_lo + 8;  // this thread's two rows

  // 1. Q tile -> shared -> this warp's A fragments (16 rows x D), kept in registers; key tile 0
  //    on its way into buffer 0 meanwhile.
  const int q_end = q0 + kBr < Tn ? q0 + kBr : Tn;
  stage_kv<T, D>(smem, 0, k_src, v_src, stride, 0, Tn, aligned);
  cp_async_commit();
  stage_tile<T, D>(smem, sq, q_src, stride, q0, Tn, aligned);
  __syncthreads();
  // ldmatrix.x4: lane l addresses row l % 16, column 8 (l / 16) of the 16 x 16 chunk.
  uint32_t qf[D / 16][4];
  ST_UNROLL
  for (int kc = 0; kc < D / 16; ++kc) {
    ldmatrix<4, false>(qf[kc],
                       &smem[sq + size_t(16 * warp + lane % 16) * kLd + 16 * kc + 8 * (lane / 16)]);
  }

  float o[D / 8][4];  // output accumulator, 16 rows x D per warp (C layout, 8-column tiles)
  ST_UNROLL
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY;  // running max (base-2 scaled scores)
  float l_lo = 0.0f, l_hi = 0.0f;            // running sum, this lane's columns only

  // 2. Key tiles up to the one holding the block's last row.
  for (int j0 = 0; j0 < q_end; j0 += kBc) {
    // 2a. Tile j + 1 into the other buffer (free: the barrier at the end of the last
    // iteration), then wait for tile j's copies (all groups but the newest) and the barrier.
    const int buf = (j0 / kBc) & 1;
    if (j0 + kBc < q_end)
      stage_kv<T, D>(smem, buf ^ 1, k_src, v_src, stride, j0 + kBc, Tn, aligned);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const size_t sk = size_t(kBr + 2 * kBc * buf) * kLd, sv = sk + size_t(kBc) * kLd;

    // 2b. S = Q K^T: B[k][n] = K[key n][d k], i.e. K rows as stored: one ldmatrix.x4 gives the
    // B registers of two 16-deep chunks (lane l: key 8n + l % 8, columns 32 kc2 + 8 (l / 8)).
    float s[kBc / 8][4];
    ST_UNROLL
    for (int n = 0; n < kBc / 8; ++n) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
      ST_UNROLL
      for (int kc2 = 0; kc2 < D / 32; ++kc2) {
        uint32_t kf[4];
        ldmatrix<4, false>(kf,
                           &smem[sk + size_t(8 * n + lane % 8) * kLd + 32 * kc2 + 8 * (lane / 8)]);
        const uint32_t k0[2] = {kf[0], kf[1]}, k1[2] = {kf[2], kf[3]};
        mma_m16n8k16<T>(s[n], qf[2 * kc2], k0, s[n]);
        mma_m16n8k16<T>(s[n], qf[2 * kc2 + 1], k1, s[n]);
      }
    }

    // 2c. Scale into base 2, mask keys after the row (P = 0 there), row max over the quad. Only
    // the diagonal tile (j0 == q0, the last one) has keys after a row or past T: every key of an
    // earlier tile is < q0 <= each row, so those tiles skip the compare.
    float mt_lo = -INFINITY, mt_hi = -INFINITY;
    const bool diagonal = j0 == q0;
    ST_UNROLL
    for (int n = 0; n < kBc / 8; ++n) {
      ST_UNROLL
      for (int r = 0; r < 4; ++r) {
        const int key = j0 + 8 * n + 2 * t + (r & 1);
        const int row = r < 2 ? row_lo : row_hi;
        s[n][r] = !diagonal || key <= row ? s[n][r] * scale_log2 : -INFINITY;
      }
      mt_lo = fmaxf(mt_lo, fmaxf(s[n][0], s[n][1]));
      mt_hi = fmaxf(mt_hi, fmaxf(s[n][2], s[n][3]));
    }
    ST_UNROLL
    for (int x = 1; x <= 2; x <<= 1) {
      mt_lo = fmaxf(mt_lo, __shfl_xor_sync(kFullMask, mt_lo, x));
      mt_hi = fmaxf(mt_hi, __shfl_xor_sync(kFullMask, mt_hi, x));
    }

    // 2d. Online softmax: rescale by 2^(m_old - m_new) (0 on the first tile), P = 2^(s - m).
    const float mn_lo = fmaxf(m_lo, mt_lo), mn_hi = fmaxf(m_hi, mt_hi);
    const float alpha_lo = exp2f(m_lo - mn_lo), alpha_hi = exp2f(m_hi - mn_hi);
    m_lo = mn_lo;
    m_hi = mn_hi;
    float sum_lo = 0.0f, sum_hi = 0.0f;
    ST_UNROLL
    for (int n = 0; n < kBc / 8; ++n) {
      s[n][0] = exp2f(s[n][0] - mn_lo);
      s[n][1] = exp2f(s[n][1] - mn_lo);
      s[n][2] = exp2f(s[n][2] - mn_hi);
      s[n][3] = exp2f(s[n][3] - mn_hi);
      sum_lo += s[n][0] + s[n][1];
      sum_hi += s[n][2] + s[n][3];
    }
    l_lo = l_lo * alpha_lo + sum_lo;
    l_hi = l_hi * alpha_hi + sum_hi;
    ST_UNROLL
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= alpha_lo;
      o[n][1] *= alpha_lo;
      o[n][2] *= alpha_hi;
      o[n][3] *= alpha_hi;
    }

    // 2e. O += P V over 16-key chunks: P's A fragment is S tiles 2c, 2c+1 (C layout) rounded to
    // T; B[k][n] = V[key k][d n] is V stored k-major: ldmatrix.x4.trans gives the B registers of
    // two 8-column d tiles (lane l: key 16c + l % 16, columns 8 (n + l / 16)).
    ST_UNROLL
    for (int c = 0; c < kBc / 16; ++c) {
      const uint32_t pf[4] = {
          pack_half2(from_float<T>(s[2 * c][0]), from_float<T>(s[2 * c][1])),
          pack_half2(from_float<T>(s[2 * c][2]), from_float<T>(s[2 * c][3])),
          pack_half2(from_float<T>(s[2 * c + 1][0]), from_float<T>(s[2 * c + 1][1])),
          pack_half2(from_float<T>(s[2 * c + 1][2]), from_float<T>(s[2 * c + 1][3]))};
      ST_UNROLL
      for (int n = 0; n < D / 8; n += 2) {
        uint32_t vf[4];
        ldmatrix<4, true>(vf, &smem[sv + size_t(16 * c + lane % 16) * kLd + 8 * (n + lane / 16)]);
        const uint32_t v0[2] = {vf[0], vf[1]}, v1[2] = {vf[2], vf[3]};
        mma_m16n8k16<T>(o[n], pf, v0, o[n]);
        mma_m16n8k16<T>(o[n + 1], pf, v1, o[n + 1]);
      }
    }
    __syncthreads();  // every warp is done with buffer buf: tile j + 2 may go there
  }

  // 3. Normalise by the row sums (quad-reduced now). The warp's 16 x D output goes through its
  //    own 16 rows of the Q tile in shared memory (its Q fragments are in registers since step
  //    1, and no other warp reads these rows), then to global memory as 16-byte packs, one
  //    whole row segment per lane per step (rows < T); lse in natural log.
  ST_UNROLL
  for (int x = 1; x <= 2; x <<= 1) {
    l_lo += __shfl_xor_sync(kFullMask, l_lo, x);
    l_hi += __shfl_xor_sync(kFullMask, l_hi, x);
  }
  const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
  const size_t so_lo = sq + size_t(16 * warp + g) * kLd, so_hi = so_lo + 8 * size_t(kLd);
  ST_UNROLL
  for (int n = 0; n < D / 8; ++n) {
    const int d = 8 * n + 2 * t;
    store_shared_pair<T>(smem, so_lo + size_t(d), o[n][0] * inv_lo, o[n][1] * inv_lo);
    store_shared_pair<T>(smem, so_hi + size_t(d), o[n][2] * inv_hi, o[n][3] * inv_hi);
  }
  __syncwarp();
  constexpr int kPacks = D / 8;
  ST_UNROLL
  for (int idx = lane; idx < 16 * kPacks; idx += 32) {
    const int r = idx / kPacks, c = (idx % kPacks) * 8, row = q0 + 16 * warp + r;
    if (row >= Tn) continue;
    const Pack<T> v = load_shared_pack(smem, sq + size_t(16 * warp + r) * kLd + size_t(c));
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
    if (row_lo < Tn) lse_bh[row_lo] = (m_lo + log2f(l_lo)) * kLn2;
    if (row_hi < Tn) lse_bh[row_hi] = (m_hi + log2f(l_hi)) * kLn2;
  }
}

template <class T, int D>
Status launch_forward(T* out, float* lse, const T* qkv, AttentionShape s, Stream stream) {
  const unsigned q_tiles = unsigned((s.seq + kBr - 1) / kBr);
  const float scale_log2 = kLog2e / std::sqrt(float(D));
  return launch(attention_forward_kernel<T, D>, dim3(q_tiles, unsigned(s.heads), unsigned(s.batch)),
                dim3(kThreads), smem_bytes<T, D>(), stream, out, lse, qkv, int(s.seq), int(s.heads),
                int(kv_heads_of(s)), scale_log2, is_aligned16(qkv), is_aligned16(out));
}

}  // namespace

template <class T>
Status attention_forward(T* out, float* lse, const T* qkv, AttentionShape s, Stream stream) {
  if (s.batch * s.heads == 0 || s.seq == 0) return kOk;
  if (s.batch > 65535 || s.heads > 65535 || s.seq > 0x7fffffffLL) {
    return attention_tiles::unsupported("attention_forward", "grid too large");
  }
  if (kv_heads_of(s) > s.heads || s.heads % kv_heads_of(s) != 0) {
    return attention_tiles::unsupported("attention_forward", "kv_heads must divide heads");
  }
  if (s.head_dim == 64) return launch_forward<T, 64>(out, lse, qkv, s, stream);
  if (s.head_dim == 128) return launch_forward<T, 128>(out, lse, qkv, s, stream);
  return attention_tiles::unsupported("attention_forward", "head_dim must be 64 or 128");
}

template Status attention_forward<BFloat16>(BFloat16*, float*, const BFloat16*, AttentionShape,
                                            Stream);
template Status attention_forward<Half>(Half*, float*, const Half*, AttentionShape, Stream);

}  // namespace shardtrain::kernels::ST_GPU_NS
