#include "parallel/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>
#include <utility>

#include "runtime/atomic_file.h"
#include "runtime/crc32c.h"
#include "runtime/error.h"
#include "runtime/log.h"

namespace shardtrain::parallel {
namespace {

namespace fs = std::filesystem;
using StateKind = ZeroEngine::StateKind;

constexpr const char* kStateNames[] = {"master", "adam_m", "adam_v"};
constexpr const char* kManifest = "manifest.pb";
// Far beyond any real model; a larger count in a manifest is corruption, not a tensor.
constexpr uint64_t kMaxElements = uint64_t(1) << 44;

std::string step_dir_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step_%08lld", (long long)step);
  return name;
}

// Contiguous global segments of local run [begin, end) of parameter p.
template <class F>
void for_each_global_segment(const models::ParamInfo& p, int64_t begin, int64_t end, int tp,
                             int tp_rank, F f) {
  int64_t seg_local = begin, seg_global = p.global_index(begin, tp, tp_rank);
  for (int64_t i = begin + 1; i <= end; ++i) {
    const int64_t g = i < end ? p.global_index(i, tp, tp_rank) : -1;
    if (g != seg_global + (i - seg_local)) {
      f(seg_local, i, seg_global);
      seg_local = i;
      seg_global = g;
    }
  }
}

std::string tensor_key(const std::string& name, const std::string& state) {
  return name + "/" + state;
}

// Everything-or-nothing reader of one checkpoint's pieces, checksum verified per piece.
class PieceReader {
 public:
  PieceReader(std::string dir, const proto::CheckpointManifest& m) : dir_(std::move(dir)) {
    for (const auto& t : m.tensors()) by_key_[tensor_key(t.name(), t.state())] = &t;
  }
  const proto::CheckpointTensor* find(const std::string& name, const std::string& state) const {
    auto it = by_key_.find(tensor_key(name, state));
    return it == by_key_.end() ? nullptr : it->second;
  }
  // Value of global element g of tensor t; pieces are read whole once and checked.
  float value(const proto::CheckpointTensor& t, int64_t g) {
    const auto& pieces = t.pieces();
    auto it =
        std::upper_bound(pieces.begin(), pieces.end(), uint64_t(g),
                         [](uint64_t v, const proto::CheckpointPiece& p) { return v < p.begin(); });
    const proto::CheckpointPiece& p = *(it - 1);  // coverage was checked: it exists
    const std::vector<float>& data = load(t, p);
    return data[size_t(uint64_t(g) - p.begin())];
  }
  // Copies global elements [g, g + count) of tensor t into out, piece by piece.
  void copy(const proto::CheckpointTensor& t, int64_t g, int64_t count, float* out) {
    const auto& pieces = t.pieces();
    auto it = std::upper_bound(
                  pieces.begin(), pieces.end(), uint64_t(g),
                  [](uint64_t v, const proto::CheckpointPiece& p) { return v < p.begin(); }) -
              1;
    while (count > 0) {
      const std::vector<float>& data = load(t, *it);
      const int64_t from = g - int64_t(it->begin());
      const int64_t n = std::min(count, int64_t(it->end()) - g);
      std::memcpy(out, data.data() + from, size_t(n) * sizeof(float));
      out += n;
      g += n;
      count -= n;
      ++it;
    }
  }
  void forget() { cache_.clear(); }

 private:
  const std::vector<float>& load(const proto::CheckpointTensor& t,
                                 const proto::CheckpointPiece& p) {
    auto key = &p;
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    const std::string path = dir_ + "/" + p.file();
    std::vector<float> data(size_t(p.end() - p.begin()));
    std::ifstream in(path, std::ios::binary);
    in.seekg(std::streamoff(p.byte_offset()));
    if (!in || !in.read(reinterpret_cast<char*>(data.data()), std::streamsize(data.size() * 4))) {
      throw UserError(
          str_cat(path, ": cannot read piece of tensor '", t.name(), "' (", t.state(), ")"));
    }
    if (crc32c(data.data(), data.size() * 4) != p.crc32c()) {
      throw UserError(str_cat(path, ": checksum mismatch in tensor '", t.name(), "' (", t.state(),
                              "), elements ", p.begin(), "-", p.end(), ": the file is corrupt"));
    }
    return cache_.emplace(key, std::move(data)).first->second;
  }

  std::string dir_;
  std::map<std::string, const proto::CheckpointTensor*> by_key_;
  std::map<const proto::CheckpointPiece*, std::vector<float>> cache_;
};

// Gathers every rank's serialized piece lists on all ranks (sizes agreed first).
std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& mine) {
  double size = double(mine.size());
  comm.all_reduce_f64(&size, 1, /*max=*/true);
  const int64_t words = (int64_t(size) + 4 + 3) / 4;  // 4-byte length prefix, then the bytes
  std::vector<int32_t> send(size_t(words), 0), recv(size_t(words * comm.size()));
  const uint32_t n = uint32_t(mine.size());
  std::memcpy(send.data(), &n, 4);
  std::memcpy(reinterpret_cast<char*>(send.data()) + 4, mine.data(), mine.size());
  comm.all_gather(send.data(), recv.data(), words, DType::kI32);
  std::vector<std::string> out;
  for (int r = 0; r < comm.size(); ++r) {
    const char* base = reinterpret_cast<const char*>(recv.data() + r * words);
    uint32_t len;
    std::memcpy(&len, base, 4);
    out.emplace_back(base + 4, len);
  }
  return out;
}

}  // namespace

namespace {

constexpr std::pair<const char*, SaveFault::Point> kSaveFaultPoints[] = {
    {"mid_piece", SaveFault::Point::kMidPiece},
    {"after_fsync", SaveFault::Point::kAfterFsync},
    {"before_manifest", SaveFault::Point::kBeforeManifest},
    {"after_manifest", SaveFault::Point::kAfterManifest},
    {"before_rename", SaveFault::Point::kBeforeRename},
    {"after_rename", SaveFault::Point::kAfterRename},
    {"before_latest", SaveFault::Point::kBeforeLatest},
    {"after_latest", SaveFault::Point::kAfterLatest},
};

// The test hook: dies here if this rank was told to die at this point.
void fault_point(const SaveFault& fault, int rank, SaveFault::Point point) {
  if (fault.rank != rank || fault.point != point) return;
  const char* name = "";
  for (const auto& [n, p] : kSaveFaultPoints) name = p == point ? n : name;
  std::fprintf(stderr, "shardtrain: [rank %d] injected %s during checkpoint save (%s)\n", rank,
               fault.stall ? "stall" : "death", name);
  std::fflush(stderr);
  while (fault.stall) std::this_thread::sleep_for(std::chrono::seconds(1));
  std::_Exit(9);
}

// Renames `tmp` to `final`. A re-save of the same step (a run resumed from an older
// checkpoint into the same root) finds `final` there, and `latest` may name it: the two are
// swapped atomically (renameat2 RENAME_EXCHANGE), so `final` is always a complete checkpoint,
// then the old one (now at `tmp`) is removed. Where the file system cannot swap, the old one
// is removed first, and a crash in between leaves `final` missing (resume then says so).
// `before_rename` runs just before the name changes (the crash tests' hook).
template <class F>
void commit_directory(const std::string& tmp, const std::string& final_dir, F before_rename) {
  std::error_code ec;
  if (fs::exists(final_dir, ec)) {
    before_rename();
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
      fs::remove_all(tmp, ec);
      return;
    }
    fs::remove_all(final_dir, ec);
  }
  before_rename();
  if (std::rename(tmp.c_str(), final_dir.c_str()) != 0) {
    throw UserError(str_cat(final_dir, ": cannot commit the checkpoint directory"));
  }
}

}  // namespace

bool SaveFault::parse(const std::string& name, Point* out) {
  for (const auto& [n, p] : kSaveFaultPoints) {
    if (name == n) {
      *out = p;
      return true;
    }
  }
  return false;
}

void save_checkpoint(const std::string& root, const Config& config, const TrainState& state,
                     ZeroEngine& engine, Communicator& world, int keep,
                     const std::string& layout_text, SaveFault fault) {
  using Point = SaveFault::Point;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string name = step_dir_name(state.step);
  const std::string final_dir = root + "/" + name, tmp_dir = final_dir + ".tmp";
  const int rank = world.rank();
  const int tp = int(engine.dims().tp), tp_rank = engine.tp_rank();
  std::string error;

  // 1. Rank 0 prepares the temporary directory.
  if (rank == 0) {
    std::error_code ec;
    fs::create_directories(root, ec);
    fs::remove_all(tmp_dir, ec);
    if (!fs::create_directory(tmp_dir, ec))
      error = str_cat(tmp_dir, ": cannot create (", ec.message(), ")");
  }
  double failed = error.empty() ? 0 : 1;
  world.all_reduce_f64(&failed, 1, true);
  if (failed != 0) throw UserError(error.empty() ? str_cat(tmp_dir, ": cannot create") : error);

  // 2. Every rank writes its pieces: for each owned run, each state, each global segment.
  char file[32];
  std::snprintf(file, sizeof file, "rank_%05d.bin", rank);
  const std::string path = tmp_dir + "/" + file;
  proto::CheckpointManifest mine;
  std::map<std::string, proto::CheckpointTensor*> tensors;
  double written = 0;
  try {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) throw UserError(str_cat(path, ": cannot write"));
    uint64_t offset = 0;
    bool ok = true;
    const auto runs = engine.owned_runs();
    for (size_t ri = 0; ri < runs.size(); ++ri) {
      const OwnedRun& run = runs[ri];
      const models::ParamInfo& p = engine.layout()[size_t(run.unit)].params[size_t(run.param)];
      for (int k = 0; k < 3; ++k) {
        auto& slot = tensors[tensor_key(p.name, kStateNames[k])];
        if (slot == nullptr) {
          slot = mine.add_tensors();
          slot->set_name(p.name);
          slot->set_state(kStateNames[k]);
          for (int64_t d : p.hf_shape) slot->add_shape(d);
        }
        const std::vector<float> host = engine.state_values(run, StateKind(k));
        const float* values = host.data();
        for_each_global_segment(p, run.begin, run.end, tp, tp_rank,
                                [&](int64_t lo, int64_t hi, int64_t g) {
                                  const float* seg = values + (lo - run.begin);
                                  const size_t bytes = size_t(hi - lo) * 4;
                                  ok = ok && std::fwrite(seg, 1, bytes, f) == bytes;
                                  auto* piece = slot->add_pieces();
                                  piece->set_file(file);
                                  piece->set_byte_offset(offset);
                                  piece->set_begin(uint64_t(g));
                                  piece->set_end(uint64_t(g + hi - lo));
                                  piece->set_crc32c(crc32c(seg, bytes));
                                  offset += bytes;
                                });
      }
      if (ri == runs.size() / 2) {
        std::fflush(f);  // what was written so far reaches the file: a torn file, not none
        fault_point(fault, rank, Point::kMidPiece);
      }
    }
    ok = std::fflush(f) == 0 && ::fsync(fileno(f)) == 0 && ok;
    ok = std::fclose(f) == 0 && ok;
    fault_point(fault, rank, Point::kAfterFsync);
    if (!ok) throw UserError(str_cat(path, ": write failed (disk full?)"));
    written = double(offset);
  } catch (const UserError& e) {
    error = e.what();
  }
  failed = error.empty() ? 0 : 1;
  world.all_reduce_f64(&failed, 1, true);
  if (failed != 0) {
    throw UserError(error.empty()
                        ? str_cat("checkpoint ", final_dir, ": another rank failed to write")
                        : error);
  }
  world.all_reduce_f64(&written, 1, false);

  // 3. Rank 0 merges the piece lists into the manifest and commits.
  std::string bytes;
  mine.SerializeToString(&bytes);
  const std::vector<std::string> all = all_gather_strings(world, bytes);
  if (rank == 0) {
    proto::CheckpointManifest m;
    m.set_format_version(kCheckpointFormatVersion);
    *m.mutable_config() = config;
    m.set_step(state.step);
    m.set_data_position(state.data_position);
    *m.mutable_loss_scaler() = state.scaler;
    m.set_rng_seed(config.train().seed());
    m.set_saved_layout(layout_text);
    std::map<std::string, proto::CheckpointTensor*> merged;
    std::vector<std::string> order;
    for (const std::string& s : all) {
      proto::CheckpointManifest part;
      ST_CHECK(part.ParseFromString(s), "corrupt piece list from a rank");
      for (const auto& t : part.tensors()) {
        const std::string key = tensor_key(t.name(), t.state());
        auto& slot = merged[key];
        if (slot == nullptr) {
          slot = m.add_tensors();
          slot->set_name(t.name());
          slot->set_state(t.state());
          *slot->mutable_shape() = t.shape();
        }
        for (const auto& piece : t.pieces()) *slot->add_pieces() = piece;
      }
    }
    for (auto& t : *m.mutable_tensors()) {
      std::sort(t.mutable_pieces()->begin(), t.mutable_pieces()->end(),
                [](const auto& a, const auto& b) { return a.begin() < b.begin(); });
    }
    std::string text;
    m.SerializeToString(&text);
    fault_point(fault, rank, Point::kBeforeManifest);
    write_atomically(tmp_dir + "/" + kManifest, text);
    fsync_path(tmp_dir);
    fault_point(fault, rank, Point::kAfterManifest);
    std::error_code ec;
    commit_directory(tmp_dir, final_dir, [&] { fault_point(fault, rank, Point::kBeforeRename); });
    fault_point(fault, rank, Point::kAfterRename);
    fsync_path(root);
    fault_point(fault, rank, Point::kBeforeLatest);
    write_atomically(root + "/latest", name + "\n");
    fsync_path(root);
    fault_point(fault, rank, Point::kAfterLatest);
    // Keep the newest `keep`; drop older ones and leftovers of interrupted saves.
    std::vector<std::string> steps;
    for (const auto& e : fs::directory_iterator(root)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("step_", 0) != 0) continue;
      if (n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) {
        fs::remove_all(e.path(), ec);
      } else {
        steps.push_back(n);
      }
    }
    std::sort(steps.begin(), steps.end());
    for (size_t i = 0; i + size_t(keep) < steps.size(); ++i)
      fs::remove_all(root + "/" + steps[i], ec);
  }
  world.barrier();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  log_info("saved checkpoint ", final_dir, ": ", written / 1e9, " GB in ", secs, " s (",
           written / 1e9 / secs, " GB/s)");
}

std::string resolve_checkpoint(const std::string& resume, const std::string& root) {
  if (resume != "auto") {
    if (!fs::is_directory(resume))
      throw UserError(str_cat("--resume ", resume, ": no such checkpoint directory"));
    return resume;
  }
  if (root.empty()) throw UserError("--resume auto needs checkpoint.dir in the config");
  std::ifstream in(root + "/latest");
  if (!in) return "";  // nothing saved yet: a fresh start
  std::string name;
  std::getline(in, name);
  if (name.empty() || name.find('/') != std::string::npos || name.find("..") != std::string::npos) {
    throw UserError(str_cat(root, "/latest: does not name a checkpoint"));
  }
  return root + "/" + name;
}

proto::CheckpointManifest read_manifest(const std::string& dir) {
  const std::string path = dir + "/" + kManifest;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(str_cat(path, ": missing (not a complete checkpoint)"));
  std::stringstream ss;
  ss << in.rdbuf();
  proto::CheckpointManifest m;
  if (!m.ParseFromString(ss.str())) throw UserError(str_cat(path, ": not a checkpoint manifest"));
  if (m.format_version() == 0 || m.format_version() > kCheckpointFormatVersion) {
    throw UserError(str_cat(path, ": format version ", m.format_version(),
                            " is not supported (this build reads up to ", kCheckpointFormatVersion,
                            ")"));
  }
  std::map<std::string, uint64_t> file_sizes;
  for (const auto& t : m.tensors()) {
    auto bad = [&](const std::string& what) {
      return UserError(str_cat(path, ": tensor '", t.name(), "' (", t.state(), "): ", what));
    };
    uint64_t numel = 1;
    for (int64_t d : t.shape()) {
      if (d < 0 || uint64_t(d) > kMaxElements) throw bad("bad shape");
      numel *= uint64_t(d);
      if (numel > kMaxElements) throw bad("shape too large");
    }
    uint64_t next = 0;
    for (const auto& p : t.pieces()) {
      if (p.begin() != next) {
        throw bad(p.begin() < next ? str_cat("pieces overlap at element ", p.begin())
                                   : str_cat("elements ", next, "-", p.begin(), " are missing"));
      }
      if (p.end() <= p.begin() || p.end() > numel)
        throw bad(str_cat("piece ends past the tensor (", p.end(), " > ", numel, ")"));
      const std::string& f = p.file();
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
        throw bad(str_cat("piece file '", f, "' is not a plain file name"));
      }
      auto it = file_sizes.find(f);
      if (it == file_sizes.end()) {
        std::error_code ec;
        const uint64_t size = fs::file_size(dir + "/" + f, ec);
        if (ec)
          throw UserError(str_cat(dir, "/", f, ": missing (needed by tensor '", t.name(), "')"));
        it = file_sizes.emplace(f, size).first;
      }
      const uint64_t bytes = (p.end() - p.begin()) * 4;
      if (p.byte_offset() > it->second || bytes > it->second - p.byte_offset()) {
        throw UserError(str_cat(dir, "/", f, ": tensor '", t.name(), "' (", t.state(),
                                ") points past the end of the file (truncated?)"));
      }
      next = p.end();
    }
    if (next != numel) throw bad(str_cat("elements ", next, "-", numel, " are missing"));
  }
  return m;
}

TrainState load_checkpoint(const std::string& dir, ZeroEngine& engine) {
  const proto::CheckpointManifest m = read_manifest(dir);
  const std::string path = dir + "/" + kManifest;
  const auto& saved = m.config().model();
  const models::GptDims& d = engine.dims();
  if (saved.n_head() != d.H) {
    throw UserError(
        str_cat(path, ": saved with model.n_head ", saved.n_head(), ", the config has ", d.H));
  }
  PieceReader reader(dir, m);
  // Every tensor the model needs, with the shape the config gives it.
  for (const auto& unit : engine.layout()) {
    for (const auto& p : unit.params) {
      for (const char* state : kStateNames) {
        const proto::CheckpointTensor* t = reader.find(p.name, state);
        if (t == nullptr)
          throw UserError(str_cat(path, ": tensor '", p.name, "' (", state, ") is missing"));
        Shape shape(t->shape().begin(), t->shape().end());
        if (shape != p.hf_shape) {
          throw UserError(str_cat(path, ": tensor '", p.name, "' has shape ", shape_str(shape),
                                  ", the config needs ", shape_str(p.hf_shape)));
        }
      }
    }
  }
  const int tp = int(d.tp), tp_rank = engine.tp_rank();
  engine.load_state(
      [&](StateKind kind, const models::ParamInfo& p, int64_t lo, int64_t hi, float* out) {
        const proto::CheckpointTensor& t = *reader.find(p.name, kStateNames[int(kind)]);
        const int64_t valid = shape_numel(p.hf_shape);
        // Contiguous global segments are copied whole; vocabulary padding (past `valid`) is zero.
        for_each_global_segment(p, lo, hi, tp, tp_rank, [&](int64_t l0, int64_t l1, int64_t g0) {
          const int64_t n = std::clamp<int64_t>(valid - g0, 0, l1 - l0);
          if (n > 0) reader.copy(t, g0, n, out + (l0 - lo));
          std::fill(out + (l0 - lo) + n, out + (l1 - lo), 0.0f);
        });
        reader.forget();
      });
  TrainState s;
  s.step = m.step();
  s.data_position = m.data_position();
  s.scaler = m.loss_scaler();
  return s;
}

std::string inspect_checkpoint(const std::string& dir) {
  const proto::CheckpointManifest m = read_manifest(dir);
  std::ostringstream os;
  uint64_t elements = 0, pieces = 0;
  std::map<std::string, int> files;
  PieceReader reader(dir, m);
  for (const auto& t : m.tensors()) {
    for (const auto& p : t.pieces()) {
      reader.value(t, int64_t(p.begin()));  // reads and verifies the piece
      reader.forget();
      elements += p.end() - p.begin();
      ++pieces;
      ++files[p.file()];
    }
  }
  const auto& mc = m.config().model();
  os << dir << ": format " << m.format_version() << ", step " << m.step() << ", data position "
     << m.data_position() << ", loss scale " << m.loss_scaler().scale() << " (clean steps "
     << m.loss_scaler().clean_steps() << ", overflows " << m.loss_scaler().overflows() << ")\n"
     << "  model: " << mc.n_layer() << " layers, " << mc.n_head() << " heads, width "
     << mc.d_model() << ", vocab " << mc.vocab_size() << ", context " << mc.seq_len() << "\n"
     << "  saved by: " << m.saved_layout() << "\n"
     << "  " << m.tensors_size() << " tensors (weights, adam_m, adam_v), " << elements
     << " fp32 elements in " << pieces << " pieces over " << files.size() << " files\n"
     << "  every checksum verified\n";
  return os.str();
}

void reshard_checkpoint(const std::string& in, const std::string& out, const Config& config,
                        int world, int64_t buffer_bytes) {
  const proto::CheckpointManifest src = read_manifest(in);
  const int tp = config.parallel().tp();
  ST_USER_CHECK(world >= 1 && world % tp == 0, "reshard: --world ", world,
                " must be a positive multiple of parallel.tp (", tp, ")");
  const int dp = world / tp;
  const int64_t chunk = std::max<int64_t>(1, buffer_bytes / 4);
  std::vector<float> buf(static_cast<size_t>(chunk));
  std::map<std::string, const proto::CheckpointTensor*> by_key;
  for (const auto& t : src.tensors()) by_key[tensor_key(t.name(), t.state())] = &t;

  // 1. Verify every source piece, streaming.
  for (const auto& t : src.tensors()) {
    for (const auto& p : t.pieces()) {
      const std::string path = in + "/" + p.file();
      std::ifstream f(path, std::ios::binary);
      f.seekg(std::streamoff(p.byte_offset()));
      uint32_t crc = 0;
      for (uint64_t done = p.begin(); done < p.end();) {
        const uint64_t n = std::min<uint64_t>(uint64_t(chunk), p.end() - done);
        if (!f.read(reinterpret_cast<char*>(buf.data()), std::streamsize(n * 4))) {
          throw UserError(str_cat(path, ": cannot read tensor '", t.name(), "'"));
        }
        crc = crc32c(buf.data(), n * 4, crc);
        done += n;
      }
      if (crc != p.crc32c()) {
        throw UserError(str_cat(path, ": checksum mismatch in tensor '", t.name(), "' (", t.state(),
                                "): the file is corrupt"));
      }
    }
  }

  // 2. Write the new layout's files: rank by rank, run by run, segment by segment.
  const std::string tmp = out + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw UserError(str_cat(tmp, ": cannot create (", ec.message(), ")"));
  const models::GptDims dims = models::GptDims::from_config(config.model(), tp);
  const auto layout = models::gpt_layout(dims);
  proto::CheckpointManifest m = src;
  m.clear_tensors();
  *m.mutable_config()->mutable_parallel() = config.parallel();
  m.set_saved_layout(str_cat("world ", world, " = dp ", dp, " x tp ", tp, ", ZeRO ",
                             config.parallel().zero_stage(),
                             " (resharded from: ", src.saved_layout(), ")"));
  std::map<std::string, proto::CheckpointTensor*> tensors;
  for (int rank = 0; rank < world; ++rank) {
    char file[32];
    std::snprintf(file, sizeof file, "rank_%05d.bin", rank);
    std::FILE* f = std::fopen((tmp + "/" + file).c_str(), "wb");
    if (f == nullptr) throw UserError(str_cat(tmp, "/", file, ": cannot write"));
    uint64_t offset = 0;
    bool ok = true;
    for (const OwnedRun& run : owned_runs_of(dims, layout, dp, rank / tp, rank % tp)) {
      const models::ParamInfo& p = layout[size_t(run.unit)].params[size_t(run.param)];
      for (const char* state : kStateNames) {
        auto it = by_key.find(tensor_key(p.name, state));
        if (it == by_key.end())
          throw UserError(str_cat(in, ": tensor '", p.name, "' (", state, ") is missing"));
        const proto::CheckpointTensor& t = *it->second;
        if (Shape(t.shape().begin(), t.shape().end()) != p.hf_shape) {
          throw UserError(str_cat(in, ": tensor '", p.name, "' does not match the config's shape ",
                                  shape_str(p.hf_shape)));
        }
        auto& slot = tensors[tensor_key(p.name, state)];
        if (slot == nullptr) {
          slot = m.add_tensors();
          slot->set_name(p.name);
          slot->set_state(state);
          *slot->mutable_shape() = t.shape();
        }
        for_each_global_segment(
            p, run.begin, run.end, tp, rank % tp, [&](int64_t lo, int64_t hi, int64_t g0) {
              const uint64_t begin = uint64_t(g0), end = uint64_t(g0 + hi - lo);
              uint32_t crc = 0;
              // Copy [begin, end) from the source pieces that overlap it, a buffer at a time.
              auto sp = std::upper_bound(t.pieces().begin(), t.pieces().end(), begin,
                                         [](uint64_t v, const auto& x) { return v < x.begin(); }) -
                        1;
              for (uint64_t at = begin; at < end;) {
                if (at >= sp->end()) ++sp;
                const uint64_t n = std::min({uint64_t(chunk), end - at, sp->end() - at});
                std::ifstream src_file(in + "/" + sp->file(), std::ios::binary);
                src_file.seekg(std::streamoff(sp->byte_offset() + (at - sp->begin()) * 4));
                if (!src_file.read(reinterpret_cast<char*>(buf.data()), std::streamsize(n * 4))) {
                  throw UserError(
                      str_cat(in, "/", sp->file(), ": cannot read tensor '", p.name, "'"));
                }
                crc = crc32c(buf.data(), n * 4, crc);
                ok = ok && std::fwrite(buf.data(), 4, n, f) == n;
                at += n;
              }
              auto* piece = slot->add_pieces();
              piece->set_file(file);
              piece->set_byte_offset(offset);
              piece->set_begin(begin);
              piece->set_end(end);
              piece->set_crc32c(crc);
              offset += (end - begin) * 4;
            });
      }
    }
    ok = std::fflush(f) == 0 && ::fsync(fileno(f)) == 0 && ok;
    ok = std::fclose(f) == 0 && ok;
    if (!ok) throw UserError(str_cat(tmp, "/", file, ": write failed (disk full?)"));
  }
  for (auto& t : *m.mutable_tensors()) {
    std::sort(t.mutable_pieces()->begin(), t.mutable_pieces()->end(),
              [](const auto& a, const auto& b) { return a.begin() < b.begin(); });
  }
  std::string bytes;
  m.SerializeToString(&bytes);
  write_atomically(tmp + "/" + kManifest, bytes);
  fsync_path(tmp);
  if (fs::exists(out)) throw UserError(str_cat(out, ": already exists (reshard never overwrites)"));
  if (std::rename(tmp.c_str(), out.c_str()) != 0) throw UserError(str_cat(out, ": cannot create"));
}

}  // namespace shardtrain::parallel
