#!/usr/bin/env bash
# gpu_bundle_check.sh BUILD_DIR — the GPU bundle's CPU side, on a machine whose packages it must
# not need: scripts/gpu_bundle.sh --no-build bundles BUILD_DIR's binaries into a scratch folder,
# then, in a private mount namespace where every system copy of what the bundle carries is
# hidden (each library file under an empty file, Open MPI's and PMIx's plugin, help and
# settings folders and orterun/orted under empty ones), so a library the bundle forgot fails
# to load instead of being found on this machine:
#   - the bundle is at most 60 MiB as it travels;
#   - every executable's libraries resolve inside the bundle, to glibc, or to CUDA's own;
#   - bin/mpirun -np 1 and -np 2 bin/shardtrain train --device cpu, and -np 1 --device
#     cuda-emu (bf16), train a small GPT from another working directory;
#   - gpu_check.sh says that there is no GPU and exits 77; with a stand-in nvidia-smi it runs
#     every step, each recorded in summary.json, and no GPU test skips (they fail instead).
# Exit 77 (skipped) where no mount namespace can be made or the build has no CUDA targets.
set -uo pipefail
build=$(readlink -f "$1")
root="$(cd "$(dirname "$0")/../.." && pwd)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [[ ! -x $build/bin/gpu_ops_test ]]; then
  echo "SKIP: $build has no CUDA targets (no CUDA toolkit at configure time)"
  exit 77
fi
if ! unshare --mount --propagation private true 2>/dev/null; then
  echo "SKIP: cannot make a mount namespace here (unshare --mount needs root)"
  exit 77
fi
tmp=$(mktemp -d /tmp/gpu_bundle_check.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
b="$tmp/gpu-bundle"
BUILD_DIR="$build" "$root/scripts/gpu_bundle.sh" --no-build --out "$b" || exit 1
mib=$(du -sm "$b" | cut -f1)
echo "bundle as it travels: $mib MiB"
((mib <= 60)) || { echo "FAIL: the bundle is $mib MiB, over 60"; exit 1; }

# A token shard for the runs (written here: the namespace has only bash and coreutils to lean
# on, and the bundle).
python3 - "$tmp/train.bin" <<'EOF'
import random, struct, sys
rng, vocab, n = random.Random(5), 96, 20000
tokens = [(i * 7 + (i // 5)) % vocab if rng.random() > 0.1 else rng.randrange(vocab) for i in range(n)]
h = b"STTOKENS" + struct.pack("<IIQQ", 1, 2, vocab, n)
open(sys.argv[1], "wb").write(h + b"\0" * (64 - len(h)) + struct.pack(f"<{n}H", *tokens))
EOF
cat >"$tmp/c.pbtxt" <<EOF
model { n_layer: 2 n_head: 2 d_model: 128 vocab_size: 96 seq_len: 32 }
optimizer { lr: 1e-3 warmup_steps: 1 }
data { train: "$tmp/train.bin" micro_batch: 2 }
train { steps: 3 seed: 1 log_every: 1 threads: 1 }
EOF

# What to hide: this machine's copies of the bundle's libraries (by soname, through the linker
# cache, and the files their links point to) and of every library the build's executables
# load, and Open MPI's and PMIx's own folders and tools.
bash "$b/bin/env.sh" 2>/dev/null  # unpack once, outside the namespace (needs nothing hidden)
hide_files=() hide_dirs=()
for f in "$b"/lib/*.so*; do
  so=$(basename "$f")
  while read -r p; do
    [[ -n $p ]] && hide_files+=("$p" "$(readlink -f "$p")")
  done < <(ldconfig -p | awk -v s="$so" '$1 == s {print $NF}')
done
# ... and every non-glibc, non-CUDA library the build's own executables load from this machine.
for e in shardtrain gpu_ops_test gpu_runtime_test gemm_lt_test; do
  while read -r p; do hide_files+=("$p" "$(readlink -f "$p")"); done < <(
    ldd "$build/bin/$e" | awk '/=> \//{print $3}' |
    grep -vE '/lib(c|m|dl|pthread|rt|resolv|util)\.so|ld-linux|libcuda|libcudart|libcublas|libnccl')
done
for e in orterun orted mpirun; do
  p=$(command -v $e) && hide_files+=("$(readlink -f "$p")")
done
for d in "$(ompi_info --path pkglibdir --parsable | sed 's/.*://')" \
         "$(ompi_info --path pkgdatadir --parsable | sed 's/.*://')" \
         "$(ompi_info --path sysconfdir --parsable | sed 's/.*://')" \
         /usr/lib/x86_64-linux-gnu/pmix2 /usr/lib/x86_64-linux-gnu/hwloc "$build/bin"; do
  [[ -d $d ]] && hide_dirs+=("$d")
done
printf '%s\n' "${hide_files[@]}" | sort -u >"$tmp/hide_files"
printf '%s\n' "${hide_dirs[@]}" >"$tmp/hide_dirs"
echo "hiding $(wc -l <"$tmp/hide_files") library and program files and ${#hide_dirs[@]} folders"

cat >"$tmp/inside.sh" <<'EOF'
set -uo pipefail
b=$1 tmp=$2
while read -r f; do mount --bind /dev/null "$f" || exit 1; done <"$tmp/hide_files"
while read -r d; do mount -t tmpfs -o ro,size=4k none "$d" || exit 1; done <"$tmp/hide_dirs"
fail=0
# Libraries: inside the bundle, glibc, or the CUDA runtime's own folders.
source "$b/bin/env.sh"
for e in "$b"/libexec/*; do
  bad=$(LD_LIBRARY_PATH="$SHARDTRAIN_LD_LIBRARY_PATH" ldd "$e" 2>&1 | grep -vE "=> ($b/lib/|${SHARDTRAIN_CUDA_LIBS//:/\/|}/)" |
        grep -E "not found|=> /" | grep -vE "/lib(c|m|dl|pthread|rt|resolv|util)\.so|ld-linux" || true)
  if [[ -n $bad ]]; then echo "FAIL: $(basename "$e") loads from outside the bundle: $bad"; fail=1; fi
done
cd "$tmp"  # another working directory than the bundle's
for run in "1 cpu F32" "2 cpu F32" "1 cuda-emu BF16"; do
  set -- $run
  if "$b/bin/mpirun" -np "$1" --oversubscribe "$b/bin/shardtrain" train --config "$tmp/c.pbtxt" \
       --device "$2" --set "precision.compute=$3" --metrics "$tmp/m_$1_$2.jsonl" >"$tmp/run.log" 2>&1 &&
     [[ $(wc -l <"$tmp/m_$1_$2.jsonl") -eq 3 ]]; then
    echo "ok: np $1 --device $2 $3: $(tail -1 "$tmp/m_$1_$2.jsonl" | cut -c1-80)"
  else
    echo "FAIL: np $1 --device $2 $3:"; tail -20 "$tmp/run.log"; fail=1
  fi
done
out=$(OUT="$tmp/out" "$b/gpu_check.sh" 2>&1)
code=$?
echo "gpu_check.sh: exit $code: $out"
if [[ $code -ne 77 || $out != *"no GPU on this machine"* ]]; then fail=1; echo "FAIL: gpu_check.sh"; fi
# The check's own plumbing, with a stand-in nvidia-smi that names an H200: every step runs and
# is recorded in summary.json, and under SHARDTRAIN_REQUIRE_GPU=1 no GPU test may skip.
mkdir -p "$tmp/fakebin"
printf '#!/bin/sh\n[ "$1" = -L ] && echo "GPU 0: NVIDIA H200" && exit 0\necho "name, driver_version, clocks.sm, clocks.max.sm, clocks.mem, memory.total"\necho "NVIDIA H200, 580, 345 MHz, 1980 MHz, 3201 MHz, 143771 MiB"\n' >"$tmp/fakebin/nvidia-smi"
chmod +x "$tmp/fakebin/nvidia-smi"
# python3 is the GPU machine's own, with its own libz and libstdc++; here those files are hidden
# (the bundle carries copies), so it gets the bundle's copies in their place.
printf '#!/bin/sh\nLD_LIBRARY_PATH="%s/lib" exec /usr/bin/python3 "$@"\n' "$b" >"$tmp/fakebin/python3"
chmod +x "$tmp/fakebin/python3"
PATH="$tmp/fakebin:/usr/bin:$PATH" OUT="$tmp/out2" "$b/gpu_check.sh" >"$tmp/check2.log" 2>&1
code=$?
summary=$("$tmp/fakebin/python3" - "$tmp/out2/summary.json" <<'PY' 2>&1
import json, sys
d = json.load(open(sys.argv[1]))
steps = {s["name"]: s["status"] for s in d["steps"]}
g = d["figures"].get("gpu_tests", {})
ok = (steps.get("probe") == "passed" and steps.get("gpu_tests", "").startswith("failed")
      and g.get("failed", 0) > 1000 and g.get("skipped") == 0
      and steps.get("train_cuda_vs_emu", "").startswith("failed")
      and d["figures"].get("gpu", {}).get("name") == "NVIDIA H200")
print(("ok" if ok else "bad"), steps, {k: v for k, v in g.items() if k != "failed_tests"})
PY
)
echo "gpu_check.sh with a stand-in nvidia-smi: exit $code; $summary"
if [[ $code -ne 1 || $summary != ok* ]]; then fail=1; echo "FAIL: gpu_check.sh plumbing"; tail -30 "$tmp/check2.log"; fi
exit $fail
EOF
unshare --mount --propagation private bash "$tmp/inside.sh" "$b" "$tmp"
code=$?
[[ $code -eq 0 ]] && echo "the bundle runs without this machine's packages" || echo "FAIL"
exit $code
