// ops.h — the GPU op set (kernels/cuda/ops.inc) as emulated on the CPU by kernels/emu: the
// same kernel source, compiled by g++, taking host pointers. Faults throw emu::Fault.
#pragma once

#include <cstdint>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/emu/emu_types.h"
#include "kernels/layernorm.h"
#include "kernels/rope.h"
#include "runtime/dtype.h"

namespace shardtrain::kernels::cuda_emu {

using Stream = emu::Stream;
using Status = emu::Status;

#include "kernels/cuda/ops.inc"

}  // namespace shardtrain::kernels::cuda_emu
