"""Data-parallel and ZeRO step time and traffic, measured in one run.

For np in --ranks (default 2 and 4, oversubscribed on this machine's cores) and ZeRO stages
0-3: median step time over the steps after warm-up, and bytes sent per rank per step (the
communicator's own count) against theory (REFERENCE.md): ring all-reduce 2(N-1)/N x gradient
bytes for stage 0; reduce-scatter of gradients + all-gather of parameters for stages 1-2 (the
same volume in fp32); stage 3 gathers parameters in forward and again in backward and
reduce-scatters gradients: 3(N-1)/N x (the backward's head reuses the forward head's gather,
and the forward gathers the embeddings twice, for the lookup and for the head). Also stage 0 with the gradient reductions
overlapped with the backward vs all issued after it (parallel.overlap).

  /usr/bin/python3 bench/dp_bench.py --shardtrain build/bin/shardtrain
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "parity"))
import gpt_reference as ref  # noqa: E402

C, L, H, T, V = 256, 4, 4, 128, 4096

CONFIG = f"""
model {{ n_layer: {L} n_head: {H} d_model: {C} vocab_size: {V} seq_len: {T} }}
optimizer {{ lr: 3e-4 }}
data {{ train: "{{shard}}" micro_batch: 4 }}
train {{ steps: {{steps}} seed: 1 log_every: 1000 threads: 1 }}
"""


def params():
    per_block = 12 * C * C + 13 * C
    return V * C + T * C + L * per_block + 2 * C


def run(exe, tmp, np, sets, steps, warmup):
    metrics = os.path.join(tmp, "m.jsonl")
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np), exe, "train",
           "--config", os.path.join(tmp, "c.pbtxt"), "--metrics", metrics]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    lines = [json.loads(l) for l in open(metrics)][warmup:]
    return statistics.median(l["step_ms"] for l in lines), statistics.median(
        l["comm_bytes"] for l in lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    psi = params()
    grad_bytes = 4 * psi
    with tempfile.TemporaryDirectory() as tmp:
        shard = os.path.join(tmp, "t.bin")
        ref.write_shard(shard, numpy.random.default_rng(0).integers(0, V, size=400000), V)
        with open(os.path.join(tmp, "c.pbtxt"), "w") as f:
            f.write(CONFIG.replace("{shard}", shard).replace("{steps}", str(a.steps)))
        print(f"GPT d={C} L={L} T={T} V={V}: {psi} parameters, fp32; micro-batch 4 per rank; "
              f"1 thread per rank; median of {a.steps - a.warmup} steps")
        for np in [int(x) for x in a.ranks.split(",")]:
            ring = 2 * (np - 1) / np * grad_bytes
            base_ms = None
            for stage in range(4):
                ms, sent = run(a.shardtrain, tmp, np, [f"parallel.zero_stage={stage}"], a.steps,
                               a.warmup)
                base_ms = base_ms or ms
                theory = ring if stage < 3 else 1.5 * ring
                print(f"np={np} stage {stage}: {ms:8.1f} ms/step ({ms / base_ms:.2f}x stage 0); "
                      f"sent {sent / 1e6:7.3f} MB/rank/step, theory {theory / 1e6:7.3f} MB "
                      f"({sent / theory:.3f}x)")
            ms_late, _ = run(a.shardtrain, tmp, np, ["parallel.overlap=false"], a.steps, a.warmup)
            print(f"np={np} stage 0 reductions after backward: {ms_late:8.1f} ms/step; "
                  f"overlapped: {base_ms:8.1f} ms/step ({ms_late / base_ms:.2f}x)")


if __name__ == "__main__":
    main()
