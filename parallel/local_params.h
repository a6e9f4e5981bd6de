// local_params.h — parameters, gradients and AdamW state of the whole model on one rank.
//
// The single-process ParamSource: each unit has one flat compute-dtype buffer (the model's
// view), an fp32 gradient buffer, and for the optimizer an fp32 master copy and the two AdamW
// moments. With fp32 compute the master *is* the parameter buffer (no copy, as in PyTorch).
// Also the bridge to Hugging Face files: initialise from a safetensors file, export to one.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "models/gpt.h"
#include "runtime/allocator.h"
#include "runtime/proto/config.pb.h"
#include "runtime/safetensors.h"
#include "runtime/tensor.h"

namespace shardtrain::parallel {

class LocalParams final : public models::ParamSource {
 public:
  LocalParams(const models::GptDims& dims, DType compute, TrackingAllocator& alloc);

  // models::ParamSource: everything is resident, so acquire/release/grads_done do nothing.
  void acquire(int) override {}
  const void* params(int unit) override { return params_[size_t(unit)].raw(); }
  float* grads(int unit) override { return grads_[size_t(unit)].data<float>(); }
  void release(int) override {}
  void grads_done(int) override {}

  // GPT-2 initialisation from `seed` (models::init_param), or weights in Hugging Face layout.
  void init_random(uint64_t seed);
  void load_hf(const std::string& path);
  // The fp32 master weights under Hugging Face names and shapes (vocabulary padding dropped).
  void export_hf(const std::string& path) const;

  void zero_grads();
  double grad_sq_sum() const;  // sum of squares of every gradient element, in double
  // One AdamW step on every parameter; grads are multiplied by grad_scale first.
  void adamw_step(const proto::OptimizerConfig& o, double lr, int64_t step, float grad_scale);

  const std::vector<models::UnitLayout>& layout() const { return layout_; }

 private:
  void sync_compute_from_master();

  models::GptDims dims_;
  DType compute_;
  std::vector<models::UnitLayout> layout_;
  std::vector<Tensor> params_, grads_, master_, m_, v_;
};

}  // namespace shardtrain::parallel
