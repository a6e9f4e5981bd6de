#include "runtime/error.h"

namespace shardtrain {

void throw_check_failure(const char* library, const char* expr, const std::string& detail,
                         const char* file, int line) {
  std::string msg = str_cat(library, " check failed: ", expr, " at ", file, ":", line);
  if (!detail.empty()) msg += str_cat(": ", detail);
  throw InternalError(msg);
}

}  // namespace shardtrain
