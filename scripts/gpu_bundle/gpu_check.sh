#!/usr/bin/env bash
# gpu_check.sh — the whole GPU check of gpu-bundle in one command, for one GPU, in at most 8
# minutes: every step has its own time box (and none may run past the overall deadline), so a
# hang costs that step only. Results go to $OUT when it is set (else ./gpu-check-out):
# summary.json (every step: status, seconds, figures) and gpu_check.log (everything), plus
# each step's own output as step_N.log — 8 files at most.
#
#   1. nvidia-smi (name, driver, clocks, memory) and shardtrain's device probe       20 s
#   2. the GPU tests with SHARDTRAIN_REQUIRE_GPU=1 (a skip for want of a GPU fails):
#      gpu_runtime_test, gemm_lt_test, gpu_ops_test (the whole kernel table)         100 s
#   3. compute-sanitizer: memcheck on every attention case (forward, backward), racecheck
#      on four (T = 100, not a multiple of the tile; head_dim 128), forward and backward 110 s
#   4. train --device cuda vs --device cuda-emu, np 1, bf16 and fp16
#      (tests/parallel/train_runs.py --check cuda_gpu)                                90 s
#   5. GPT-2 124M, bf16, 20 steps: shardtrain vs PyTorch (SDPA) on this GPU
#      (bench/step_bench.py --device cuda --model gpt2_124m)                          90 s
#   6. attention alone at GPT-2 shapes, D 64 and 128: ours vs PyTorch SDPA flash      40 s
#   7. with the time left: ncu --clock-control none, one short training run's kernels
# NCCL with 2 ranks cannot run on one GPU (NCCL refuses two ranks on one device), so
# nccl_comm_test is not run here; `ctest -L gpu` covers it on a multi-GPU node.
# Exit: 0 all steps passed, 1 some failed, 77 no GPU on this machine.
set -uo pipefail
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
source "$here/bin/env.sh"
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
log="$out/gpu_check.log"
: >"$log"
records="$(mktemp)"
trap 'rm -f "$records"' EXIT
start=$SECONDS
deadline=$((start + 470))  # 8 minutes less a margin for the summary

say() { echo "gpu_check: $*" | tee -a "$log"; }
# step N NAME BOX CMD...: runs CMD with the smaller of BOX and the time left, records the result.
step() {
  local n=$1 name=$2 box=$3
  shift 3
  local left=$((deadline - SECONDS))
  ((box > left)) && box=$left
  if ((box < 5)); then
    say "step $n $name: skipped, no time left"
    printf '%s\t%s\t%s\t%s\n' "$n" "$name" "not run (no time left)" 0 >>"$records"
    return
  fi
  say "step $n $name (time box ${box} s): $*"
  local t0=$SECONDS rc
  if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child bash
    timeout --kill-after=5 "$box" bash -c "$(declare -f "$1"); $*" >"$out/step_$n.log" 2>&1
  else
    timeout --kill-after=5 "$box" "$@" >"$out/step_$n.log" 2>&1
  fi
  rc=$?
  cat "$out/step_$n.log" >>"$log"
  local status=passed
  ((rc == 124 || rc == 137)) && status="timed out after ${box} s"
  ((rc != 0 && rc != 124 && rc != 137)) && status="failed (exit $rc)"
  ((rc == 77)) && status="skipped (exit 77)"
  say "step $n $name: $status in $((SECONDS - t0)) s"
  printf '%s\t%s\t%s\t%s\n' "$n" "$name" "$status" "$((SECONDS - t0))" >>"$records"
}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  say "no GPU on this machine (nvidia-smi $(command -v nvidia-smi >/dev/null && echo "lists none" || echo "not found")); nothing to check"
  exit 77
fi
say "bundle $(tr '\n' ' ' <"$here/BUNDLE")"
say "CUDA libraries from: ${SHARDTRAIN_CUDA_LIBS:-none found}"

st="$here/bin/shardtrain"
export here st  # the step functions run in child shells
probe() {
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,memory.total \
    --format=csv
  "$here/bin/gpu_runtime_test" --gtest_filter='CudaDeviceProbe.*' --gtest_brief=0
}
step 1 probe 20 probe

gpu_tests() {
  local rc=0 t
  for t in gpu_runtime_test gemm_lt_test gpu_ops_test; do
    SHARDTRAIN_REQUIRE_GPU=1 "$here/bin/$t" --gtest_brief=1 || rc=1
  done
  return $rc
}
step 2 gpu_tests 100 gpu_tests

sanitize() {
  # The wrapper (bin/gpu_ops_test) sets the bundle's library path for the test alone;
  # compute-sanitizer follows it into the test (--target-processes all).
  local exe="$here/bin/gpu_ops_test" rc=0
  # memcheck: every attention case (forward and backward, bf16 and fp16, the whole table).
  compute-sanitizer --tool memcheck --target-processes all --error-exitcode 3 "$exe" \
    --gtest_filter='*attention*' --gtest_brief=1 || rc=1
  # racecheck, forward and backward: T = 100 (not a multiple of the 64-row tile), and
  # head_dim 128 with T = 129.
  local c
  for c in attention_1_100_3_64_bf16 attention_backward_1_100_2_64_bf16 \
           attention_1_65_1_128_bf16 attention_backward_1_129_1_128_bf16; do
    compute-sanitizer --tool racecheck --target-processes all --error-exitcode 3 "$exe" \
      --gtest_filter="*MatchesCpuBackend/$c" --gtest_brief=1 || rc=1
  done
  return $rc
}
if command -v compute-sanitizer >/dev/null 2>&1; then
  step 3 sanitizer 110 sanitize
else
  say "step 3 sanitizer: compute-sanitizer not on PATH"
  printf '%s\t%s\t%s\t%s\n' 3 sanitizer "not run (no compute-sanitizer)" 0 >>"$records"
fi

step 4 train_cuda_vs_emu 90 env SHARDTRAIN_REQUIRE_GPU=1 python3 "$here/tests/parallel/train_runs.py" --shardtrain "$st" \
  --check cuda_gpu --np 1
step 5 gpt2_124m 90 python3 "$here/bench/step_bench.py" --shardtrain "$st" --device cuda \
  --dtype bf16 --model gpt2_124m --steps 20 --warmup 5
step 6 attention 40 python3 "$here/bench/attention_gpu_bench.py" \
  --bench "$here/bin/attention_gpu_bench"

profile() {
  local cfg
  cfg="$(mktemp -d)"
  python3 - "$cfg" <<'EOF'
import os, struct, sys, random
d = sys.argv[1]
n = 200_000
h = b"STTOKENS" + struct.pack("<IIQQ", 1, 2, 50257, n)
with open(os.path.join(d, "t.bin"), "wb") as f:
    f.write(h + b"\0" * (64 - len(h)))
    f.write(struct.pack(f"<{n}H", *[random.randrange(50257) for _ in range(n)]))
EOF
  ncu --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel --csv \
    "$st" train \
    --config "$here/configs/gpt2_124m.pbtxt" --set "data.train=$cfg/t.bin" \
    --set "data.val=$cfg/t.bin" \
    --set data.micro_batch=4 --set data.grad_accum=1 --set train.steps=2 \
    --set train.eval_every=0 --set checkpoint.dir= --device cuda
}
if command -v ncu >/dev/null 2>&1; then
  step 7 ncu_kernels $((deadline - SECONDS)) profile
fi

say "total $((SECONDS - start)) s"
python3 "$here/bin/gpu_check_summary.py" "$records" "$out" | tee -a "$log"
