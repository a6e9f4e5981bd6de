#include "runtime/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace shardtrain {
namespace {

using nlohmann::json;

const char* st_dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kI32:
      return "I32";
  }
  return "?";
}

// 100 MB of JSON header is far beyond any real model's; larger is a corrupt length field.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

}  // namespace

void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    uint64_t bytes = uint64_t(shape_numel(t.shape) * dtype_bytes(t.dtype));
    header[t.name] = {{"dtype", st_dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // align the data to 8 bytes, as HF does

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) throw UserError(str_cat(path, ": cannot write"));
  uint64_t n = text.size();
  bool ok = std::fwrite(&n, 8, 1, f) == 1 && std::fwrite(text.data(), 1, n, f) == n;
  for (const auto& t : tensors) {
    size_t bytes = size_t(shape_numel(t.shape) * dtype_bytes(t.dtype));
    ok = ok && (bytes == 0 || std::fwrite(t.data, 1, bytes, f) == bytes);
  }
  ok = ok && std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw UserError(str_cat(path, ": write failed (disk full?)"));
  }
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw UserError(str_cat(path, ": cannot open safetensors file"));
  const uint64_t file_size = uint64_t(in.tellg());
  in.seekg(0);
  uint64_t n = 0;
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(&n), 8)) {
    throw UserError(str_cat(path, ": not a safetensors file (shorter than its 8-byte header)"));
  }
  if (n > kMaxHeaderBytes || n > file_size - 8) {
    throw UserError(
        str_cat(path, ": not a safetensors file (header length ", n, " exceeds the file)"));
  }
  std::string text(n, '\0');
  in.read(text.data(), std::streamsize(n));
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {
    throw UserError(str_cat(path, ": safetensors header is not valid JSON"));
  }
  if (!header.is_object()) throw UserError(str_cat(path, ": safetensors header is not an object"));

  const uint64_t data_start = 8 + n, data_size = file_size - data_start;
  SafetensorsFile out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (v.is_object()) {
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (m.value().is_string()) out.metadata[m.key()] = m.value().get<std::string>();
        }
      }
      continue;
    }
    auto bad = [&](const std::string& what) {
      return UserError(str_cat(path, ": tensor '", name, "': ", what));
    };
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets")) {
      throw bad("entry needs dtype, shape and data_offsets");
    }
    SafetensorsTensor t;
    const json& dt = v["dtype"];
    if (dt == "F32")
      t.dtype = DType::kF32;
    else if (dt == "BF16")
      t.dtype = DType::kBF16;
    else if (dt == "F16")
      t.dtype = DType::kF16;
    else if (dt == "I32")
      t.dtype = DType::kI32;
    else
      throw bad(str_cat("unsupported dtype ", dt.dump()));
    if (!v["shape"].is_array()) throw bad("shape is not a list");
    int64_t numel = 1;
    for (const json& d : v["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (1ull << 40)) throw bad("bad shape");
      t.shape.push_back(d.get<int64_t>());
      numel *= t.shape.back();
      if (numel > (int64_t(1) << 40)) throw bad("shape too large");
    }
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned()) {
      throw bad("data_offsets must be two non-negative integers");
    }
    uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size) throw bad("data_offsets point outside the file");
    if (end - begin != uint64_t(numel * dtype_bytes(t.dtype))) {
      throw bad("data_offsets length does not match shape and dtype");
    }
    t.bytes.resize(end - begin);
    in.seekg(std::streamoff(data_start + begin));
    if (!in.read(t.bytes.data(), std::streamsize(end - begin))) throw bad("read failed");
    out.tensors.emplace(name, std::move(t));
  }
  return out;
}

}  // namespace shardtrain
