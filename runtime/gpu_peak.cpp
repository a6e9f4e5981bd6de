#include "runtime/gpu_peak.h"

#include <array>
#include <string>

namespace shardtrain {
namespace {

struct GpuPeak {
  const char* words;  // upper case, words separated by one space
  double tflops;      // dense bf16/fp16 tensor-core peak (gpu_peak.h has the sources)
};

// Most specific first: the first entry whose words occur in the name wins.
constexpr std::array<GpuPeak, 6> kGpuPeaks = {{
    {"H100 PCIE", 756.0},
    {"H100 NVL", 835.0},
    {"H200 NVL", 835.0},
    {"H100", 989.0},
    {"H200", 989.0},
    {"A100", 312.0},
}};

// " NVIDIA A100 SXM4 80GB ": upper case, '-' and '_' as spaces, runs of spaces as one, and a
// space at each end so that a whole-word match is a plain substring search for " WORDS ".
std::string normalise(std::string_view name) {
  std::string out = " ";
  for (char ch : name) {
    char c = (ch == '-' || ch == '_' || ch == '\t') ? ' ' : ch;
    if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
    if (c == ' ' && out.back() == ' ') continue;
    out += c;
  }
  if (out.back() != ' ') out += ' ';
  return out;
}

}  // namespace

std::optional<double> gpu_dense_peak_tflops(std::string_view device_name, DType compute) {
  if (compute != DType::kBF16 && compute != DType::kF16) return std::nullopt;
  const std::string name = normalise(device_name);
  for (const GpuPeak& p : kGpuPeaks) {
    if (name.find(std::string(" ") + p.words + " ") != std::string::npos) return p.tflops;
  }
  return std::nullopt;
}

}  // namespace shardtrain
