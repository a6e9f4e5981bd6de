// checkpoint.h — sharded checkpoints that any layout can load.
//
// Save (collective): every rank writes the fp32 master weights and AdamW moments it owns
// (its ZeRO shard; tp-replicated parameters from tp rank 0 only) as pieces of the *global*
// tensors — contiguous ranges of the flattened Hugging Face-shaped tensor — into its own file;
// rank 0 gathers the piece lists and writes a protobuf manifest (runtime/proto/checkpoint.proto)
// with the config, step, data position and loss-scaler state. Because pieces are global ranges,
// a checkpoint does not remember the layout that wrote it, and any world size, tp, ZeRO stage
// and compute dtype loads it: each rank reads the pieces that overlap what it holds.
//
// Commit protocol (REFERENCE.md): files are written under ROOT/step_N.tmp and fsynced; all
// ranks agree the writes succeeded; rank 0 writes the manifest (temporary name, fsync,
// rename), renames the directory to ROOT/step_N, fsyncs ROOT, then replaces ROOT/latest by
// rename. A crash at any instant leaves `latest` naming the previous complete checkpoint.
//
// Reading trusts nothing: the manifest's format version, each tensor's shape against the
// config, pieces sorted and covering [0, numel) with no gap or overlap, piece files plain names
// inside the checkpoint, byte ranges inside the files, and the CRC-32C of every piece read.
#pragma once

#include <cstdint>
#include <string>

#include "parallel/zero.h"
#include "runtime/comm.h"
#include "runtime/config.h"
#include "runtime/proto/checkpoint.pb.h"

namespace shardtrain::parallel {

constexpr uint32_t kCheckpointFormatVersion = 1;

struct TrainState {
  int64_t step = 0;           // optimizer steps completed
  int64_t data_position = 0;  // next micro-batch of the data contract
  proto::LossScalerState scaler;
};

// Test hook: `rank` (or -1: none) dies (_Exit) at `point` of the save, in commit order, or with
// `stall` stops there for good (a host cut off mid-save, tests/multihost). kMidPiece and
// kAfterFsync apply to any rank; the others are rank 0's commit steps.
struct SaveFault {
  enum class Point {
    kMidPiece,        // half-way through this rank's pieces
    kAfterFsync,      // this rank's file written and fsynced
    kBeforeManifest,  // every rank's pieces written, no manifest yet
    kAfterManifest,   // manifest written into STEP.tmp and synced
    kBeforeRename,    // just before STEP.tmp is renamed to STEP
    kAfterRename,     // STEP complete, `latest` still names the previous checkpoint
    kBeforeLatest,    // the rename synced to disk, `latest` not yet replaced
    kAfterLatest,     // `latest` names STEP; older checkpoints not yet pruned
  };
  int rank = -1;
  Point point = Point::kMidPiece;
  bool stall = false;
  // "mid_piece", "after_fsync", ... ("after_latest"); false for any other name.
  static bool parse(const std::string& name, Point* out);
};

// Collective over `world`. Keeps the newest `keep` checkpoints under `root`.
void save_checkpoint(const std::string& root, const Config& config, const TrainState& state,
                     ZeroEngine& engine, Communicator& world, int keep,
                     const std::string& layout_text, SaveFault fault = {});

// "auto": ROOT/latest's checkpoint, or "" when there is none yet; otherwise `resume` itself.
std::string resolve_checkpoint(const std::string& resume, const std::string& root);

// Reads and checks the manifest of checkpoint directory `dir` (structure, files, ranges).
proto::CheckpointManifest read_manifest(const std::string& dir);

// Loads weights and optimizer state into `engine` (any layout); returns the training state.
TrainState load_checkpoint(const std::string& dir, ZeroEngine& engine);

// `shardtrain inspect`: a summary of the manifest; verifies every piece's checksum.
std::string inspect_checkpoint(const std::string& dir);

// `shardtrain reshard`: rewrites checkpoint `in` as `out` with the pieces and files a run of
// `world` ranks under `config` (tp, ZeRO stage) would write, streaming through a buffer of
// `buffer_bytes`: memory is bounded by the buffer, not by the model.
void reshard_checkpoint(const std::string& in, const std::string& out, const Config& config,
                        int world, int64_t buffer_bytes = int64_t(64) << 20);

}  // namespace shardtrain::parallel
