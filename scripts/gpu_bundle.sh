#!/usr/bin/env bash
# gpu_bundle.sh — builds the CUDA-enabled binaries (sm_80 and sm_90) and gathers into one folder
# everything they need on a GPU machine that has none of our packages: the executables, every
# shared library they load except glibc, the CUDA runtime, cuBLAS(Lt) and NCCL (the GPU
# machine's toolkit and Python wheels provide those; bin/env.sh finds them at run time), the
# Open MPI runtime (orterun, its plugins and help files, PMIx, hwloc, libevent) relocated
# through OPAL_* variables, the check (gpu_check.sh) and the scripts it runs.
#
#   scripts/gpu_bundle.sh [--out DIR] [--no-build]     (default DIR: gpu-bundle/, git-ignored)
#
# --no-build takes the binaries from $BUILD_DIR as they are (a ctest case bundles that way).
# Layout: bin/ (wrappers that run from any directory), libexec/ (the ELF files), lib/ (shared
# libraries; lib/openmpi, lib/pmix: plugins), share/ and etc/ (Open MPI's help files and
# settings), configs/, bench/, tests/ (what gpu_check.sh runs), BUNDLE (commit, date, sizes).
set -euo pipefail
source "$(dirname "$0")/env.sh"
out="$SHARDTRAIN_ROOT/gpu-bundle"
build=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "gpu_bundle: unknown argument '$1' (usage: gpu_bundle.sh [--out DIR] [--no-build])" >&2
       exit 2 ;;
  esac
done
max_mib=60  # what one device call may carry is 64 MiB; leave room for the working tree

if ((build)); then
  command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || {
    echo "gpu_bundle: no CUDA toolkit (nvcc) on this machine: the bundle needs the CUDA build" >&2
    exit 2; }
  "$SHARDTRAIN_ROOT/scripts/build.sh" -DSHARDTRAIN_CUDA=ON
fi
bin="$BUILD_DIR/bin"
exes=(shardtrain gpu_runtime_test gemm_lt_test gpu_ops_test nccl_comm_test attention_gpu_bench)
for e in "${exes[@]}"; do
  [[ -x $bin/$e ]] || { echo "gpu_bundle: $bin/$e missing: build with the CUDA toolkit first" >&2
                        exit 2; }
done

rm -rf "$out"
mkdir -p "$out"/{bin,libexec,lib/openmpi,lib/pmix,lib/hwloc,share/openmpi,share/pmix,etc,configs,bench}
mkdir -p "$out"/tests/{parallel,parity}

# 1. Executables, and Open MPI's launcher (mpirun is orterun in Open MPI 4).
for e in "${exes[@]}"; do cp "$bin/$e" "$out/libexec/"; done
cp "$(readlink -f "$(command -v orterun)")" "$out/libexec/orterun"
cp "$(readlink -f "$(command -v orted)")" "$out/libexec/orted"

# 2. Open MPI's and PMIx's plugins: those whose libraries the bundle can carry. Plugins for
#    fabrics this check does not use (UCX, libfabric, verbs, PSM) and OpenSHMEM stay behind.
ompi_plugins=$(ompi_info --path pkglibdir --parsable | sed 's/.*://')
pmix_plugins=$(dirname "$(ldconfig -p | awk '/libpmix.so.2 /{print $NF; exit}')")
pmix_plugins=$(readlink -f "$pmix_plugins")/pmix
[[ -d $pmix_plugins ]] || pmix_plugins=/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix
skip_re='lib(uc[pstm]|fabric|ibverbs|rdmacm|psm|psm2|psm_infinipath|infinipath|efa|nl-|oshmem)'
for so in "$ompi_plugins"/mca_*.so; do
  deps=$(ldd "$so")
  [[ $deps =~ $skip_re ]] || cp "$so" "$out/lib/openmpi/"
done
cp "$pmix_plugins"/*.so "$out/lib/pmix/" 2>/dev/null || true

# 3. Every shared library those load, but glibc's and CUDA's (the GPU machine has its own).
keep_out='^lib(c|m|dl|pthread|rt|resolv|util)\.so|^ld-linux|^linux-vdso|^libcuda\.so|^libcudart\.so|^libcublas(Lt)?\.so|^libnccl\.so|^libnvidia-'
for f in "$out"/libexec/* "$out"/lib/openmpi/*.so "$out"/lib/pmix/*.so; do
  ldd "$f" 2>/dev/null | awk '/=> \//{print $1, $3}'
done | sort -u | while read -r soname path; do
  [[ $soname =~ $keep_out ]] && continue
  [[ -e $out/lib/$soname ]] || cp -L "$path" "$out/lib/$soname"
done
for f in "$out"/libexec/*; do  # the CUDA libraries the GPU machine must provide
  ldd "$f" 2>/dev/null | awk '{print $1}' | grep -E '^lib(cudart|cublas|cublasLt|nccl)\.so' || true
done | sort -u >"$out/lib/cuda-needed.txt"
for f in "$out"/lib/*.so*; do  # libraries of libraries that only the plugins pulled in
  ldd "$f" | awk '/=> \//{print $1, $3}'
done | sort -u | while read -r soname path; do
  [[ $soname =~ $keep_out || -e $out/lib/$soname ]] || cp -L "$path" "$out/lib/$soname"
done

# 4. Open MPI's help texts and settings; PMIx's help texts. The settings: Debian's (no UCX,
#    OFI, openib), and no single-copy transfers in shared memory (containers often forbid the
#    ptrace they need).
cp "$(ompi_info --path pkgdatadir --parsable | sed 's/.*://')"/*.txt "$out/share/openmpi/"
cp "$(readlink -f "$pmix_plugins/../..")"/share/pmix/*.txt "$out/share/pmix/" 2>/dev/null || true
sysconf=$(ompi_info --path sysconfdir --parsable | sed 's/.*://')
{ grep -v '^#' "$sysconf/openmpi-mca-params.conf" 2>/dev/null | grep . || true
  echo "btl_vader_single_copy_mechanism = none"; } >"$out/etc/openmpi-mca-params.conf"

# 5. The wrappers: bin/NAME sets the environment (bin/env.sh) and runs libexec/NAME.
install -m 755 "$SHARDTRAIN_ROOT/scripts/gpu_bundle/env.sh" "$out/bin/env.sh"
for e in "${exes[@]}"; do
  cat >"$out/bin/$e" <<'EOF'
#!/usr/bin/env bash
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/env.sh"
LD_LIBRARY_PATH="$SHARDTRAIN_LD_LIBRARY_PATH" exec "$SHARDTRAIN_BUNDLE/libexec/$(basename "${BASH_SOURCE[0]}")" "$@"
EOF
  chmod 755 "$out/bin/$e"
done
cat >"$out/bin/mpirun" <<'EOF'
#!/usr/bin/env bash
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/env.sh"
LD_LIBRARY_PATH="$SHARDTRAIN_LD_LIBRARY_PATH" exec "$SHARDTRAIN_BUNDLE/libexec/orterun" "$@"
EOF
chmod 755 "$out/bin/mpirun"

# 6. The check and what it runs.
install -m 755 "$SHARDTRAIN_ROOT/scripts/gpu_bundle/gpu_check.sh" "$out/gpu_check.sh"
cp "$SHARDTRAIN_ROOT/scripts/gpu_bundle/gpu_check_summary.py" "$out/bin/"
cp "$SHARDTRAIN_ROOT"/configs/*.pbtxt "$out/configs/"
cp "$SHARDTRAIN_ROOT"/bench/step_bench.py "$SHARDTRAIN_ROOT"/bench/attention_gpu_bench.py "$out/bench/"
cp "$SHARDTRAIN_ROOT"/tests/parallel/train_runs.py "$out/tests/parallel/"
cp "$SHARDTRAIN_ROOT"/tests/parity/gpt_reference.py "$out/tests/parity/"

# 7. Size: strip what the linker does not need; if still over the limit, pack the binaries
#    (lib/, libexec/) into packed.tar.xz, which bin/env.sh unpacks in place on first use.
strip --strip-unneeded "$out"/libexec/* "$out"/lib/*.so* "$out"/lib/*/*.so 2>/dev/null || true
mib=$(du -sm "$out" | cut -f1)
if ((mib > max_mib)); then
  tar -C "$out" -cf - lib libexec | xz -T0 -6 >"$out/packed.tar.xz"
  rm -rf "$out/lib" "$out/libexec"
  echo "gpu_bundle: packed lib/ and libexec/ ($mib MiB) into packed.tar.xz"
  mib=$(du -sm "$out" | cut -f1)
fi
{ echo "commit $(git -C "$SHARDTRAIN_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "size ${mib} MiB"; } >"$out/BUNDLE"
if ((mib > max_mib)); then
  echo "gpu_bundle: $out is $mib MiB, over the $max_mib MiB a device call can carry" >&2
  exit 1
fi
echo "gpu_bundle: $out ($mib MiB): bin/mpirun, bin/shardtrain, gpu_check.sh"
