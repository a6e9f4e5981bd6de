// mma.h — the warp-level tensor-core product D = A B + C, m16n8k16, 16-bit inputs, fp32
// accumulators, and ldmatrix (shared memory -> fragments): one instruction each on the GPU, the
// same contract under kernels/emu.
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
#include <cstring>
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

// ldmatrix: one lane's row address and its destination registers.
struct LdLane {
  const unsigned char* row;  // 16 bytes of shared memory
  uint32_t* r;               // kN registers
};

// Runs once per warp-wide ldmatrix. Lane l's address is row l % 8 of matrix l / 8 (only lanes
// below 8 kN are read); every lane receives, per matrix i, row g = lane / 4, columns 2t, 2t + 1
// (t = lane % 4) — or with kTrans the transposed matrix's, i.e. rows 2t, 2t + 1 of column g.
template <int kN, bool kTrans>
void warp_ldmatrix(void* const* lane_data, unsigned /*mask*/) {
  uint16_t m[kN][8][8];
  for (int l = 0; l < 8 * kN; ++l) {
    const LdLane& x = *static_cast<const LdLane*>(lane_data[l]);
    if (reinterpret_cast<uintptr_t>(x.row) % 16 != 0) {
      emu::detail::fail("ldmatrix: row address not 16-byte aligned");
    }
    emu::detail::shared_access(x.row, 16, false, false);
    std::memcpy(m[l / 8][l % 8], x.row, 16);
  }
  for (int l = 0; l < 32; ++l) {
    const LdLane& x = *static_cast<const LdLane*>(lane_data[l]);
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < kN; ++i) {
      const uint16_t lo = kTrans ? m[i][2 * t][g] : m[i][g][2 * t];
      const uint16_t hi = kTrans ? m[i][2 * t + 1][g] : m[i][g][2 * t + 1];
      x.r[i] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
  }
}

}  // namespace mma_emu
#endif

// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16: kN 8x8 matrices of 16-bit elements
// from shared memory into the mma fragment layout (PTX ISA, "ldmatrix"). Lane l passes the
// address of row l % 8 of matrix l / 8 (16 contiguous bytes, 16-byte aligned; lanes >= 8 kN
// pass any valid address); r[i] gets matrix i's element (g, 2t..2t+1) — the layout of an A
// register or a non-transposed B register — or with kTrans element (2t..2t+1, g), which loads
// a B operand stored k-major (B[k][n] rows) directly. Every lane of the warp must call it.
#if defined(__CUDACC__)
template <int kN, bool kTrans, class T>
ST_DEVICE void ldmatrix(uint32_t (&r)[kN], const T* row) {
  static_assert(kN == 1 || kN == 2 || kN == 4, "ldmatrix: x1, x2 or x4");
  const unsigned a = unsigned(__cvta_generic_to_shared(row));
  if constexpr (kN == 4 && kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  } else if constexpr (kN == 4) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  } else if constexpr (kN == 2 && kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(a));
  } else if constexpr (kN == 2) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(a));
  } else if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(a));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
  }
}
#else
template <int kN, bool kTrans, class T>
void ldmatrix(uint32_t (&r)[kN], emu::SharedPtr<T> row) {
  static_assert(kN == 1 || kN == 2 || kN == 4, "ldmatrix: x1, x2 or x4");
  static_assert(sizeof(T) == 2, "ldmatrix: 16-bit elements");
  mma_emu::LdLane lane{reinterpret_cast<const unsigned char*>(row.raw()), r};
  emu::detail::warp_collective(emu::detail::WarpOp::kWide, kFullMask,
                               reinterpret_cast<uint64_t>(&lane), 0, 32,
                               &mma_emu::warp_ldmatrix<kN, kTrans>);
}
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
