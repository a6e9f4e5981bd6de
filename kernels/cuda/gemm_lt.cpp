// gemm_lt.cpp — GemmLt (see gemm_lt.h): descriptors, the heuristic cache, the epilogues.
#include "kernels/cuda/gemm_lt.h"

#include <cstring>
#include <functional>
#include <unordered_map>

#include "runtime/cuda/device.h"

namespace shardtrain::kernels::cuda {

std::string CublasTraits::describe(cublasStatus_t status) {
  return str_cat(cublasLtGetStatusName(status), " (", int(status),
                 "): ", cublasLtGetStatusString(status));
}

namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kI32:
      break;
  }
  throw InternalError(str_cat("GemmLt: unsupported dtype ", dtype_name(t)));
}

// The largest power of two (at most 256, cuBLASLt's default assumption) dividing the address:
// kernels picked for 16-byte aligned operands must not be run on 2-byte aligned ones.
int64_t alignment(const void* p) {
  const auto u = reinterpret_cast<uintptr_t>(p);
  if (u == 0) return 256;
  const uintptr_t low = u & (~u + 1);
  return low > 256 ? 256 : int64_t(low);
}

struct PlanKey {
  int64_t m, n, k, batch, stride_a, stride_b, stride_c;
  int ab, c, epilogue;
  bool trans_a, trans_b, beta_zero;
  int64_t align_a, align_b, align_c, align_bias, align_aux;
  bool operator==(const PlanKey&) const = default;
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    size_t h = 1469598103934665603ull;
    auto mix = [&](int64_t v) { h = (h ^ std::hash<int64_t>()(v)) * 1099511628211ull; };
    for (int64_t v : {k.m, k.n, k.k, k.batch, k.stride_a, k.stride_b, k.stride_c, k.align_a,
                      k.align_b, k.align_c, k.align_bias, k.align_aux}) {
      mix(v);
    }
    mix(k.ab);
    mix(k.c);
    mix(k.epilogue);
    mix(int64_t(k.trans_a) | int64_t(k.trans_b) << 1 | int64_t(k.beta_zero) << 2);
    return h;
  }
};

// Descriptors and the chosen algorithm of one call shape; owned by the cache.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLASLt's A, B, C (= D)
  cublasLtMatmulAlgo_t algo{};
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

template <class T>
void set_attr(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attr, const T& value) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, attr, &value, sizeof value));
}

cublasLtMatrixLayout_t make_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                                   int64_t batch, int64_t stride) {
  cublasLtMatrixLayout_t layout = nullptr;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    const int32_t count = int32_t(batch);
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                  &count, sizeof count));
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
        layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
  }
  return layout;
}

}  // namespace

struct GemmLt::Cache {
  std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;
};

GemmLt::GemmLt(int64_t workspace_bytes)
    : workspace_bytes_(workspace_bytes), cache_(std::make_unique<Cache>()) {}

GemmLt::~GemmLt() {
  cache_.reset();  // descriptors before the handle
  if (handle_ != nullptr) cublasLtDestroy(handle_);
  if (workspace_ != nullptr && cudaFree(workspace_) != cudaSuccess) (void)cudaGetLastError();
}

int64_t GemmLt::cached_plans() const { return int64_t(cache_->plans.size()); }

void GemmLt::gemm(const GemmDesc& desc, const void* a, const void* b, void* c, const void* bias,
                  cudaStream_t stream) {
  ST_CHECK(bias == nullptr || desc.alpha == 1.0f, "GemmLt::gemm: bias needs alpha == 1");
  ST_CHECK(bias == nullptr || desc.shape.batch == 1, "GemmLt::gemm: bias needs batch == 1");
  run(bias ? Epilogue::kBias : Epilogue::kDefault, desc, a, b, c, bias, nullptr, stream);
}

void GemmLt::gemm_bias_gelu(const GemmDesc& desc, const void* a, const void* b, void* out,
                            void* pre, const void* bias, cudaStream_t stream) {
  ST_CHECK(bias != nullptr && pre != nullptr, "GemmLt::gemm_bias_gelu: bias and pre required");
  run(Epilogue::kGeluAuxBias, desc, a, b, out, bias, pre, stream);
}

void GemmLt::gemm_dgelu_bgrad(const GemmDesc& desc, const void* a, const void* b, void* dpre,
                              const void* pre, void* dbias, cudaStream_t stream) {
  ST_CHECK(dbias != nullptr && pre != nullptr, "GemmLt::gemm_dgelu_bgrad: dbias and pre required");
  run(Epilogue::kDGeluBGrad, desc, a, b, dpre, dbias, const_cast<void*>(pre), stream);
}

void GemmLt::run(Epilogue epilogue, const GemmDesc& desc, const void* a, const void* b, void* c,
                 const void* bias, void* aux, cudaStream_t stream) {
  const GemmShape& s = desc.shape;
  const bool fused = epilogue == Epilogue::kGeluAuxBias || epilogue == Epilogue::kDGeluBGrad;
  ST_CHECK(s.m >= 0 && s.n >= 0 && s.k >= 0 && s.batch >= 1, "GemmLt: bad shape");
  ST_CHECK(desc.c_dtype == DType::kF32 || desc.c_dtype == desc.ab_dtype,
           "GemmLt: c_dtype must be f32 or ab_dtype");
  if (fused) {
    ST_CHECK(s.batch == 1, "GemmLt: the GELU epilogues need batch == 1");
    ST_CHECK(s.n % 8 == 0, "GemmLt: the GELU epilogues need n % 8 == 0, got n = ", s.n);
    ST_CHECK(desc.alpha == 1.0f && desc.beta == 0.0f,
             "GemmLt: the GELU epilogues need alpha 1, beta 0");
  }
  if (s.m == 0 || s.n == 0) return;

  // 1. Lazily bind to the GPU: handle and workspace on first use.
  if (handle_ == nullptr) {
    CUBLAS_CHECK(cublasLtCreate(&handle_));
    CUDA_CHECK(cudaMalloc(&workspace_, size_t(workspace_bytes_)));
  }

  // 2. The plan for this call shape: descriptors + heuristic, made once.
  const PlanKey key{s.m,
                    s.n,
                    s.k,
                    s.batch,
                    desc.stride_a,
                    desc.stride_b,
                    desc.stride_c,
                    int(desc.ab_dtype),
                    int(desc.c_dtype),
                    int(epilogue),
                    desc.trans_a,
                    desc.trans_b,
                    desc.beta == 0.0f,
                    alignment(a),
                    alignment(b),
                    alignment(c),
                    alignment(bias),
                    alignment(aux)};
  std::unique_ptr<Plan>& slot = cache_->plans[key];
  if (!slot) {
    auto plan = std::make_unique<Plan>();
    const cudaDataType_t ab = cuda_type(desc.ab_dtype), ct = cuda_type(desc.c_dtype);
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLASLt's A is our B.
    const cublasOperation_t op_a = desc.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = desc.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    set_attr(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, op_a);
    set_attr(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, op_b);
    cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_DEFAULT;
    if (epilogue == Epilogue::kBias) ep = CUBLASLT_EPILOGUE_BIAS;
    if (epilogue == Epilogue::kGeluAuxBias) ep = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    if (epilogue == Epilogue::kDGeluBGrad) ep = CUBLASLT_EPILOGUE_DGELU_BGRAD;
    set_attr(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE, ep);
    // The bias is in ab_dtype (kernels/gemm.h); cuBLASLt's default is D's type, so the type
    // is named only when they differ. The bias gradient keeps the default (D's type).
    if ((epilogue == Epilogue::kBias || epilogue == Epilogue::kGeluAuxBias) && ab != ct) {
      set_attr(plan->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, int32_t(ab));
    }
    if (fused) {
      // The aux (pre-activation) matrix is laid out like C^T: (n, m) column-major, ld n.
      set_attr(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, int64_t(s.n));
    }
    // Our B stored (k,n) is column-major (n,k); stored (n,k) [trans_b] is column-major (k,n).
    plan->a =
        make_layout(ab, desc.trans_b ? s.k : s.n, desc.trans_b ? s.n : s.k,
                    desc.trans_b ? s.k : s.n, s.batch, desc.stride_b ? desc.stride_b : s.k * s.n);
    // Our A stored (m,k) is column-major (k,m); stored (k,m) [trans_a] is column-major (m,k).
    plan->b =
        make_layout(ab, desc.trans_a ? s.m : s.k, desc.trans_a ? s.k : s.m,
                    desc.trans_a ? s.m : s.k, s.batch, desc.stride_a ? desc.stride_a : s.m * s.k);
    plan->c = make_layout(ct, s.n, s.m, s.n, s.batch, desc.stride_c ? desc.stride_c : s.m * s.n);

    // The heuristic reads the epilogue pointers' alignment (cublasLt.h), so they are set
    // before it runs; their alignments are part of the key.
    if (epilogue != Epilogue::kDefault) set_attr(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
    if (fused) set_attr(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);

    cublasLtMatmulPreference_t pref = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = uint64_t(workspace_bytes_);
    const auto al_a = uint32_t(key.align_b), al_b = uint32_t(key.align_a),
               al_c = uint32_t(key.align_c);
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    const cublasStatus_t st = [&] {
      cublasStatus_t e = CUBLAS_STATUS_SUCCESS;
      const std::pair<cublasLtMatmulPreferenceAttributes_t, const void*> attrs[] = {
          {CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c}};
      for (const auto& [attr, value] : attrs) {
        const size_t size =
            attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES ? sizeof ws : sizeof al_a;
        e = cublasLtMatmulPreferenceSetAttribute(pref, attr, value, size);
        if (e != CUBLAS_STATUS_SUCCESS) return e;
      }
      return cublasLtMatmulAlgoGetHeuristic(handle_, plan->op, plan->a, plan->b, plan->c, plan->c,
                                            pref, 1, &result, &returned);
    }();
    cublasLtMatmulPreferenceDestroy(pref);
    CUBLAS_CHECK(st);
    if (returned == 0) {
      throw InternalError(str_cat("cuBLASLt has no algorithm for gemm m=", s.m, " n=", s.n,
                                  " k=", s.k, " batch=", s.batch, " ", dtype_name(desc.ab_dtype),
                                  "->", dtype_name(desc.c_dtype), " epilogue ", int(epilogue)));
    }
    plan->algo = result.algo;
    slot = std::move(plan);
  }
  Plan& plan = *slot;

  // 3. Per-call pointers of the epilogue, then the matmul (D = C, in place).
  if (epilogue != Epilogue::kDefault) {
    set_attr(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  }
  if (fused) set_attr(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
  CUBLAS_CHECK(cublasLtMatmul(handle_, plan.op, &desc.alpha, b, plan.a, a, plan.b, &desc.beta, c,
                              plan.c, c, plan.c, &plan.algo, workspace_, size_t(workspace_bytes_),
                              stream));
}

}  // namespace shardtrain::kernels::cuda
