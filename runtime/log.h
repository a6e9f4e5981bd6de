// log.h — rank-aware logging with levels.
//
// By default only rank 0 speaks (N identical lines from N ranks hide the one that differs);
// `--log-all-ranks` makes every rank speak, each line prefixed with its rank. Info and debug go
// to stdout, warnings and errors to stderr, each line in one write so that ranks sharing a
// terminal do not interleave inside a line.
#pragma once

#include <string>
#include <string_view>

#include "runtime/error.h"

namespace shardtrain {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Parses "debug" | "info" | "warn" | "error"; throws UserError otherwise.
LogLevel parse_log_level(std::string_view name);

void log_configure(int rank, int world_size, bool all_ranks, LogLevel level);
bool log_enabled(LogLevel level);
void log_write(LogLevel level, const std::string& line);

template <class... Args>
void log_debug(const Args&... args) {
  if (log_enabled(LogLevel::kDebug)) log_write(LogLevel::kDebug, str_cat(args...));
}
template <class... Args>
void log_info(const Args&... args) {
  if (log_enabled(LogLevel::kInfo)) log_write(LogLevel::kInfo, str_cat(args...));
}
template <class... Args>
void log_warn(const Args&... args) {
  if (log_enabled(LogLevel::kWarn)) log_write(LogLevel::kWarn, str_cat(args...));
}
template <class... Args>
void log_error(const Args&... args) {
  if (log_enabled(LogLevel::kError)) log_write(LogLevel::kError, str_cat(args...));
}

}  // namespace shardtrain
