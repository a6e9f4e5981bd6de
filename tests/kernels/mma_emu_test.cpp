// mma_emu_test.cpp — the tensor-core fragment map, the emulated mma.sync m16n8k16 and ldmatrix
// (kernels/cuda/mma.h): the map is pinned against entries read off the PTX ISA tables ("Matrix
// Fragments for mma.m16n8k16 with floating point type") and must cover each tile exactly once;
// a warp-level mma run by kernels/emu must equal a naive matmul of the same tiles; ldmatrix
// (plain and .trans) must deliver exactly the fragments that map assigns.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/mma.h"
#include "tests/kernels/test_util.h"

namespace shardtrain::kernels::cuda_emu {
namespace {

// ---- The map --------------------------------------------------------------------------------

// Every (lane, register, half) lands on a distinct element, and all rows x cols are hit.
TEST(MmaFragments, MapsAreBijectionsOntoTheTiles) {
  std::vector<int> a(16 * 16, 0), b(16 * 8, 0), c(16 * 8, 0);
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      for (int h = 0; h < 2; ++h) {
        const FragCoord p = mma_a_coord(lane, r, h);
        ASSERT_TRUE(p.row >= 0 && p.row < 16 && p.col >= 0 && p.col < 16);
        ++a[size_t(p.row * 16 + p.col)];
      }
      const FragCoord q = mma_c_coord(lane, r);
      ASSERT_TRUE(q.row >= 0 && q.row < 16 && q.col >= 0 && q.col < 8);
      ++c[size_t(q.row * 8 + q.col)];
    }
    for (int r = 0; r < 2; ++r) {
      for (int h = 0; h < 2; ++h) {
        const FragCoord p = mma_b_coord(lane, r, h);
        ASSERT_TRUE(p.row >= 0 && p.row < 16 && p.col >= 0 && p.col < 8);
        ++b[size_t(p.row * 8 + p.col)];
      }
    }
  }
  for (int n : a) EXPECT_EQ(n, 1);
  for (int n : b) EXPECT_EQ(n, 1);
  for (int n : c) EXPECT_EQ(n, 1);
}

// Entries read off the PTX ISA tables. Lane 5: groupID 1, threadID_in_group 1. Lane 30:
// groupID 7, threadID_in_group 2.
TEST(MmaFragments, MatchesPtxTables) {
  auto eq = [](FragCoord p, int row, int col) { return p.row == row && p.col == col; };
  // A: a0,a1 (g, 2t..2t+1); a2,a3 (g+8, ...); a4,a5 (g, 2t+8..); a6,a7 (g+8, 2t+8..).
  EXPECT_TRUE(eq(mma_a_coord(5, 0, 0), 1, 2));
  EXPECT_TRUE(eq(mma_a_coord(5, 0, 1), 1, 3));
  EXPECT_TRUE(eq(mma_a_coord(5, 1, 0), 9, 2));
  EXPECT_TRUE(eq(mma_a_coord(5, 2, 1), 1, 11));
  EXPECT_TRUE(eq(mma_a_coord(30, 3, 1), 15, 13));
  // B: b0,b1 (k = 2t..2t+1, n = g); b2,b3 (k = 2t+8..).
  EXPECT_TRUE(eq(mma_b_coord(5, 0, 0), 2, 1));
  EXPECT_TRUE(eq(mma_b_coord(5, 1, 1), 11, 1));
  EXPECT_TRUE(eq(mma_b_coord(30, 1, 0), 12, 7));
  // C/D: c0,c1 (g, 2t..2t+1); c2,c3 (g+8, ...).
  EXPECT_TRUE(eq(mma_c_coord(5, 0), 1, 2));
  EXPECT_TRUE(eq(mma_c_coord(5, 3), 9, 3));
  EXPECT_TRUE(eq(mma_c_coord(30, 2), 15, 4));
}

// ---- The emulated instruction ---------------------------------------------------------------

// One 16x8 product per warp: warp w multiplies A_w (16x16, row-major), B_w (16x8, row-major,
// k x n) and adds C_w, each lane loading its fragments through the map, as kernels do.
template <class T>
__global__ void mma_tiles_kernel(float* d, const T* a, const T* b, const float* c) {
  const int lane = int(threadIdx.x) % 32, w = int(threadIdx.x) / 32;
  const T* aw = a + w * 256;      // (16,16)
  const T* bw = b + w * 128;      // (16,8)
  const float* cw = c + w * 128;  // (16,8)
  uint32_t ar[4], br[2];
  float cr[4], dr[4];
  for (int r = 0; r < 4; ++r) {
    const FragCoord p0 = mma_a_coord(lane, r, 0), p1 = mma_a_coord(lane, r, 1);
    ar[r] = pack_half2(aw[p0.row * 16 + p0.col], aw[p1.row * 16 + p1.col]);
    const FragCoord q = mma_c_coord(lane, r);
    cr[r] = cw[q.row * 8 + q.col];
  }
  for (int r = 0; r < 2; ++r) {
    const FragCoord p0 = mma_b_coord(lane, r, 0), p1 = mma_b_coord(lane, r, 1);
    br[r] = pack_half2(bw[p0.row * 8 + p0.col], bw[p1.row * 8 + p1.col]);
  }
  mma_m16n8k16<T>(dr, ar, br, cr);
  for (int r = 0; r < 4; ++r) {
    const FragCoord q = mma_c_coord(lane, r);
    d[w * 128 + q.row * 8 + q.col] = dr[r];
  }
}

// Runs `warps` independent tiles and compares with a naive fp64 matmul; returns the largest
// error relative to sum_k |a b| + |c| of its element (the scale fp32 accumulation error has).
template <class T>
double mma_rel_error(const std::vector<float>& af, const std::vector<float>& bf,
                     const std::vector<float>& c, int warps) {
  const auto a = testing::to_storage<T>(af), b = testing::to_storage<T>(bf);
  std::vector<float> d(size_t(warps) * 128, -1.0f);
  launch(mma_tiles_kernel<T>, dim3(1), dim3(unsigned(32 * warps)), 0, nullptr, d.data(), a.data(),
         b.data(), c.data());
  double worst = 0;
  for (int w = 0; w < warps; ++w) {
    for (int m = 0; m < 16; ++m) {
      for (int n = 0; n < 8; ++n) {
        double ref = c[size_t(w * 128 + m * 8 + n)], mag = std::fabs(ref);
        for (int k = 0; k < 16; ++k) {
          const double p = double(to_float(a[size_t(w * 256 + m * 16 + k)])) *
                           double(to_float(b[size_t(w * 128 + k * 8 + n)]));
          ref += p;
          mag += std::fabs(p);
        }
        const double got = d[size_t(w * 128 + m * 8 + n)];
        worst = std::max(worst, std::fabs(got - ref) / std::max(mag, 1e-30));
      }
    }
  }
  return worst;
}

std::vector<float> small_ints(size_t n, int seed, int range) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = float(int((i * 2654435761u + unsigned(seed)) % unsigned(2 * range + 1)) - range);
  return v;
}

// Small integers: every product and partial sum is an integer below 2^24, so exact.
TEST(MmaEmu, ExactOnSmallIntegers) {
  const int warps = 3;
  const auto a = small_ints(size_t(warps) * 256, 1, 8), b = small_ints(size_t(warps) * 128, 7, 8);
  const auto c = small_ints(size_t(warps) * 128, 3, 100);
  EXPECT_EQ(mma_rel_error<BFloat16>(a, b, c, warps), 0.0);
  EXPECT_EQ(mma_rel_error<Half>(a, b, c, warps), 0.0);
}

// Random reals: exact products, 16 fp32 additions (plus C) -> at most 17 * 2^-24 ≈ 17 * 6e-8
// of sum |a b| + |c|.
TEST(MmaEmu, RandomWithinFp32AccumulationError) {
  const int warps = 2;
  const auto a = testing::random_vector(warps * 256, 11),
             b = testing::random_vector(warps * 128, 12, 3.0f);
  const auto c = testing::random_vector(warps * 128, 13);
  const double tol = 17 * 6e-8;
  EXPECT_LE(mma_rel_error<BFloat16>(a, b, c, warps), tol);
  EXPECT_LE(mma_rel_error<Half>(a, b, c, warps), tol);
}

// The instruction is warp-wide: a block of 48 threads has a 16-lane second warp, whose mma
// names lanes that do not exist — a fault, not a silent partial product.
TEST(MmaEmu, PartialWarpFaults) {
  std::vector<float> a(2 * 256, 1.0f), b(2 * 128, 1.0f), c(2 * 128, 0.0f), d(2 * 128);
  const auto as = testing::to_storage<BFloat16>(a), bs = testing::to_storage<BFloat16>(b);
  try {
    launch(mma_tiles_kernel<BFloat16>, dim3(1), dim3(48), 0, nullptr, d.data(), as.data(),
           bs.data(), c.data());
    ADD_FAILURE() << "expected an emu fault";
  } catch (const emu::Fault& e) {
    EXPECT_NE(std::string(e.what()).find("do not exist"), std::string::npos) << e.what();
  }
}

// ---- ldmatrix -------------------------------------------------------------------------------

// One warp loads, from a 16 x 16 tile X in shared memory (row-major, rows padded to 24
// elements = 48 bytes so every row start is 16-byte aligned), with ldmatrix:
//   a  — A operand (x4): lane l addresses row l % 16, column 8 (l / 16);
//   bt — B operand of rows k = X rows, n = X columns 0..7 (x2.trans): lane l addresses row l % 16;
//   bn — B operand with B[k][n] = X[n][k] for n = X rows 0..7 (x2): lane l addresses row l % 8,
//        column 8 ((l / 8) % 2).
// The registers must be exactly what the mma fragment map (PTX tables) assigns to that lane.
__global__ void ldmatrix_kernel(uint32_t* out, const BFloat16* x, int misalign) {
  constexpr int kLd = 24;
  ST_SHARED(BFloat16, s, 16 * kLd);
  const int lane = int(threadIdx.x);
  for (int i = lane; i < 16 * 16; i += 32) s[size_t(i / 16 * kLd + i % 16)] = x[i];
  __syncwarp();
  uint32_t a[4], bt[2], bn[2];
  ldmatrix<4, false>(a, &s[size_t((lane % 16) * kLd + 8 * (lane / 16) + misalign)]);
  ldmatrix<2, true>(bt, &s[size_t((lane % 16) * kLd)]);
  ldmatrix<2, false>(bn, &s[size_t((lane % 8) * kLd + 8 * ((lane / 8) % 2))]);
  for (int r = 0; r < 4; ++r) out[lane * 8 + r] = a[r];
  for (int r = 0; r < 2; ++r) out[lane * 8 + 4 + r] = bt[r];
  for (int r = 0; r < 2; ++r) out[lane * 8 + 6 + r] = bn[r];
}

TEST(LdmatrixEmu, LoadsTheMmaFragmentLayout) {
  std::vector<BFloat16> x(256);
  for (int i = 0; i < 256; ++i) x[size_t(i)].bits = uint16_t(i * 37 + 5);  // distinct patterns
  std::vector<uint32_t> out(32 * 8);
  launch(ldmatrix_kernel, dim3(1), dim3(32), 0, nullptr, out.data(), x.data(), 0);
  auto el = [&](int row, int col) { return uint32_t(x[size_t(row * 16 + col)].bits); };
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      const FragCoord p0 = mma_a_coord(lane, r, 0), p1 = mma_a_coord(lane, r, 1);
      EXPECT_EQ(out[size_t(lane * 8 + r)], el(p0.row, p0.col) | el(p1.row, p1.col) << 16)
          << "A lane " << lane << " reg " << r;
    }
    for (int r = 0; r < 2; ++r) {
      const FragCoord p0 = mma_b_coord(lane, r, 0), p1 = mma_b_coord(lane, r, 1);
      // B[k][n] = X[k][n] (trans load) and B[k][n] = X[n][k] (plain load).
      EXPECT_EQ(out[size_t(lane * 8 + 4 + r)], el(p0.row, p0.col) | el(p1.row, p1.col) << 16)
          << "B (trans) lane " << lane << " reg " << r;
      EXPECT_EQ(out[size_t(lane * 8 + 6 + r)], el(p0.col, p0.row) | el(p1.col, p1.row) << 16)
          << "B (rows) lane " << lane << " reg " << r;
    }
  }
}

TEST(LdmatrixEmu, MisalignedRowFaults) {
  std::vector<BFloat16> x(256);
  std::vector<uint32_t> out(32 * 8);
  try {
    launch(ldmatrix_kernel, dim3(1), dim3(32), 0, nullptr, out.data(), x.data(), 1);
    ADD_FAILURE() << "expected an emu fault";
  } catch (const emu::Fault& e) {
    EXPECT_NE(std::string(e.what()).find("16-byte aligned"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace shardtrain::kernels::cuda_emu
