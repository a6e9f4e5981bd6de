// cpu_isa.cpp — picks the copy of the CPU kernels (kernels/isa.h) and names this CPU.
// Compiled once, at the baseline.
#include "kernels/cpu/cpu_isa.h"

#include <dnnl_debug.h>

#include <dnnl.hpp>

#include "kernels/backend.h"
#include "runtime/cpu_features.h"
#include "runtime/error.h"

namespace shardtrain::kernels {

// Each copy's backend, defined in kernels/cpu/backend.cpp.
Backend& cpu_backend_of_this_isa();
#if defined(SHARDTRAIN_CPU_DISPATCH)
namespace avx512 {
Backend& cpu_backend_of_this_isa();
}
#endif

namespace cpu {

const char* isa_name(CpuIsa isa) {
#if defined(SHARDTRAIN_CPU_DISPATCH)
  return isa == CpuIsa::kAvx512 ? "avx512" : "x86-64-v3";
#else
  (void)isa;
  return "native";
#endif
}

std::vector<CpuIsa> runnable_isas() {
  std::vector<CpuIsa> isas = {CpuIsa::kBaseline};
#if defined(SHARDTRAIN_CPU_DISPATCH)
  if (cpu_features().x86_64_v4) isas.push_back(CpuIsa::kAvx512);
#endif
  return isas;
}

bool onednn_has_avx512() {
  static const bool has = [] {
    const auto onednn = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    const auto avx512_core = static_cast<unsigned>(dnnl_cpu_isa_avx512_core);
    return (onednn & avx512_core) == avx512_core;
  }();
  return has;
}

CpuIsa active_isa() {
  static const CpuIsa isa = runnable_isas().back() == CpuIsa::kAvx512 && onednn_has_avx512()
                                ? CpuIsa::kAvx512
                                : CpuIsa::kBaseline;
  return isa;
}

Backend& cpu_backend_at(CpuIsa isa) {
#if defined(SHARDTRAIN_CPU_DISPATCH)
  if (isa == CpuIsa::kAvx512) {
    ST_CHECK(cpu_features().x86_64_v4, "the avx512 CPU kernels need an x86-64-v4 CPU");
    return avx512::cpu_backend_of_this_isa();
  }
#endif
  ST_CHECK(isa == CpuIsa::kBaseline, "this build has no ", isa_name(isa), " CPU kernels");
  return cpu_backend_of_this_isa();
}

std::string onednn_isa_name() {
  std::string s = dnnl_cpu_isa2str(static_cast<dnnl_cpu_isa_t>(dnnl::get_effective_cpu_isa()));
  const std::string prefix = "cpu_isa_";
  return s.rfind(prefix, 0) == 0 ? s.substr(prefix.size()) : s;
}

std::string cpu_description() {
  return str_cat(cpu_features().model, "; oneDNN ", onednn_isa_name(), ", kernels ",
                 isa_name(active_isa()));
}

}  // namespace cpu

Backend& cpu_backend() { return cpu::cpu_backend_at(cpu::active_isa()); }

}  // namespace shardtrain::kernels
