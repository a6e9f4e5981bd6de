#!/usr/bin/env bash
# demo.sh — the main job from a fresh machine: set up, build, then run shardtrain on the
# bundled config. Until the GPT model lands (issue [gpt]) the run validates and prints the
# effective config (`train --dry-run`); it grows into tokenize + multi-rank training + sample.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$SHARDTRAIN_ROOT/scripts/setup.sh"
"$SHARDTRAIN_ROOT/scripts/build.sh"
"$BUILD_DIR/bin/shardtrain" train --config "$SHARDTRAIN_ROOT/configs/tiny.pbtxt" --dry-run
