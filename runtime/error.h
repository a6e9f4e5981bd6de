// error.h — how shardtrain reports failure.
//
// Two kinds of failure, kept apart because users act on them differently:
//  - UserError: the user can fix it (a config field, a flag, a file). The message names the
//    field/file/tensor and the problem; launch/ prints `shardtrain: error: <message>`, exit 2.
//  - InternalError: a broken invariant or a failed library call; exit 1.
// Nothing a user can cause ends in abort() or assert().
//
// One macro family checks library status codes: ST_CHECK_STATUS(Traits, expr) is generic over
// the status type; each library adds a Traits struct (name, ok(), describe()) and a one-line
// macro (MPI_CHECK, CUDA_CHECK, NCCL_CHECK, ...) next to its wrapper.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace shardtrain {

class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A buffer that does not fit on the device or host: a user error (the layout is too big for
// this hardware), reported with what was asked for and what is held (TrackingAllocator).
class OutOfMemoryError : public UserError {
 public:
  using UserError::UserError;
};

class InternalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Concatenates anything streamable: str_cat("tp (", tp, ") must divide n_head").
template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

[[noreturn]] void throw_check_failure(const char* library, const char* expr,
                                      const std::string& detail, const char* file, int line);

}  // namespace shardtrain

// Internal invariant: throws InternalError with the expression, location and detail.
#define ST_CHECK(cond, ...)                                                                     \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      ::shardtrain::throw_check_failure("invariant", #cond, ::shardtrain::str_cat(__VA_ARGS__), \
                                        __FILE__, __LINE__);                                    \
    }                                                                                           \
  } while (0)

// User-caused condition: throws UserError with the given message.
#define ST_USER_CHECK(cond, ...)                                                    \
  do {                                                                              \
    if (!(cond)) throw ::shardtrain::UserError(::shardtrain::str_cat(__VA_ARGS__)); \
  } while (0)

// Library status check, generic over the status type through a Traits struct:
//   struct Traits { static constexpr const char* kName; static bool ok(S); static std::string
//   describe(S); };
#define ST_CHECK_STATUS(Traits, expr)                                                       \
  do {                                                                                      \
    auto st_status_ = (expr);                                                               \
    if (!Traits::ok(st_status_)) {                                                          \
      ::shardtrain::throw_check_failure(Traits::kName, #expr, Traits::describe(st_status_), \
                                        __FILE__, __LINE__);                                \
    }                                                                                       \
  } while (0)
