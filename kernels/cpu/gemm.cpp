// gemm.cpp — CPU GEMM through oneDNN's matmul primitive.
//
// Transposes are expressed as memory strides (no copies). Building a oneDNN primitive costs
// far more than a small matmul, so a plan is made once per full descriptor and cached; a
// training step reuses a few dozen shapes. alpha is an output scale, beta a sum post-op, bias
// oneDNN's own bias argument.
//
// 16-bit operands: bf16 runs as oneDNN's bf16 matmul (fp32 accumulation) where this CPU has
// one — AVX-512 (core) and up. Where oneDNN cannot build it (an AVX2-only CPU, or one capped by
// ONEDNN_MAX_CPU_ISA), and always for f16 (oneDNN's CPU f16 matmul needs AVX512-FP16), the
// operands are widened to fp32 in a thread-local workspace, the fp32 primitive runs, and a
// 16-bit C is narrowed back. Both forms multiply exact fp32 products of the 16-bit inputs and
// accumulate in fp32, so they differ only in summation order. The choice depends on the
// descriptor and the CPU alone: deterministic on a machine; logged at debug level once per
// descriptor.
#include "kernels/gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <dnnl.hpp>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "kernels/cpu/cpu_isa.h"
#include "kernels/elementwise.h"
#include "runtime/error.h"
#include "runtime/log.h"

namespace shardtrain::kernels {
namespace {

using dnnl::memory;
using Dims = memory::dims;

memory::data_type dnnl_type(DType t) {
  switch (t) {
    case DType::kF32:
      return memory::data_type::f32;
    case DType::kBF16:
      return memory::data_type::bf16;
    case DType::kF16:
      return memory::data_type::f16;
    case DType::kI32:
      break;
  }
  return memory::data_type::undef;
}

struct Engine {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
};

Engine& engine() {
  static Engine e;
  return e;
}

// Everything that determines a primitive.
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int, int, bool, bool, float, float,
                       int64_t, int64_t, int64_t, bool>;

Key key_of(const GemmDesc& d, bool has_bias) {
  return {d.shape.m,      d.shape.n,  d.shape.k,  d.shape.batch, int(d.ab_dtype),
          int(d.c_dtype), d.trans_a,  d.trans_b,  d.alpha,       d.beta,
          d.stride_a,     d.stride_b, d.stride_c, has_bias};
}

// (rows, cols) of a row-major operand of logical shape (r, c), stored transposed or not.
memory::desc operand_md(int64_t batch, int64_t r, int64_t c, bool trans, int64_t batch_stride,
                        DType t) {
  Dims dims = {batch, r, c};
  Dims strides = trans ? Dims{batch_stride, 1, r} : Dims{batch_stride, c, 1};
  return memory::desc(dims, dnnl_type(t), strides);
}

struct Compiled {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul prim;
};

Compiled make_primitive(const GemmDesc& d, bool has_bias) {
  const auto& s = d.shape;
  int64_t sa = d.stride_a ? d.stride_a : s.m * s.k;
  int64_t sb = d.stride_b ? d.stride_b : s.k * s.n;
  int64_t sc = d.stride_c ? d.stride_c : s.m * s.n;
  memory::desc a = operand_md(s.batch, s.m, s.k, d.trans_a, sa, d.ab_dtype);
  memory::desc b = operand_md(s.batch, s.k, s.n, d.trans_b, sb, d.ab_dtype);
  memory::desc c = operand_md(s.batch, s.m, s.n, false, sc, d.c_dtype);
  memory::desc bias;
  if (has_bias) bias = memory::desc({1, 1, s.n}, dnnl_type(d.ab_dtype), Dims{s.n, s.n, 1});
  dnnl::primitive_attr attr;
  if (d.alpha != 1.0f) attr.set_output_scales(0, {d.alpha});
  if (d.beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(d.beta);
    attr.set_post_ops(ops);
  }
  dnnl::matmul::desc md =
      has_bias ? dnnl::matmul::desc(a, b, bias, c) : dnnl::matmul::desc(a, b, c);
  dnnl::matmul::primitive_desc pd(md, attr, engine().engine);
  return {pd, dnnl::matmul(pd)};
}

// Where op(A) = A^T comes from on a CPU without AVX-512 (see make_plan).
enum class TransposedA {
  kInPlace,  // oneDNN reads the strided A (always with AVX-512, and every batched GEMM)
  kCopyA,    // A is copied out as op(A) (m,k), then the untransposed product runs
  kSwapped,  // C^T (n,m) = op(B)^T A runs untransposed (B copied out as (n,k)), C = its transpose
};

// How one descriptor runs: its own primitive, or the fp32 primitive of its widened form; and
// how a transposed A is handled.
struct Plan {
  bool widened;
  TransposedA trans_a;
  Compiled compiled;
};

GemmDesc widened_desc(const GemmDesc& d) {
  GemmDesc w = d;
  w.ab_dtype = DType::kF32;
  w.c_dtype = DType::kF32;
  return w;
}

// A transposed A (the weight gradients X^T dY) on a CPU without AVX-512: oneDNN 2.6 has no
// brgemm there and its AVX2 sgemm runs that case at half speed (measured on the step of
// bench/step_bench.py: ~80 GFLOP/s against ~160 for the same shapes untransposed, 2 threads,
// AMD EPYC capped at AVX2), so one operand is copied out first and an untransposed primitive
// runs: either A as op(A) (m,k) — an m*k copy — or, when B is the smaller operand, B as
// op(B)^T (n,k) for the product C^T = op(B)^T A, whose (n,m) result is transposed into C — an
// n*k + m*n copy. The smaller copy wins: for the tied head's gradient (m = vocab 8192, n = 256,
// k = 2048 tokens) that is 2.6 M elements instead of 16.8 M (11 ms of the direct form's 51 ms
// there). The choice depends on the shape alone. With AVX-512 the brgemm kernels take either
// layout at full speed and nothing is copied.
TransposedA transposed_a_form(const GemmDesc& d, bool has_bias) {
  const auto& s = d.shape;
  if (!d.trans_a || s.batch != 1 || cpu::onednn_has_avx512()) return TransposedA::kInPlace;
  const bool swappable = !d.trans_b && !has_bias;
  return swappable && s.n * (s.k + s.m) < s.k * s.m ? TransposedA::kSwapped : TransposedA::kCopyA;
}

// The untransposed fp32-or-native primitive a plan runs: d itself, with A copied out, or the
// swapped product C^T (n,m) = op(B)^T (n,k) A (k,m) with alpha and no beta (added in the
// transpose back).
GemmDesc primitive_desc_of(const GemmDesc& d, TransposedA form) {
  GemmDesc run = d;
  if (form == TransposedA::kCopyA) run.trans_a = false;
  if (form == TransposedA::kSwapped) {
    run.shape = {d.shape.n, d.shape.m, d.shape.k, 1};
    run.trans_a = run.trans_b = false;
    run.beta = 0.0f;
    run.c_dtype = DType::kF32;
    run.stride_a = run.stride_b = run.stride_c = 0;
  }
  return run;
}

Plan make_plan(const GemmDesc& d, bool has_bias) {
  const TransposedA form = transposed_a_form(d, has_bias);
  const GemmDesc run = primitive_desc_of(d, form);
  const char* why = "f16 matmul is not used on CPUs";
  if (d.ab_dtype == DType::kF32) return {false, form, make_primitive(run, has_bias)};
  if (d.ab_dtype == DType::kBF16) {
    try {
      return {false, TransposedA::kInPlace, make_primitive(d, has_bias)};
    } catch (const dnnl::error& e) {
      if (e.status != dnnl_unimplemented) throw;
    }
    why = "oneDNN has no bf16 matmul at this CPU's ISA";
  }
  const auto& s = d.shape;
  log_debug("gemm ", dtype_name(d.ab_dtype), " m=", s.m, " n=", s.n, " k=", s.k, " batch=", s.batch,
            ": computed in fp32 (", why, "; oneDNN ISA ", cpu::onednn_isa_name(), ")");
  return {true, form, make_primitive(widened_desc(run), has_bias)};
}

const Plan& plan_for(const GemmDesc& d, bool has_bias) {
  static std::mutex mu;
  static std::map<Key, Plan> cache;
  std::lock_guard<std::mutex> lock(mu);
  Key key = key_of(d, has_bias);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make_plan(d, has_bias)).first;
  return it->second;  // std::map nodes are stable
}

void execute(const Compiled& compiled, const void* a, const void* b, void* c, const void* bias) {
  const dnnl::matmul::primitive_desc& pd = compiled.pd;
  auto& e = engine();
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC, memory(pd.src_desc(), e.engine, const_cast<void*>(a))},
      {DNNL_ARG_WEIGHTS, memory(pd.weights_desc(), e.engine, const_cast<void*>(b))},
      {DNNL_ARG_DST, memory(pd.dst_desc(), e.engine, c)}};
  if (bias) args.emplace(DNNL_ARG_BIAS, memory(pd.bias_desc(), e.engine, const_cast<void*>(bias)));
  compiled.prim.execute(e.stream, args);
  e.stream.wait();
}

// Elements a batched operand spans: the last item's start plus one item (gaps between items
// are widened too; they are read, never written).
int64_t span(int64_t batch, int64_t stride, int64_t item) {
  return (batch - 1) * (stride ? stride : item) + item;
}

// n floats of a workspace vector, placed as the tracked workspace is (gemm_host_start_offset:
// where oneDNN runs its AVX2 sgemm, a widened or copied-out operand on a 32-byte boundary
// would slow the weight gradients as an activation there does).
float* placed(std::vector<float>& buf, int64_t n) {
  const int64_t offset = gemm_host_start_offset(MemCategory::kWorkspace) / int64_t(sizeof(float));
  buf.resize(size_t(n + 16 + offset));
  const auto p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((p + 63) / 64 * 64) + offset;
}

template <class T>
const float* widen_span(std::vector<float>& buf, const void* src, int64_t n) {
  float* out = placed(buf, n);
  cast(out, static_cast<const T*>(src), n);
  return out;
}

// dst (cols, rows) = the transpose of src (rows, cols), plus beta * dst when kAccumulate (one
// fused multiply-add per element, so either path rounds the same), in tiles of 8 x 8 floats:
// eight rows loaded, transposed in registers (AVX2's unpack/shuffle/permute network), eight
// contiguous rows stored; the ragged edges element by element. Rows of tiles spread over the
// threads.
template <bool kAccumulate>
void transpose_into(float* dst, const float* src, int64_t rows, int64_t cols, float beta) {
  const int64_t row_tiles = (rows + 7) / 8;
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
  for (int64_t t = 0; t < row_tiles; ++t) {
    const int64_t r0 = t * 8;
    int64_t c0 = 0;
#if defined(__AVX2__)
    if (r0 + 8 <= rows) {
      const __m256 vbeta = _mm256_set1_ps(beta);
      auto store = [&](float* p, __m256 x) {
        if constexpr (kAccumulate) x = _mm256_fmadd_ps(vbeta, _mm256_loadu_ps(p), x);
        _mm256_storeu_ps(p, x);
      };
      for (; c0 + 8 <= cols; c0 += 8) {
        __m256 v[8], u[8];
        for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(src + (r0 + i) * cols + c0);
        for (int i = 0; i < 8; i += 2) {
          u[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
          u[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
          v[i] = _mm256_shuffle_ps(u[i], u[i + 2], 0x44);
          v[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], 0xee);
          v[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0x44);
          v[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0xee);
        }
        for (int i = 0; i < 4; ++i) {
          store(dst + (c0 + i) * rows + r0, _mm256_permute2f128_ps(v[i], v[i + 4], 0x20));
          store(dst + (c0 + i + 4) * rows + r0, _mm256_permute2f128_ps(v[i], v[i + 4], 0x31));
        }
      }
    }
#endif
    const int64_t r1 = std::min(rows, r0 + 8);
    for (int64_t c = c0; c < cols; ++c) {
      for (int64_t r = r0; r < r1; ++r) {
        float& out = dst[c * rows + r];
        out = kAccumulate ? std::fma(beta, out, src[r * cols + c]) : src[r * cols + c];
      }
    }
  }
}

// n values of storage type T as fp32: the values themselves for fp32, else widened into buf.
template <class T>
const float* as_f32(std::vector<float>& buf, const void* src, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<const float*>(src);
  } else {
    return widen_span<T>(buf, src, n);
  }
}

// buf (cols, rows) = the transpose of src (rows, cols) in fp32 (16-bit values widened first).
template <class T>
const float* transposed_f32(std::vector<float>& buf, const void* src, int64_t rows, int64_t cols) {
  thread_local std::vector<float> wide;
  float* out = placed(buf, rows * cols);
  transpose_into<false>(out, as_f32<T>(wide, src, rows * cols), rows, cols, 0.0f);
  return out;
}

// Everything but a native primitive on the operands as stored: the plan's fp32 primitive on
// fp32 operands (16-bit ones widened; A or B copied out transposed where the plan says), and a
// 16-bit C narrowed back item by item (so a strided C's gaps are never written). T is the
// storage type of A and B.
template <class T>
void run_f32(const GemmDesc& d, const Plan& plan, const void* a, const void* b, void* c,
             const void* bias) {
  const auto& s = d.shape;
  thread_local std::vector<float> wa, wb, wc, wbias, wt;
  const float* a32 = plan.trans_a == TransposedA::kCopyA
                         ? transposed_f32<T>(wa, a, s.k, s.m)
                         : as_f32<T>(wa, a, span(s.batch, d.stride_a, s.m * s.k));
  const float* b32 = plan.trans_a == TransposedA::kSwapped
                         ? transposed_f32<T>(wb, b, s.k, s.n)
                         : as_f32<T>(wb, b, span(s.batch, d.stride_b, s.k * s.n));
  const float* bias32 = bias ? as_f32<T>(wbias, bias, s.n) : nullptr;
  const int64_t item = s.m * s.n, stride = d.stride_c ? d.stride_c : item;
  float* c32 = static_cast<float*>(c);
  if (d.c_dtype != DType::kF32) {
    wc.resize(size_t(span(s.batch, d.stride_c, item)));
    c32 = wc.data();
    if (d.beta != 0.0f) {
      for (int64_t i = 0; i < s.batch; ++i)
        cast(c32 + i * stride, static_cast<const T*>(c) + i * stride, item);
    }
  }
  if (plan.trans_a == TransposedA::kSwapped) {  // C^T = op(B)^T A, then C = (C^T)^T + beta C
    wt.resize(size_t(item));
    execute(plan.compiled, b32, a32, wt.data(), nullptr);
    if (d.beta != 0.0f) {
      transpose_into<true>(c32, wt.data(), s.n, s.m, d.beta);
    } else {
      transpose_into<false>(c32, wt.data(), s.n, s.m, 0.0f);
    }
  } else {
    execute(plan.compiled, a32, b32, c32, bias32);
  }
  if constexpr (!std::is_same_v<T, float>) {
    if (d.c_dtype != DType::kF32) {
      for (int64_t i = 0; i < s.batch; ++i)
        cast(static_cast<T*>(c) + i * stride, c32 + i * stride, item);
    }
  }
}

}  // namespace

// oneDNN 2.6's AVX2 sgemm (no AVX-512) runs the weight gradients — k = the tokens of a
// micro-batch, the primitive's B operand an activation or its gradient — at about half speed
// when that B starts on a 32-byte boundary, and at full speed 16 bytes past one (bench/
// gemm_peak at 256x8192x2048 and 256x1024x2048, AMD EPYC capped at AVX2, 2 threads: ~96-100
// GFLOP/s at offsets 0, 32, 2048; ~175-185 at 4, 8, 16, 48; the untransposed forward and
// input-gradient shapes do not care). So where oneDNN has no AVX-512, activations and the
// backward's workspace start 16 bytes past a cache line; their other users (the loop kernels)
// load unaligned anyway. Measured on the step of bench/step_bench.py there: the weight-gradient
// GEMMs 208-313 -> 145-152 ms, the step 507-842 -> 472-481 ms, losses and norms bitwise the
// same (moving every category gained less: 553-668 ms). Parameters, gradients and optimizer state
// stay on the boundary, and nothing moves with AVX-512, where no offset made a difference.
int64_t gemm_host_start_offset(MemCategory category) {
  if (cpu::onednn_has_avx512()) return 0;
  return category == MemCategory::kActivations || category == MemCategory::kWorkspace ? 16 : 0;
}

void gemm(const GemmDesc& desc, const void* a, const void* b, void* c, const void* bias) {
  const auto& s = desc.shape;
  ST_CHECK(s.m >= 0 && s.n >= 0 && s.k >= 0 && s.batch >= 1, "bad gemm shape");
  ST_CHECK(desc.c_dtype == DType::kF32 || desc.c_dtype == desc.ab_dtype,
           "gemm output must be f32 or the input dtype");
  // oneDNN scales the bias together with the product; nothing here needs both, so refuse.
  ST_CHECK(bias == nullptr || desc.alpha == 1.0f, "gemm with bias requires alpha == 1");
  if (s.m == 0 || s.n == 0) return;
  const Plan& plan = plan_for(desc, bias != nullptr);
  if (!plan.widened && plan.trans_a == TransposedA::kInPlace) {
    execute(plan.compiled, a, b, c, bias);
  } else if (desc.ab_dtype == DType::kF32) {
    run_f32<float>(desc, plan, a, b, c, bias);
  } else if (desc.ab_dtype == DType::kBF16) {
    run_f32<BFloat16>(desc, plan, a, b, c, bias);
  } else {
    run_f32<Half>(desc, plan, a, b, c, bias);
  }
}

}  // namespace shardtrain::kernels
