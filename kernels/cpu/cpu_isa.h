// cpu_isa.h — which copy of the CPU kernels runs (kernels/isa.h builds one per ISA level), and
// the CPU backend of each.
//
// The active level is the highest one that this build has, this CPU can run, and oneDNN is
// allowed to use: oneDNN's own cap, ONEDNN_MAX_CPU_ISA (e.g. =AVX2), caps the loop kernels
// too, so one variable moves the GEMMs and everything else to the baseline together (the
// tests run the bf16 training runs that way on AVX-512 machines). Decided once per process.
#pragma once

#include <string>
#include <vector>

namespace shardtrain::kernels {

class Backend;

namespace cpu {

enum class CpuIsa {
  kBaseline,  // the build's baseline: x86-64-v3 (AVX2 + FMA), or this machine's with NATIVE=ON
  kAvx512,    // AVX-512 F/BW/CD/DQ/VL (x86-64-v4); only in the default (non-native) build
};

const char* isa_name(CpuIsa isa);  // "x86-64-v3" (or "native"), "avx512"

// The levels this build has and this CPU can run, lowest first (the baseline always).
std::vector<CpuIsa> runnable_isas();

// The level cpu_backend() runs at (see above).
CpuIsa active_isa();

// The CPU backend at a level from runnable_isas() (checked).
Backend& cpu_backend_at(CpuIsa isa);

// oneDNN may use AVX-512 (core) kernels: the CPU has them and ONEDNN_MAX_CPU_ISA allows them.
bool onednn_has_avx512();

// oneDNN's effective ISA, e.g. "avx512_core_bf16", "avx2" (after ONEDNN_MAX_CPU_ISA).
std::string onednn_isa_name();

// One line for benchmarks and logs: "AMD EPYC 9B14 96-Core Processor; oneDNN avx512_core_bf16,
// kernels avx512".
std::string cpu_description();

}  // namespace cpu
}  // namespace shardtrain::kernels
