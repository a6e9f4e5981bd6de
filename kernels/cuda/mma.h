// mma.h — the warp-level tensor-core product D = A B + C, m16n8k16, 16-bit inputs, fp32
// accumulators: one instruction on the GPU, the same contract under kernels/emu.
//
// Why a wrapper and a map: `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32`
// spreads the 16x16 A, 16x8 B and 16x8 C/D tiles over the 32 lanes of a warp in a fixed
// per-lane layout. On the GPU the wrapper is inline PTX; under emu it gathers every lane's
// registers through the warp exchange (all 32 lanes must take part, as on the GPU), rebuilds
// the tiles with the layout map below, multiplies, and scatters D back. The map is written once
// (mma_a_coord / mma_b_coord / mma_c_coord) from the PTX ISA, section "Matrix Fragments for
// mma.m16n8k16 with floating point type" (PTX ISA 8.x/9.x, warp-level matrix instructions):
//
//   groupID = laneid >> 2, threadID_in_group = laneid % 4   (below: g, t)
//   A (16x16, .row), 4 x .b32 = a0..a7 (ai: register i/2, half i%2, low half first):
//     row = g      for a0, a1, a4, a5;   g + 8 for a2, a3, a6, a7
//     col = 2t + (i & 1)  for i < 4;     2t + (i & 1) + 8 for i >= 4
//   B (16x8, .col), 2 x .b32 = b0..b3:
//     row (k) = 2t + (i & 1) for i < 2;  2t + (i & 1) + 8 for i >= 2;   col (n) = g
//   C, D (16x8, .f32), 4 x f32 = c0..c3:
//     row = g for c0, c1;  g + 8 for c2, c3;   col = 2t + (i & 1)
//
// Kernels use the same functions to load their fragments, so the tests pin the map itself
// against entries read off those tables (tests/kernels/mma_emu_test.cpp).
//
// Numerics under emu: 16-bit x 16-bit products are exact in fp32 (bf16: 8 x 8 significant
// bits; f16: 11 x 11 = 22 <= 24), so D = C + sum_k A[m][k] B[k][n] is summed in fp32 in k order.
// The hardware's internal order/width of the 16-term sum is unspecified; results agree with it
// to fp32 accumulation error (K * 2^-24 relative to sum |a b|), which is what tests allow.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/launch.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::ST_GPU_NS {

// (row, col) of one fragment element inside its tile.
struct FragCoord {
  int row, col;
};

// A (16 x 16): register reg in 0..3, half in 0..1 (element a_{2 reg + half}).
__host__ __device__ constexpr FragCoord mma_a_coord(int lane, int reg, int half) {
  return {(lane >> 2) + 8 * (reg & 1), 2 * (lane & 3) + half + 8 * (reg >> 1)};
}
// B (16 x 8, k x n): register reg in 0..1, half in 0..1 (element b_{2 reg + half}).
__host__ __device__ constexpr FragCoord mma_b_coord(int lane, int reg, int half) {
  return {2 * (lane & 3) + half + 8 * reg, lane >> 2};
}
// C and D (16 x 8): register reg in 0..3 (element c_reg).
__host__ __device__ constexpr FragCoord mma_c_coord(int lane, int reg) {
  return {(lane >> 2) + 8 * (reg >> 1), 2 * (lane & 3) + (reg & 1)};
}

// Two 16-bit values in one .b32 register, the lower-indexed element in the low half.
template <class T>
__host__ __device__ __forceinline__ uint32_t pack_half2(T lo, T hi) {
  return uint32_t(lo.bits) | (uint32_t(hi.bits) << 16);
}

#if !defined(__CUDACC__)
namespace mma_emu {

// One lane's operands, deposited in the warp exchange.
struct Lane {
  const uint32_t* a;  // 4
  const uint32_t* b;  // 2
  const float* c;     // 4
  float* d;           // 4 (may alias c)
};

template <class T>
float half_to_float(uint32_t reg, int half) {
  T v;
  v.bits = uint16_t(reg >> (16 * half));
  return to_float(v);
}

// Runs once per warp-wide mma, on the last lane to arrive (emu.h: WarpOp::kWide).
template <class T>
void warp_mma(void* const* lane_data, unsigned /*mask*/) {
  float A[16][16], B[16][8], C[16][8];
  // 1. Gather: rebuild the tiles from every lane's registers through the layout map.
  for (int l = 0; l < 32; ++l) {
    const Lane& x = *static_cast<const Lane*>(lane_data[l]);
    for (int r = 0; r < 4; ++r) {
      for (int h = 0; h < 2; ++h) {
        const FragCoord p = mma_a_coord(l, r, h);
        A[p.row][p.col] = half_to_float<T>(x.a[r], h);
      }
      const FragCoord q = mma_c_coord(l, r);
      C[q.row][q.col] = x.c[r];
    }
    for (int r = 0; r < 2; ++r) {
      for (int h = 0; h < 2; ++h) {
        const FragCoord p = mma_b_coord(l, r, h);
        B[p.row][p.col] = half_to_float<T>(x.b[r], h);
      }
    }
  }
  // 2. Multiply (exact products, fp32 sum in k order) and scatter D; every C was read above,
  // so D may overwrite it.
  for (int l = 0; l < 32; ++l) {
    const Lane& x = *static_cast<const Lane*>(lane_data[l]);
    for (int r = 0; r < 4; ++r) {
      const FragCoord q = mma_c_coord(l, r);
      float acc = C[q.row][q.col];
      for (int k = 0; k < 16; ++k) acc += A[q.row][k] * B[k][q.col];
      x.d[r] = acc;
    }
  }
}

}  // namespace mma_emu
#endif

// D = A B + C for the warp's 16x8 tile; every lane of the warp must call it (converged).
// T is BFloat16 or Half (the storage type of A and B).
template <class T>
ST_DEVICE void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                            const float (&c)[4]) {
#if defined(__CUDACC__)
  static_assert(sizeof(T) == 2, "mma_m16n8k16: bf16 or f16 inputs");
  if constexpr (std::is_same_v<T, BFloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
  }
#else
  static_assert(sizeof(T) == 2, "mma_m16n8k16: bf16 or f16 inputs");
  mma_emu::Lane lane{a, b, c, d};
  emu::detail::warp_collective(emu::detail::WarpOp::kWide, kFullMask,
                               reinterpret_cast<uint64_t>(&lane), 0, 32, &mma_emu::warp_mma<T>);
#endif
}

}  // namespace shardtrain::kernels::ST_GPU_NS
