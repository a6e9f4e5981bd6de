// gemm.cpp — CPU GEMM through oneDNN's matmul primitive.
//
// Transposes are expressed as memory strides (no copies). Building a oneDNN primitive costs
// far more than a small matmul, so primitives are cached by their full descriptor; a training
// step reuses a few dozen shapes. alpha is an output scale, beta a sum post-op, bias oneDNN's
// own bias argument. f16 is computed in fp32: inputs are widened into a thread-local
// workspace and C is narrowed back (oneDNN's CPU f16 matmul needs AVX512-FP16 hardware).
#include "kernels/gemm.h"

#include <dnnl.hpp>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "kernels/elementwise.h"
#include "runtime/error.h"

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

void run(const GemmDesc& d, const void* a, const void* b, void* c, const void* bias) {
  static std::mutex mu;
  static std::map<Key, Compiled> cache;
  const Compiled* compiled;
  {
    std::lock_guard<std::mutex> lock(mu);
    Key key = key_of(d, bias != nullptr);
    auto it = cache.find(key);
    if (it == cache.end()) it = cache.emplace(key, make_primitive(d, bias != nullptr)).first;
    compiled = &it->second;  // std::map nodes are stable
  }
  const dnnl::matmul::primitive_desc& pd = compiled->pd;
  auto& e = engine();
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC, memory(pd.src_desc(), e.engine, const_cast<void*>(a))},
      {DNNL_ARG_WEIGHTS, memory(pd.weights_desc(), e.engine, const_cast<void*>(b))},
      {DNNL_ARG_DST, memory(pd.dst_desc(), e.engine, c)}};
  if (bias) args.emplace(DNNL_ARG_BIAS, memory(pd.bias_desc(), e.engine, const_cast<void*>(bias)));
  compiled->prim.execute(e.stream, args);
  e.stream.wait();
}

}  // namespace

void gemm(const GemmDesc& desc, const void* a, const void* b, void* c, const void* bias) {
  const auto& s = desc.shape;
  ST_CHECK(s.m >= 0 && s.n >= 0 && s.k >= 0 && s.batch >= 1, "bad gemm shape");
  ST_CHECK(desc.c_dtype == DType::kF32 || desc.c_dtype == desc.ab_dtype,
           "gemm output must be f32 or the input dtype");
  // oneDNN scales the bias together with the product; nothing here needs both, so refuse.
  ST_CHECK(bias == nullptr || desc.alpha == 1.0f, "gemm with bias requires alpha == 1");
  if (s.m == 0 || s.n == 0) return;
  if (desc.ab_dtype != DType::kF16) {
    run(desc, a, b, c, bias);
    return;
  }
  // f16: widen A, B (and bias) to fp32, compute, narrow C if it is f16.
  ST_CHECK(desc.stride_a == 0 && desc.stride_b == 0 && desc.stride_c == 0,
           "strided batched f16 gemm is not supported");
  const int64_t na = s.batch * s.m * s.k, nb = s.batch * s.k * s.n, nc = s.batch * s.m * s.n;
  thread_local std::vector<float> wa, wb, wc, wbias;
  wa.resize(size_t(na));
  wb.resize(size_t(nb));
  cast(wa.data(), static_cast<const Half*>(a), na);
  cast(wb.data(), static_cast<const Half*>(b), nb);
  if (bias) {
    wbias.resize(size_t(s.n));
    cast(wbias.data(), static_cast<const Half*>(bias), s.n);
  }
  GemmDesc d32 = desc;
  d32.ab_dtype = DType::kF32;
  d32.c_dtype = DType::kF32;
  if (desc.c_dtype == DType::kF32) {
    run(d32, wa.data(), wb.data(), c, bias ? wbias.data() : nullptr);
    return;
  }
  wc.resize(size_t(nc));
  if (desc.beta != 0.0f) cast(wc.data(), static_cast<const Half*>(c), nc);
  run(d32, wa.data(), wb.data(), wc.data(), bias ? wbias.data() : nullptr);
  cast(static_cast<Half*>(c), wc.data(), nc);
}

}  // namespace shardtrain::kernels
