// cpu_features.cpp — cpuid through GCC's __builtin_cpu_supports (which also checks that the OS
// saves the wider registers, XGETBV), the model from the brand-string leaves.
#include "runtime/cpu_features.h"

#include <cpuid.h>

#include <cstring>

namespace shardtrain {
namespace {

std::string brand_string() {
  unsigned max_ext = __get_cpuid_max(0x80000000u, nullptr);
  if (max_ext < 0x80000004u) return "unknown x86-64 CPU";
  char brand[49] = {};
  for (unsigned leaf = 0; leaf < 3; ++leaf) {
    unsigned r[4];
    __cpuid(0x80000002u + leaf, r[0], r[1], r[2], r[3]);
    std::memcpy(brand + 16 * leaf, r, sizeof r);
  }
  std::string s(brand);
  // Vendors pad the string with spaces at either end.
  size_t b = s.find_first_not_of(' '), e = s.find_last_not_of(' ');
  return b == std::string::npos ? "unknown x86-64 CPU" : s.substr(b, e - b + 1);
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    __builtin_cpu_init();
    CpuFeatures c;
    c.model = brand_string();
    c.x86_64_v3 = __builtin_cpu_supports("x86-64-v3");
    c.x86_64_v4 = __builtin_cpu_supports("x86-64-v4");
    return c;
  }();
  return f;
}

std::string missing_x86_64_v3_features() {
  __builtin_cpu_init();
  std::string missing;
  auto need = [&](bool has, const char* name) {
    if (has) return;
    if (!missing.empty()) missing += ", ";
    missing += name;
  };
  need(__builtin_cpu_supports("avx"), "AVX");
  need(__builtin_cpu_supports("avx2"), "AVX2");
  need(__builtin_cpu_supports("fma"), "FMA");
  need(__builtin_cpu_supports("f16c"), "F16C");
  need(__builtin_cpu_supports("bmi"), "BMI1");
  need(__builtin_cpu_supports("bmi2"), "BMI2");
  need(__builtin_cpu_supports("lzcnt"), "LZCNT");
  need(__builtin_cpu_supports("movbe"), "MOVBE");
  // Each feature present but the whole level refused: the OS does not save the ymm registers.
  if (missing.empty() && !__builtin_cpu_supports("x86-64-v3")) missing = "OS support for AVX state";
  return missing;
}

}  // namespace shardtrain
