#include "runtime/log.h"

#include <cstdio>

namespace shardtrain {
namespace {

struct LogState {
  int rank = 0;
  int world_size = 1;
  bool all_ranks = false;
  LogLevel level = LogLevel::kInfo;
};

LogState& state() {
  static LogState s;
  return s;
}

}  // namespace

LogLevel parse_log_level(std::string_view name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  throw UserError(str_cat("--log-level: '", name, "' is not one of debug, info, warn, error"));
}

void log_configure(int rank, int world_size, bool all_ranks, LogLevel level) {
  state() = LogState{rank, world_size, all_ranks, level};
}

bool log_enabled(LogLevel level) {
  const LogState& s = state();
  if (level < s.level) return false;
  // Errors always surface, whichever rank hits them.
  return s.rank == 0 || s.all_ranks || level == LogLevel::kError;
}

void log_write(LogLevel level, const std::string& line) {
  const LogState& s = state();
  std::string out;
  if (s.world_size > 1 && (s.all_ranks || s.rank != 0)) out = str_cat("[rank ", s.rank, "] ");
  if (level == LogLevel::kWarn) out += "warning: ";
  if (level == LogLevel::kError) out += "error: ";
  if (level == LogLevel::kDebug) out += "debug: ";
  out += line;
  out += '\n';
  // Progress goes to stdout, problems to stderr; one write per line, so no interleaving.
  std::FILE* f = level >= LogLevel::kWarn ? stderr : stdout;
  std::fwrite(out.data(), 1, out.size(), f);
  std::fflush(f);
}

}  // namespace shardtrain
