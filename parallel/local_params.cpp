#include "parallel/local_params.h"

#include <cstring>
#include <set>

#include "kernels/adamw.h"
#include "kernels/elementwise.h"
#include "runtime/error.h"

namespace shardtrain::parallel {
namespace {

// Hugging Face GPT-2 files may carry the causal-mask buffers of old transformers versions
// (h.N.attn.bias of 4 dims, h.N.attn.masked_bias) and a tied lm_head.weight: not parameters.
bool is_hf_non_parameter(const std::string& name, const SafetensorsTensor& t) {
  if (name == "lm_head.weight") return true;
  if (name.find(".attn.masked_bias") != std::string::npos) return true;
  return name.size() > 10 && name.compare(name.size() - 10, 10, ".attn.bias") == 0 &&
         t.shape.size() == 4;
}

void to_f32(float* out, const SafetensorsTensor& t, int64_t n) {
  switch (t.dtype) {
    case DType::kF32: std::memcpy(out, t.bytes.data(), size_t(n) * 4); break;
    case DType::kBF16:
      kernels::cast(out, reinterpret_cast<const BFloat16*>(t.bytes.data()), n);
      break;
    case DType::kF16: kernels::cast(out, reinterpret_cast<const Half*>(t.bytes.data()), n); break;
    case DType::kI32: ST_CHECK(false, "integer tensor"); break;
  }
}

}  // namespace

LocalParams::LocalParams(const models::GptDims& dims, DType compute, TrackingAllocator& alloc)
    : dims_(dims), compute_(compute), layout_(models::gpt_layout(dims)) {
  for (const auto& u : layout_) {
    Tensor master = Tensor::zeros({u.numel}, DType::kF32, alloc,
                                  compute == DType::kF32 ? MemCategory::kParams
                                                         : MemCategory::kMasterParams,
                                  u.name + ".master");
    params_.push_back(compute == DType::kF32
                          ? master
                          : Tensor::zeros({u.numel}, compute, alloc, MemCategory::kParams,
                                          u.name + ".params"));
    master_.push_back(master);
    grads_.push_back(Tensor::zeros({u.numel}, DType::kF32, alloc, MemCategory::kGrads,
                                   u.name + ".grads"));
    m_.push_back(Tensor::zeros({u.numel}, DType::kF32, alloc, MemCategory::kOptimizerState,
                               u.name + ".adam_m"));
    v_.push_back(Tensor::zeros({u.numel}, DType::kF32, alloc, MemCategory::kOptimizerState,
                               u.name + ".adam_v"));
  }
}

void LocalParams::sync_compute_from_master() {
  if (compute_ == DType::kF32) return;
  for (size_t u = 0; u < layout_.size(); ++u) {
    const float* src = master_[u].data<float>();
    if (compute_ == DType::kBF16) kernels::cast(params_[u].data<BFloat16>(), src, layout_[u].numel);
    else kernels::cast(params_[u].data<Half>(), src, layout_[u].numel);
  }
}

void LocalParams::init_random(uint64_t seed) {
  for (size_t u = 0; u < layout_.size(); ++u) {
    for (const auto& p : layout_[u].params) {
      models::init_param(p, dims_, seed, 0, p.numel(), master_[u].data<float>() + p.offset);
    }
  }
  sync_compute_from_master();
}

void LocalParams::load_hf(const std::string& path) {
  SafetensorsFile file = read_safetensors(path);
  // Accept GPT2LMHeadModel's "transformer." prefix as well as GPT2Model's bare names.
  std::map<std::string, const SafetensorsTensor*> by_name;
  for (const auto& [name, t] : file.tensors) {
    std::string bare = name.rfind("transformer.", 0) == 0 ? name.substr(12) : name;
    if (is_hf_non_parameter(bare, t)) continue;
    by_name[bare] = &t;
  }
  std::set<std::string> used;
  for (size_t u = 0; u < layout_.size(); ++u) {
    for (const auto& p : layout_[u].params) {
      auto it = by_name.find(p.name);
      if (it == by_name.end()) {
        throw UserError(str_cat(path, ": tensor '", p.name, "' is missing"));
      }
      const SafetensorsTensor& t = *it->second;
      if (t.shape != p.hf_shape) {
        throw UserError(str_cat(path, ": tensor '", p.name, "' has shape ", shape_str(t.shape),
                                ", the config needs ", shape_str(p.hf_shape)));
      }
      if (t.dtype == DType::kI32) {
        throw UserError(str_cat(path, ": tensor '", p.name, "' is not floating point"));
      }
      float* dst = master_[u].data<float>() + p.offset;
      const int64_t n = shape_numel(p.hf_shape);
      to_f32(dst, t, n);
      std::memset(dst + n, 0, size_t(p.numel() - n) * sizeof(float));  // vocabulary padding
      used.insert(p.name);
    }
  }
  for (const auto& [name, t] : by_name) {
    if (!used.count(name)) {
      throw UserError(str_cat(path, ": unexpected tensor '", name,
                              "' (not part of a GPT-2 model with this config)"));
    }
  }
  sync_compute_from_master();
}

void LocalParams::export_hf(const std::string& path) const {
  std::vector<SafetensorsEntry> entries;
  for (size_t u = 0; u < layout_.size(); ++u) {
    for (const auto& p : layout_[u].params) {
      entries.push_back({p.name, DType::kF32, p.hf_shape, master_[u].data<float>() + p.offset});
    }
  }
  write_safetensors(path, entries, {{"format", "pt"}});
}

void LocalParams::zero_grads() {
  for (Tensor& g : grads_) std::memset(g.raw(), 0, size_t(g.bytes()));
}

double LocalParams::grad_sq_sum() const {
  double sum = 0.0;
  for (const Tensor& g : grads_) {
    const float* p = g.data<float>();
    for (int64_t i = 0; i < g.numel(); ++i) sum += double(p[i]) * double(p[i]);
  }
  return sum;
}

void LocalParams::adamw_step(const proto::OptimizerConfig& o, double lr, int64_t step,
                             float grad_scale) {
  for (size_t u = 0; u < layout_.size(); ++u) {
    for (const auto& p : layout_[u].params) {
      kernels::AdamWParams ap{float(lr), float(o.beta1()), float(o.beta2()), float(o.eps()),
                              p.decay ? float(o.weight_decay()) : 0.0f, step};
      float* master = master_[u].data<float>() + p.offset;
      const float* grad = grads_[u].data<float>() + p.offset;
      float* m = m_[u].data<float>() + p.offset;
      float* v = v_[u].data<float>() + p.offset;
      switch (compute_) {
        case DType::kF32:
          kernels::adamw_update<float>(master, grad, m, v, nullptr, p.numel(), ap, grad_scale);
          break;
        case DType::kBF16:
          kernels::adamw_update<BFloat16>(master, grad, m, v,
                                          params_[u].data<BFloat16>() + p.offset, p.numel(), ap,
                                          grad_scale);
          break;
        case DType::kF16:
          kernels::adamw_update<Half>(master, grad, m, v, params_[u].data<Half>() + p.offset,
                                      p.numel(), ap, grad_scale);
          break;
        case DType::kI32: ST_CHECK(false, "integer compute dtype"); break;
      }
    }
  }
}

}  // namespace shardtrain::parallel
