// backend_dispatch.h — calls a generic lambda with a value of the C++ type a DType names; the
// Backend implementations use it to turn their DType-tagged calls into typed kernel calls.
#pragma once

#include "runtime/dtype.h"
#include "runtime/error.h"

namespace shardtrain::kernels {

// f(T{}) for T = float, BFloat16 or Half.
template <class F>
void with_float_type(DType t, F&& f) {
  switch (t) {
    case DType::kF32:
      f(float{});
      return;
    case DType::kBF16:
      f(BFloat16{});
      return;
    case DType::kF16:
      f(Half{});
      return;
    case DType::kI32:
      break;
  }
  ST_CHECK(false, "a floating-point storage type is required, got ", dtype_name(t));
}

}  // namespace shardtrain::kernels
