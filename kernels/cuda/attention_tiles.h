// attention_tiles.h — the tile geometry and shared-memory staging that the attention forward
// (attention.cu) and backward (attention_backward.cu) kernels share, so both walk the same
// 64 x 64 causal tiles with the same padded shared rows and fragment loads.
//
// Why these numbers: 4 warps x 16 rows (one mma M each) = 64-row tiles (the forward's query
// tile at D = 64 is two of them); key tiles of the same size keep the causal diagonal aligned
// (every visited tile holds a key <= each of its rows, and a key tile is seen by every query row at
// or after it); rows padded by 8 elements = 16 bytes make the 32-bit fragment loads (row g, word t)
// land on banks 4g + t: conflict-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma.h"

namespace shardtrain::kernels::ST_GPU_NS::attention_tiles {

inline constexpr int kWarps = 4;
inline constexpr int kThreads = 32 * kWarps;
inline constexpr int kBr = 16 * kWarps;  // query rows per tile: 16 (one mma M) per warp
inline constexpr int kBc = 64;           // keys per tile
inline constexpr int kPad = 8;           // shared row padding in elements (16 bytes)
static_assert(kBr == kBc, "the causal tile arguments need aligned, equal tiles");
inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

// 16 bytes into shared memory (one STS.128 on the GPU; the index is 8-element aligned).
template <class T>
ST_DEVICE void store_shared_pack(const SharedSpan<T>& s, size_t i, const Pack<T>& v) {
#if defined(__CUDACC__)
  *reinterpret_cast<uint4*>(&s[i]) = *reinterpret_cast<const uint4*>(&v);
#else
  for (int e = 0; e < Pack<T>::kN; ++e) s[i + size_t(e)] = v.v[e];
#endif
}

// 16 bytes from shared memory (one LDS.128; the index is 8-element aligned).
template <class T>
ST_DEVICE Pack<T> load_shared_pack(const SharedSpan<T>& s, size_t i) {
  Pack<T> v;
#if defined(__CUDACC__)
  *reinterpret_cast<uint4*>(&v) = *reinterpret_cast<const uint4*>(&s[i]);
#else
  for (int e = 0; e < Pack<T>::kN; ++e) v.v[e] = s[i + size_t(e)];
#endif
  return v;
}

// Elements i, i+1 from two floats, rounded, as one STS.32 (i is even).
template <class T>
ST_DEVICE void store_shared_pair(const SharedSpan<T>& s, size_t i, float a, float b) {
#if defined(__CUDACC__)
  *reinterpret_cast<uint32_t*>(&s[i]) = pack_half2<T>(from_float<T>(a), from_float<T>(b));
#else
  s[i] = from_float<T>(a);
  s[i + 1] = from_float<T>(b);
#endif
}

// Elements i, i+1 as one .b32 register (one LDS.32; i is even).
template <class T>
ST_DEVICE uint32_t load_shared_pair(const SharedSpan<T>& s, size_t i) {
#if defined(__CUDACC__)
  return *reinterpret_cast<const uint32_t*>(&s[i]);
#else
  return pack_half2<T>(T(s[i]), T(s[i + 1]));
#endif
}

// Rows r0 .. r0+63 of one head (row t at src + t*stride, D contiguous elements) into shared
// rows base + r*(D+kPad); rows >= T are zero. 16-byte packs when the source is aligned.
// kN: the block's threads (all take part).
template <class T, int D, int kN = kThreads>
ST_DEVICE void stage_tile(const SharedSpan<T>& s, size_t base, const T* src, long long stride,
                          int r0, int Tn, bool aligned) {
  constexpr int kPacks = D / 8;  // 8 elements of 2 bytes per pack
  for (int idx = int(threadIdx.x); idx < kBr * kPacks; idx += kN) {
    const int r = idx / kPacks, c = (idx % kPacks) * 8;
    Pack<T> v;
    if (r0 + r < Tn) {
      const T* p = src + (long long)(r0 + r) * stride + c;
      if (aligned) {
        v = load_pack(p);
      } else {
        ST_UNROLL
        for (int e = 0; e < 8; ++e) v.v[e] = p[e];
      }
    } else {
      ST_UNROLL
      for (int e = 0; e < 8; ++e) v.v[e].bits = 0;
    }
    store_shared_pack(s, base + size_t(r) * (D + kPad) + size_t(c), v);
  }
}

// stage_tile through cp.async (the source 16-byte aligned): the copies join the thread's open
// group; they land after cp_async_commit + cp_async_wait and a barrier.
template <class T, int D, int kN = kThreads>
ST_DEVICE void stage_tile_async(const SharedSpan<T>& s, size_t base, const T* src, long long stride,
                                int r0, int Tn) {
  constexpr int kPacks = D / 8;
  for (int idx = int(threadIdx.x); idx < kBr * kPacks; idx += kN) {
    const int r = idx / kPacks, c = (idx % kPacks) * 8;
    const bool valid = r0 + r < Tn;
    cp_async_16(s, base + size_t(r) * (D + kPad) + size_t(c),
                valid ? src + (long long)(r0 + r) * stride + c : src, valid);
  }
}

// A tile into a buffer that a later cp_async_wait + barrier publishes: stage_tile_async when the
// source is 16-byte aligned (the copies join the thread's open group), else stage_tile's plain
// loads and stores (visible after the same barrier).
template <class T, int D, int kN = kThreads>
ST_DEVICE void stage_tile_pipelined(const SharedSpan<T>& s, size_t base, const T* src,
                                    long long stride, int r0, int Tn, bool aligned) {
  if (aligned) {
    stage_tile_async<T, D, kN>(s, base, src, stride, r0, Tn);
  } else {
    stage_tile<T, D, kN>(s, base, src, stride, r0, Tn, false);
  }
}

// What a kernel does not cover (another head_dim, a grid past CUDA's limits), reported the
// way each world reports a bad launch: an error status on the GPU, an emu::Fault under emu.
inline Status unsupported(const char* kernel, const char* what) {
#if defined(__CUDACC__)
  (void)kernel;
  (void)what;
  return cudaErrorInvalidValue;
#else
  emu::detail::fail(std::string(kernel) + ": " + what);
#endif
}

}  // namespace shardtrain::kernels::ST_GPU_NS::attention_tiles
