#!/usr/bin/env bash
# test.sh — the whole test suite from a fresh machine: set up, build, run every test.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$SHARDTRAIN_ROOT/scripts/setup.sh"
"$SHARDTRAIN_ROOT/scripts/build.sh" "$@"
cd "$BUILD_DIR"
ctest --output-on-failure -j "$(nproc)"
