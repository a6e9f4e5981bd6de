// gpu_skip.h — how a test that needs a GPU gives up where none is usable: it skips with the
// reason, or, when SHARDTRAIN_REQUIRE_GPU=1 (the GPU check, gpu-bundle/gpu_check.sh), fails
// with it, because a green run in which every GPU case skipped proves nothing.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

namespace shardtrain::testing {

inline bool gpu_required() {
  const char* v = std::getenv("SHARDTRAIN_REQUIRE_GPU");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

}  // namespace shardtrain::testing

// In a test body (or a void helper): skip, or fail under SHARDTRAIN_REQUIRE_GPU=1.
#define ST_GPU_UNAVAILABLE(reason)                                  \
  do {                                                              \
    if (::shardtrain::testing::gpu_required()) {                    \
      GTEST_FAIL() << "SHARDTRAIN_REQUIRE_GPU=1, but " << (reason); \
    }                                                               \
    GTEST_SKIP() << (reason);                                       \
  } while (0)
