// profiler.h — where a step's time goes on the CPU, op by op (`train --profile FILE`).
//
// A Backend decorator: every call into the wrapped backend is timed on the host (steady clock)
// and summed under a key — the op's name and, for GEMMs, the shape, transposes and storage
// types too, because a GEMM's efficiency depends on its shape. On the cpu backend a call runs
// to completion before it returns, so host time is the op's time; a GPU backend returns before
// its kernels run, so train refuses --profile there (Nsight Systems is the tool for that).
// What is left of a step's wall time after its ops is the host code between them: the model's
// and the ZeRO engine's bookkeeping, data loading and waiting for communication.
// The cost: two clock reads and a map update under a mutex per op call, a few hundred calls
// per step.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace shardtrain::kernels {

class OpProfile {
 public:
  struct Entry {
    std::string key;  // "layernorm_forward", "gemm 2048x768x256 NT bf16->f32", ...
    int64_t calls = 0;
    int64_t ns = 0;
    double flops = 0;  // GEMMs: 2 m n k per call; 0 for the other ops
  };

  // Ops are counted only while enabled (train enables it for the steps it profiles).
  void set_enabled(bool on);
  bool enabled() const;
  void add(const std::string& key, int64_t ns, double flops);
  // One profiled step's wall time.
  void add_step(int64_t ns);

  int64_t steps() const;
  int64_t step_ns() const;             // summed over the profiled steps
  std::vector<Entry> entries() const;  // by time, longest first

 private:
  mutable std::mutex mu_;
  bool enabled_ = false;
  std::map<std::string, Entry> entries_;
  int64_t steps_ = 0, step_ns_ = 0;
};

// `inner` with every op timed into `profile`; both must outlive the returned backend.
std::unique_ptr<Backend> make_profiling_backend(Backend& inner, OpProfile& profile);

// A GEMM's profile key: "gemm MxNxK[xbatch] TT a->c" (T = transposed, N = not; the storage
// types of A/B and of C).
std::string gemm_profile_key(const GemmDesc& d);

}  // namespace shardtrain::kernels
