"""Activation recomputation: activation bytes and step time of parallel.recompute NONE,
SELECTIVE and FULL, for GPT-2 and Llama, side by side in one run.

Model: 8 layers, width 256, 4 heads (Llama: 2 K/V heads, SwiGLU width 768), T 256, vocab
4096, micro-batch 8, fp32 (--dtype bf16 for 16-bit): activations are ~3x the model states
here, as at real sizes (memplan: GPT-2 1.5B on 8 ranks, micro-batch 4, holds 9.8 GiB of
activations against 3.3 GiB of model states). One process (`train`, train.threads =
--threads). Each (arch, mode) runs --repeats times, the modes interleaved so that drift of a
shared machine hits all of them; a run's step time is its median step_ms after --warmup
steps, a mode's the median of its runs. Activation bytes are the run's live `activations`
(allocated once, for the whole run), which memory.recompute.* checks equal memplan's
prediction to the byte.

Expected (docs/ARCHITECTURE.md): SELECTIVE recomputes two norms and the MLP activation per
block, a few percent of a step; FULL reruns each block's forward except the MLP's output
projection, about a third of a step more (forward ~ 1/3 of forward + backward).

  /usr/bin/python3 bench/recompute_bench.py --shardtrain build/bin/shardtrain [--dtype bf16]
"""
import argparse
import json
import os
import random
import statistics
import struct
import subprocess
import tempfile

C, L, H, T, V, B = 256, 8, 4, 256, 4096, 8
ARCHS = {"gpt2": "", "llama": "arch: LLAMA n_kv_head: 2 ffn_hidden: 768"}
MODES = ("NONE", "SELECTIVE", "FULL")

CONFIG = """
model {{ n_layer: {L} n_head: {H} d_model: {C} vocab_size: {V} seq_len: {T} {arch} }}
parallel {{ recompute: {mode} }}
precision {{ compute: {dtype} }}
optimizer {{ lr: 3e-4 weight_decay: 0.1 grad_clip: 1.0 }}
data {{ train: "{shard}" micro_batch: {B} }}
train {{ steps: {steps} seed: 1 log_every: 1000 threads: {threads} }}
"""


def write_shard(path, n):
    rng = random.Random(1)
    header = b"STTOKENS" + struct.pack("<IIQQ", 1, 2, V, n)
    with open(path, "wb") as f:
        f.write(header + b"\0" * (64 - len(header)))
        f.write(struct.pack(f"<{n}H", *(rng.randrange(V) for _ in range(n))))


def run(exe, tmp, arch, mode, a, shard):
    cfg = os.path.join(tmp, "c.pbtxt")
    with open(cfg, "w") as f:
        f.write(CONFIG.format(L=L, H=H, C=C, V=V, T=T, B=B, arch=ARCHS[arch], mode=mode,
                              dtype=a.dtype.upper(), shard=shard, steps=a.steps,
                              threads=a.threads))
    metrics = os.path.join(tmp, "m.jsonl")
    p = subprocess.run([exe, "train", "--config", cfg, "--metrics", metrics], check=True,
                       capture_output=True, text=True)
    cpu = next((ln.split("cpu: ", 1)[1] for ln in (p.stdout + p.stderr).splitlines()
                if ln.startswith("cpu: ")), "?")
    lines = [json.loads(x) for x in open(metrics)]
    step = statistics.median(m["step_ms"] for m in lines[a.warmup:])
    return step, lines[-1]["mem_live_bytes"]["activations"], cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    cpu = "?"
    with tempfile.TemporaryDirectory() as tmp:
        shard = os.path.join(tmp, "train.bin")
        write_shard(shard, B * T * (a.steps + 2) + 1)
        results = {}
        for arch in ARCHS:
            times = {m: [] for m in MODES}
            acts = {}
            for _ in range(a.repeats):
                for mode in MODES:
                    step, acts[mode], cpu = run(a.shardtrain, tmp, arch, mode, a, shard)
                    times[mode].append(step)
            results[arch] = {m: (statistics.median(times[m]), acts[m], times[m]) for m in MODES}
    print(f"L={L} C={C} H={H} T={T} V={V} B={B}, {a.dtype}, 1 process, {a.threads} threads, "
          f"median step of {a.steps - a.warmup} steps after {a.warmup}, median of {a.repeats} "
          f"interleaved runs")
    print(f"CPU: {cpu}")
    for arch, r in results.items():
        base_ms, base_acts, _ = r["NONE"]
        print(f"{arch}:")
        print(f"  {'mode':10s} {'activations':>14s} {'vs NONE':>8s} {'step ms':>9s} {'vs NONE':>8s}"
              f"  runs (ms)")
        for mode, (ms, acts, runs) in r.items():
            print(f"  {mode:10s} {acts / 2**20:11.1f} MiB {acts / base_acts:7.2f}x {ms:9.1f} "
                  f"{ms / base_ms:7.2f}x  {', '.join(f'{t:.0f}' for t in runs)}")
    print("RESULT " + json.dumps({arch: {m: {"step_ms": v[0], "activation_bytes": v[1]}
                                         for m, v in r.items()} for arch, r in results.items()}))


if __name__ == "__main__":
    main()
