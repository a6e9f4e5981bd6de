// config.h — load, override and validate the run configuration.
//
// The schema (runtime/proto/config.proto) is the one list of knobs. A config file is that
// schema in protobuf text format; `--set a.b.c=value` overrides are resolved by protobuf
// reflection, so every field is overridable without a table to keep in sync. Validation runs
// before any work and throws UserError naming the field and the problem; nothing downstream
// re-checks user input that validate() has accepted.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "runtime/proto/config.pb.h"

namespace shardtrain {

using Config = proto::Config;

// Parses protobuf text format; `source` names the text in messages (usually the file path).
Config parse_config_text(std::string_view text, std::string_view source);
Config load_config_file(const std::string& path);

// Applies one `path.to.field=value` override. Scalars and enums (case-insensitive) are set;
// a repeated scalar field takes a comma-separated list that replaces its contents.
void apply_override(Config& config, std::string_view assignment);
void apply_overrides(Config& config, const std::vector<std::string>& assignments);

enum class ValidateFor {
  kTrain,  // everything, including data paths
  kPlan,   // the model and layout only (memplan needs no data)
};

// Checks ranges and consistency. world_size > 0 also checks the layout (world = dp x tp).
void validate_config(const Config& config, int world_size, ValidateFor purpose);

// Text format of the whole effective config, defaults included, for the start-of-run log.
std::string config_to_text(const Config& config);

}  // namespace shardtrain
