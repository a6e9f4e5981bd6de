// emu_types.h — the emulator's host-visible types, without the CUDA surface of emu.h.
//
// Host code that calls emulated kernels (tests, the cuda-emu device) needs the status and
// stream types and the fault exception, but must not get emu.h's macros (threadIdx, __global__,
// ...), which would clash with the real CUDA headers in a file that uses both worlds.
#pragma once

#include <stdexcept>

namespace shardtrain::emu {

// Raised on the host by a launch when a kernel breaks one of emu.h's rules (or throws itself).
class Fault : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Stand-ins for cudaError_t and cudaStream_t: every launch runs to completion before it
// returns (so there is nothing to order on a stream), and faults throw instead of returning.
enum class Status : int { kOk = 0 };
struct StreamTag;
using Stream = StreamTag*;

}  // namespace shardtrain::emu
