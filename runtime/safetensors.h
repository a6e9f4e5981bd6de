// safetensors.h — read and write the safetensors format (Hugging Face's weight files).
//
// Format: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}
// then the data, offsets relative to the end of the header. The reader trusts nothing: header
// length, JSON, dtype names, offsets (inside the data, matching shape x dtype size) are all
// checked, and every failure is a UserError naming the file (and tensor).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/dtype.h"
#include "runtime/tensor.h"

namespace shardtrain {

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  const void* data;  // shape_numel(shape) * dtype_bytes(dtype) bytes
};

// Writes atomically: to `path`.tmp, fsynced, then renamed over `path`.
void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

struct SafetensorsTensor {
  DType dtype;
  Shape shape;
  std::vector<char> bytes;
};

struct SafetensorsFile {
  std::map<std::string, SafetensorsTensor> tensors;
  std::map<std::string, std::string> metadata;
};

SafetensorsFile read_safetensors(const std::string& path);

}  // namespace shardtrain
