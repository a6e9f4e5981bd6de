// manifest_fuzz.cpp — fuzz target for the checkpoint manifest reader (libFuzzer entry point).
//
// The input is written as a checkpoint's manifest.pb beside one small data file; reading it
// must end in success or a UserError, never a crash, a hang or an out-of-bounds access.
// Built as a libFuzzer binary when the compiler is clang (-DSHARDTRAIN_FUZZ=ON):
//   build/bin/manifest_fuzz -max_total_time=60 CORPUS_DIR
// and run deterministically over mutated manifests by tests/parallel/checkpoint_test.cpp.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include "parallel/checkpoint.h"
#include "runtime/error.h"

namespace shardtrain::testing {

// Reads `bytes` as the manifest of a scratch checkpoint in `dir` (which holds rank_00000.bin).
inline void read_manifest_bytes(const std::string& dir, const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen((dir + "/manifest.pb").c_str(), "wb");
  if (f == nullptr) return;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    proto::CheckpointManifest m = parallel::read_manifest(dir);
    (void)m;
    parallel::inspect_checkpoint(dir);  // reads and verifies every piece
  } catch (const UserError&) {
    // the expected outcome for a malformed manifest
  }
}

}  // namespace shardtrain::testing

#ifdef SHARDTRAIN_LIBFUZZER
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    std::string d = std::filesystem::temp_directory_path() / "shardtrain_manifest_fuzz";
    std::filesystem::create_directories(d);
    std::FILE* f = std::fopen((d + "/rank_00000.bin").c_str(), "wb");
    float zeros[64] = {};
    std::fwrite(zeros, sizeof zeros, 1, f);
    std::fclose(f);
    return d;
  }();
  shardtrain::testing::read_manifest_bytes(dir, data, size);
  return 0;
}
#endif
