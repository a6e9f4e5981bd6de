#!/usr/bin/env bash
# build.sh — configure and build into $BUILD_DIR (default build/). Extra arguments go to
# CMake, e.g. scripts/build.sh -DSHARDTRAIN_SANITIZE=ON.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cmake -S "$SHARDTRAIN_ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
