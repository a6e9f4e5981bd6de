// memory_report.h — `train --memory-report DIR`: every rank's allocator statistics and
// timeline, gathered to rank 0, written as DIR/memory_report.json, a text table on stdout and
// DIR/memory_report.html (one self-contained page: inline SVG and script, no network), beside
// memplan's prediction for the same config and world.
//
// Gathering: over the Communicator, not through files. DIR only has to exist on rank 0's node
// (no shared filesystem needed, as on many clusters), and nothing is left behind per rank.
// Each rank first reduces its own timeline to at most a few thousand points (kept: the
// highest point of every time bucket, so no peak is lost), serialises its summary as JSON,
// and the ranks agree on the longest with one all_reduce_f64(max); then one all_gather of
// equal, space-padded buffers (JSON ignores trailing blanks) — world x a few hundred KiB.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "runtime/allocator.h"
#include "runtime/comm.h"
#include "runtime/config.h"

namespace shardtrain::launch {

// Rank 0, during set-up: creates DIR and checks that it can write there (UserError if not),
// so a bad path fails before training rather than after.
void prepare_memory_report_dir(const std::string& dir);

// One rank's allocator, summarised: live / peak / at_peak by category, the timeline reduced to
// at most max_points points (category bytes after an event, with the phase then in force),
// every phase change (up to a bound), and the tags with the highest peaks.
nlohmann::json memory_rank_summary(const TrackingAllocator& alloc, int rank, int max_points);

// Collective over `world`: every rank calls it after training. Rank 0 writes the files and
// prints the table; the others only contribute.
void write_memory_report(const std::string& dir, const TrackingAllocator& alloc,
                         Communicator& world, const Config& config);

// The HTML page for a report (memory_report.json's object), self-contained.
std::string memory_report_html(const nlohmann::json& report);

}  // namespace shardtrain::launch
