// isa.h — which vector ISA the including file's CPU kernels are compiled for.
//
// One binary must run on every x86-64-v3 machine of a cluster (AVX2 + FMA) and still use
// AVX-512 where a node has it. So the loop kernels (kernels/cpu/*.cpp but gemm.cpp and
// cpu_isa.cpp: oneDNN picks its own ISA at run time) are compiled twice: once at the build's
// baseline (-march=x86-64-v3; these are the functions kernels/*.h declare), and once with
// SHARDTRAIN_CPU_ISA_AVX512 defined, into the inline namespace `avx512` with AVX-512 F/BW/CD/
// DQ/VL enabled by a target pragma (x86-64-v4's features). Everything between
// SHARDTRAIN_ISA_BEGIN and SHARDTRAIN_ISA_END — the kernels, their helpers, vec_util.h, the
// OpenMP regions outlined from them — is compiled for that ISA; everything included before it
// (the C++ library, dtype.h) keeps the baseline, so no AVX-512 code can stand in for a shared
// template or inline function that baseline code calls (the linker keeps one copy of those).
// The test build.cpu_isa_symbols checks exactly that on the linked executable.
// kernels/cpu/cpu_isa.h picks the copy at run time. The op headers (kernels/<op>.h) put their
// function declarations between the same markers, so each copy sees its own.
#pragma once

#if defined(SHARDTRAIN_CPU_ISA_AVX512)
#define SHARDTRAIN_ISA_BEGIN           \
  _Pragma("GCC push_options") _Pragma( \
      "GCC target(\"avx512f,avx512bw,avx512cd,avx512dq,avx512vl\")") inline namespace avx512 {
#define SHARDTRAIN_ISA_END \
  }                        \
  _Pragma("GCC pop_options")
// This copy's kernels, named from inside a class whose members share their names.
#define SHARDTRAIN_ISA_NAMESPACE ::shardtrain::kernels::avx512
#else
#define SHARDTRAIN_ISA_BEGIN
#define SHARDTRAIN_ISA_END
#define SHARDTRAIN_ISA_NAMESPACE ::shardtrain::kernels
#endif
