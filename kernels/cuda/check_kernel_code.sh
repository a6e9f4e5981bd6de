#!/bin/sh
# check_kernel_code.sh — build checks on what nvcc makes of one kernel source (ctest -L build).
#
# Why: a tensor-core kernel can silently lose its tensor cores (a wrapper compiled to the
# fallback path) or its registers (an accumulator array indexed by a loop that did not unroll
# lives in local memory; too many live fragments spill) and still pass every numeric test. Both
# are visible only in the compiler's output, so this compiles the source the way the build does
# (-O3, C++17, one architecture), keeps the PTX and the `ptxas -v` report in OUT_DIR, and checks:
#   1. the PTX contains each required instruction (e.g. mma.sync.aligned.m16n8k16...bf16);
#   2. every entry function whose name contains KERNEL reports 0 bytes stack frame and 0 bytes
#      spill stores / spill loads, and there are EXPECTED_COUNT of them (all instantiations;
#      "any": at least one).
# The ptxas lines for KERNEL are printed, so the test log doubles as the register/smem report.
#
# Usage: check_kernel_code.sh NVCC SOURCE_DIR SOURCE ARCH OUT_DIR KERNEL EXPECTED_COUNT PTX_NEEDLE...
set -eu
nvcc=$1 src_dir=$2 src=$3 arch=$4 out=$5 kernel=$6 count=$7
shift 7
mkdir -p "$out"
base=$out/$(basename "$src" .cu)_sm$arch
flags="-std=c++17 -O3 -DNDEBUG -I$src_dir -arch=sm_$arch -Werror=all-warnings"

# 1. PTX: the instructions must be there.
"$nvcc" $flags -ptx "$src" -o "$base.ptx"
for needle in "$@"; do
  n=$(grep -c -F -- "$needle" "$base.ptx" || true)
  if [ "$n" -eq 0 ]; then
    echo "FAIL: $base.ptx has no '$needle'"
    exit 1
  fi
  echo "ok: $n x '$needle' in $base.ptx"
done

# 2. ptxas -v: no stack frame, no spills, for every instantiation of the kernel.
"$nvcc" $flags -Xptxas -v -c "$src" -o "$base.o" 2> "$base.ptxas.txt"
awk -v kernel="$kernel" -v want="$count" '
  /Compiling entry function/ { mine = index($0, kernel) > 0; if (mine) { n++; print } next }
  mine && /spill stores/ {
    print
    # "<a> bytes stack frame, <b> bytes spill stores, <c> bytes spill loads"
    if ($1 != 0 || $5 != 0 || $9 != 0) bad = 1
    next
  }
  mine && /Used [0-9]+ registers/ { print }
  END {
    if ((want == "any" && n == 0) || (want != "any" && n != want)) {
      printf "FAIL: %d entry functions named %s, expected %s\n", n, kernel, want; exit 1
    }
    if (bad) { print "FAIL: stack frame or spills above"; exit 1 }
    printf "ok: %d instantiations of %s, no stack frame, no spills\n", n, kernel
  }' "$base.ptxas.txt"
