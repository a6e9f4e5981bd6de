"""Training-step throughput: shardtrain vs PyTorch on the same GPT, same threads, one run.

Model (issue [gpt]): d_model 256, 4 layers, 4 heads, T 256, vocab 8192, micro-batch 8, AdamW
with clipping. shardtrain runs `train` (one process, train.threads = --threads) and reports
tokens/s per step in its metrics; PyTorch runs the reference GPT (tests/parity/
gpt_reference.py) with torch.set_num_threads(--threads), timed the same way (forward,
backward, clip, AdamW step). The median over the steps after --warmup is reported, then the
ratio. --dtype bf16 compares shardtrain's bf16 training with PyTorch's CPU autocast to bfloat16.
--device cuda compares `train --device cuda` (one GPU) with the same PyTorch model on that GPU
(autocast to bfloat16, timed with torch.cuda.synchronize(); needs a CUDA build of torch and
--dtype bf16: shardtrain's attention kernels take 16-bit inputs). Not run here: no GPU.

  /usr/bin/python3 bench/step_bench.py --shardtrain build/bin/shardtrain [--dtype f32|bf16]
                                       [--device cpu|cuda]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "parity"))
import gpt_reference as ref  # noqa: E402

C, L, H, T, V, B = 256, 4, 4, 256, 8192, 8

CONFIG = f"""
model {{ n_layer: {L} n_head: {H} d_model: {C} vocab_size: {V} seq_len: {T} }}
precision {{ compute: {{dtype}} }}
optimizer {{ lr: 3e-4 weight_decay: 0.1 grad_clip: 1.0 }}
data {{ train: "{{shard}}" micro_batch: {B} }}
train {{ steps: {{steps}} seed: 1 log_every: 1000 threads: {{threads}} }}
"""


def bench_shardtrain(exe, tmp, shard, dtype, steps, threads, warmup, device):
    cfg = os.path.join(tmp, "bench.pbtxt")
    with open(cfg, "w") as f:
        f.write(CONFIG.replace("{dtype}", "BF16" if dtype == "bf16" else "F32")
                .replace("{shard}", shard).replace("{steps}", str(steps))
                .replace("{threads}", str(threads)))
    metrics = os.path.join(tmp, "m.jsonl")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    subprocess.run([exe, "train", "--config", cfg, "--metrics", metrics, "--device", device],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    rates = [json.loads(l)["tokens_per_s"] for l in open(metrics)][warmup:]
    return statistics.median(rates)


def bench_torch(tokens, dtype, steps, threads, warmup, device):
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    w = {"wte.weight": torch.randn(V, C, generator=g) * 0.02,
         "wpe.weight": torch.randn(T, C, generator=g) * 0.02,
         "ln_f.weight": torch.ones(C), "ln_f.bias": torch.zeros(C)}
    for i in range(L):
        p = f"h.{i}."
        w.update({p + "ln_1.weight": torch.ones(C), p + "ln_1.bias": torch.zeros(C),
                  p + "attn.c_attn.weight": torch.randn(C, 3 * C, generator=g) * 0.02,
                  p + "attn.c_attn.bias": torch.zeros(3 * C),
                  p + "attn.c_proj.weight": torch.randn(C, C, generator=g) * 0.02,
                  p + "attn.c_proj.bias": torch.zeros(C),
                  p + "ln_2.weight": torch.ones(C), p + "ln_2.bias": torch.zeros(C),
                  p + "mlp.c_fc.weight": torch.randn(C, 4 * C, generator=g) * 0.02,
                  p + "mlp.c_fc.bias": torch.zeros(4 * C),
                  p + "mlp.c_proj.weight": torch.randn(4 * C, C, generator=g) * 0.02,
                  p + "mlp.c_proj.bias": torch.zeros(C)})
    model = ref.Gpt(w, L, H).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rates = []
    for step in range(steps):
        x, y = (t.to(device) for t in ref.windows(tokens, T, step * B, B))
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=(dtype == "bf16")):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        rates.append(B * T / (time.perf_counter() - t0))
    return statistics.median(rates[warmup:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    if a.device == "cuda" and (a.dtype != "bf16" or not torch.cuda.is_available()):
        sys.exit("--device cuda needs --dtype bf16 and a GPU visible to torch")
    tokens = np.random.default_rng(0).integers(0, V, size=B * T * (a.steps + 1) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        shard = os.path.join(tmp, "bench.bin")
        ref.write_shard(shard, tokens, V)
        ours = bench_shardtrain(a.shardtrain, tmp, shard, a.dtype, a.steps, a.threads, a.warmup,
                                a.device)
    theirs = bench_torch(tokens, a.dtype, a.steps, a.threads, a.warmup, a.device)
    where = "1 GPU" if a.device == "cuda" else f"{a.threads} threads"
    print(f"GPT d={C} L={L} H={H} T={T} V={V} B={B}, {a.dtype}, {where}, "
          f"median of {a.steps - a.warmup} steps")
    print(f"  shardtrain: {ours:10.0f} tokens/s")
    print(f"  pytorch {torch.__version__}: {theirs:10.0f} tokens/s")
    print(f"  ratio shardtrain / pytorch: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
