// cpu_features.h — what this CPU is and what its vector units can run, asked once through cpuid.
//
// Two users: launch/ refuses, with a one-line user error, a CPU below the default build's
// baseline (x86-64-v3) before any kernel could die on an illegal instruction; kernels/cpu
// picks its AVX-512 copy where the CPU has it (kernels/cpu/cpu_isa.h), and benchmarks and logs
// name the CPU each figure was measured on. This file is compiled without -march flags, so
// calling it is safe on any x86-64 CPU.
#pragma once

#include <string>

namespace shardtrain {

struct CpuFeatures {
  std::string model;  // cpuid brand string, e.g. "AMD EPYC 9B14 96-Core Processor"
  bool x86_64_v3;     // AVX, AVX2, BMI1/2, F16C, FMA, LZCNT, MOVBE (and the OS saves ymm)
  bool x86_64_v4;     // x86-64-v3 + AVX-512 F, BW, CD, DQ, VL (and the OS saves zmm)
};

const CpuFeatures& cpu_features();

// The x86-64-v3 features this CPU lacks, as "AVX2, FMA" ("" when it has them all): the default
// build's kernels need every one.
std::string missing_x86_64_v3_features();

}  // namespace shardtrain
