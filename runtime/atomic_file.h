// atomic_file.h — writing files so that a crash never leaves a half-written one under the
// final name: a temporary name beside it, fsynced, then renamed into place.
#pragma once

#include <string>

namespace shardtrain {

// Writes `bytes` to `path`.tmp, fsyncs it and renames it over `path`; a failure removes the
// temporary file and is a UserError naming `path`.
void write_atomically(const std::string& path, const std::string& bytes);

// fsyncs a file or directory (a directory after a rename inside it), ignoring errors: the
// data itself was already synced, this only makes the name durable.
void fsync_path(const std::string& path);

}  // namespace shardtrain
