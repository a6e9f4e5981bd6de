#!/usr/bin/env bash
# setup.sh — installs everything shardtrain needs to build, test and run, from Debian's
# packages. Safe to run again: packages already present are skipped, and apt is not touched
# at all when nothing is missing. The CUDA toolkit is detected by CMake, never installed here.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config
  # runtime dependencies (cmake/Dependencies.cmake says why each was chosen)
  libopenmpi-dev openmpi-bin            # MPI: launch and host-memory communicator
  protobuf-compiler libprotobuf-dev     # config schema, checkpoint manifests
  libdnnl-dev                           # oneDNN: CPU GEMM (OpenMP runtime)
  ocl-icd-opencl-dev                    # Debian's oneDNN is built with an OpenCL GPU runtime: its
                                        # CMake config needs these files (libdnnl-dev only
                                        # recommends them, and we install without recommends)
  libcli11-dev                          # command line
  nlohmann-json3-dev                    # safetensors headers, metrics JSON
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-torch python3-numpy           # reference implementation for parity tests (/usr/bin/python3)
  chromium                              # headless check + screenshot of the HTML memory report
  qemu-user                             # runs the executable on emulated CPUs without AVX-512
                                        # and without AVX2 (tests/build/other_cpus.py)
  libopenblas0-openmp                   # Debian's torch links the generic BLAS; this gives the
                                        # PyTorch baseline in bench/ an optimised one (shardtrain
                                        # itself uses no BLAS: oneDNN)
  # the bundled demo corpus: `bible Gen1:1-Rev22:21` prints the King James Bible
  bible-kjv
)

missing=()
for p in "${packages[@]}"; do
  if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
echo "setup: all dependencies present"
