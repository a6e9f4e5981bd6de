"""Tensor-parallel traffic and step time, measured in one run.

Bytes each rank sends per step in the tp group (the communicator's own count) against the
Megatron-LM formula (REFERENCE.md): per layer and step 4 all-reduces of b*s*h elements (2 in
forward, 2 in backward), each 2(t-1)/t of the buffer per rank in a ring; shardtrain adds two
more of the same size (the vocab-parallel embedding in forward, the head's input gradient in
backward) and the vocab-parallel cross-entropy's three reductions of b*s values (fp64,
gathered: 8(t-1) bytes per value each). Sequence parallelism swaps each all-reduce for a
reduce-scatter + all-gather of the same volume. Step time: tp=2 on 2 ranks vs tp=1 on 1 rank
(same model and global batch, 1 thread per rank).

  /usr/bin/python3 bench/tp_bench.py --shardtrain build/bin/shardtrain
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

C, L, H, T, V, B = 256, 4, 4, 128, 4096, 8

CONFIG = f"""
model {{ n_layer: {L} n_head: {H} d_model: {C} vocab_size: {V} seq_len: {T} }}
optimizer {{ lr: 3e-4 }}
data {{ train: "{{shard}}" micro_batch: {B} }}
train {{ steps: {{steps}} seed: 1 log_every: 1000 threads: 1 }}
"""


def run(exe, tmp, np, sets, warmup):
    metrics = os.path.join(tmp, "m.jsonl")
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np), exe, "train",
           "--config", os.path.join(tmp, "c.pbtxt"), "--metrics", metrics]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    lines = [json.loads(l) for l in open(metrics)][warmup:]
    return (statistics.median(l["step_ms"] for l in lines),
            statistics.median(l["tp_comm_bytes"] for l in lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    with tempfile.TemporaryDirectory() as tmp:
        shard = os.path.join(tmp, "t.bin")
        ref.write_shard(shard, numpy.random.default_rng(0).integers(0, V, size=200000), V)
        with open(os.path.join(tmp, "c.pbtxt"), "w") as f:
            f.write(CONFIG.replace("{shard}", shard).replace("{steps}", str(a.steps)))
        t1, _ = run(a.shardtrain, tmp, 1, [], a.warmup)
        t = 2
        bsh = B * T * C * 4  # fp32 activations
        ring = 2 * (t - 1) / t
        megatron = 4 * L * ring * bsh
        ours = (4 * L + 2) * ring * bsh + 3 * B * T * 8 * (t - 1) + 8 * (t - 1)
        print(f"GPT d={C} L={L} H={H} T={T} V={V} micro-batch {B}, fp32, 1 thread per rank, "
              f"median of {a.steps - a.warmup} steps")
        print(f"tp=1 (np=1): {t1:8.1f} ms/step")
        for sp in (False, True):
            ms, sent = run(a.shardtrain, tmp, 2, ["parallel.tp=2",
                                                  f"parallel.sequence_parallel={str(sp).lower()}"],
                           a.warmup)
            print(f"tp=2 (np=2){' sequence-parallel' if sp else ''}: {ms:8.1f} ms/step "
                  f"({ms / t1:.2f}x tp=1); tp bytes/rank/step {sent / 1e6:.3f} MB; Megatron "
                  f"formula (4 all-reduces/layer) {megatron / 1e6:.3f} MB; with shardtrain's "
                  f"embedding, head and cross-entropy reductions {ours / 1e6:.3f} MB "
                  f"({sent / ours:.3f}x)")


if __name__ == "__main__":
    main()
