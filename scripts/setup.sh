#!/usr/bin/env bash
# setup.sh — installs everything shardtrain needs to build, test and run, from Debian's
# packages (and, for one parity test, transformers from PyPI in a virtual environment). Safe to
# run again: packages already present are skipped, and apt is not touched at all when nothing
# is missing. The CUDA toolkit is detected by CMake, never installed here.
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
  python3-venv ca-certificates          # the virtual environment for transformers (below);
                                        # pip reaches PyPI over HTTPS
  chromium                              # headless check + screenshot of the HTML memory report
  qemu-user                             # runs the executable on emulated CPUs without AVX-512
                                        # and without AVX2 (tests/build/other_cpus.py)
  libopenblas0-openmp                   # Debian's torch links the generic BLAS; this gives the
                                        # PyTorch baseline in bench/ an optimised one (shardtrain
                                        # itself uses no BLAS: oneDNN)
  iproute2                              # ip netns / veth / bridge: the test hosts of
                                        # tests/multihost (unshare is in util-linux, essential)
  # the bundled demo corpus: `bible Gen1:1-Rev22:21` prints the King James Bible
  bible-kjv
)

missing=()
for p in "${packages[@]}"; do
  if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# Hugging Face transformers for tests/parity/hf_transformers.py (an export must load in
# AutoModelForCausalLM / AutoTokenizer as is). Debian has no transformers package, so it comes
# from PyPI, pinned, into a virtual environment over Debian's python3 that sees Debian's torch
# and numpy (--system-site-packages). Made again only when the pinned versions are not there.
venv="${SHARDTRAIN_VENV:-/opt/shardtrain-venv}"  # tests/CMakeLists.txt has the same default
hf_pins=(transformers==4.38.2 tokenizers==0.15.2 safetensors==0.8.0 huggingface_hub==0.36.2)
hf_check='import transformers, tokenizers, safetensors
assert (transformers.__version__, tokenizers.__version__) == ("4.38.2", "0.15.2")'
if ! "$venv/bin/python3" -c "$hf_check" 2>/dev/null; then
  echo "setup: installing ${hf_pins[*]} into $venv"
  "${sudo_cmd[@]}" /usr/bin/python3 -m venv --system-site-packages "$venv"
  "${sudo_cmd[@]}" "$venv/bin/python3" -m pip install -q "${hf_pins[@]}"
  "$venv/bin/python3" -c "$hf_check"
fi
echo "setup: all dependencies present"
