"""Multi-rank training checks, each a ctest case: runs `shardtrain train` under mpirun on a
small GPT and compares what the runs report (metrics JSON lines, exported weights, logs).

  dp_equivalence   np=2 / np=4 with micro-batch B equal np=1 with the whole batch, and np=1 with
                   accumulation (also at ZeRO 2 and 3, with and without overlap), in fp32: loss
                   and grad_norm to 1e-6 relative per step, final exported weights to 2e-5 of
                   each tensor's largest (same tokens per step by the data contract; only the
                   summation order of the reduction differs).
  zero_bitwise     ZeRO stages 0-3 at a fixed np (and tp=2 at np=4): bitwise-identical losses
                   and exported weights.
  zero_memory      model-state bytes per rank = the ZeRO paper's formula for the dtypes, up to
                   padding (each unit padded to a multiple of dp x 16 elements).
  mixed_precision  bf16 and fp16 track fp32 on the corpus (a slice of the KJV) over 50 steps.
  overflow         an injected inf on one rank: every rank skips that step, the scale halves;
                   and real fp16 overflows (loss scale 2^40, 2^30): skipped on every rank,
                   weights untouched, the scale backs off until training proceeds.
  fault            a rank failing at step k, or killed, ends the job within 10 s, non-zero.
  cuda_emu         a 2-layer GPT trains 5 steps on the GPU code path with the emulated CUDA
                   kernels (np 1, ZeRO 2/3 at np 2, tp 2 + sequence parallel), matching the
                   CPU per step (loss 5e-4, grad_norm 2e-3) and in every tensor's change of
                   weights (3e-2); ZeRO 0 and 3 bitwise equal there; fp32 and `cuda` without
                   a GPU refused.
  tp_equivalence   tp=2 (np=2) and tp=2 x dp=2 (np=4) with ZeRO-3 (and ZeRO-1) equal np=1: loss
                   and grad_norm to 1e-5 relative per step, exported (unsplit) weights to 1e-5;
                   the same with sequence parallelism on (ZeRO 0, 2, 3).
  --arch llama     runs a check on the same small model as Llama (RMSNorm, RoPE, SwiGLU, 4 query
                   heads sharing 2 K/V heads, untied head): tp_equivalence, zero_bitwise and
                   cuda_emu run both ways.
  kv_replicated    (--arch llama) tp 4 > n_kv_head 2, each K/V head replicated on 2 tp ranks
                   (ZeRO 3; ZeRO 1 with sequence parallelism) equals np=1 as tp_equivalence.
  recompute        parallel.recompute NONE / SELECTIVE / FULL bitwise equal (np 2 ZeRO 3 with
                   accumulation, tp 2 + sequence parallel, bf16, cuda-emu bf16 and f16, FULL on 2
                   of 3 blocks), each holding fewer activation bytes than the mode before.
  metrics          the throughput fields on cpu (np 2: dp 2, tp 2) and cuda-emu (np 1, bf16):
                   tflops = model FLOPs (6 N + 12 L C T per token, computed here from the
                   config) x tokens per step / step time / world size, to 1e-6; eta_s = steps
                   left x the mean step_ms of the last 10 steps after the first, to 1e-9,
                   falling to 0; no mfu field off a known GPU; the progress line shows the eta.
"""
import argparse
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]

CONFIG = """
model {{ n_layer: 2 n_head: 4 d_model: 64 vocab_size: {vocab} seq_len: 32 {arch} }}
parallel {{ zero_stage: 0 bucket_mb: 0.01 }}
precision {{ compute: F32 }}
optimizer {{ lr: 3e-3 min_lr: 3e-4 warmup_steps: 2 schedule: COSINE weight_decay: 0.1 grad_clip: 1.0 }}
data {{ train: "{train}" micro_batch: 4 grad_accum: 1 }}
train {{ steps: 10 seed: 11 log_every: 5 threads: 1 }}
"""


def write_shard(path, tokens, vocab):
    header = b"STTOKENS" + struct.pack("<IIQQ", 1, 2, vocab, len(tokens))
    with open(path, "wb") as f:
        f.write(header + b"\0" * (64 - len(header)))
        f.write(struct.pack(f"<{len(tokens)}H", *tokens))


def write_synthetic_shard(path):
    """A learnable stream: a repeating pattern with 10% noise, vocab 96 (pads to 128). Returns
    the vocabulary size."""
    rng = random.Random(5)
    vocab = 96
    tokens = [(i * 7 + (i // 5)) % vocab if rng.random() > 0.1 else rng.randrange(vocab)
              for i in range(20000)]
    write_shard(path, tokens, vocab)
    return vocab


class Env:
    def __init__(self, shardtrain, tmp, corpus=None, arch=""):
        self.shardtrain, self.tmp, self.n = shardtrain, tmp, 0
        if corpus:
            train = corpus
            vocab = struct.unpack("<Q", open(corpus, "rb").read(24)[16:24])[0]
        else:
            train = os.path.join(tmp, "train.bin")
            vocab = write_synthetic_shard(train)
        self.config = os.path.join(tmp, "base.pbtxt")
        with open(self.config, "w") as f:
            f.write(CONFIG.format(vocab=vocab, train=train, arch=arch))

    def run(self, np, sets, extra=(), check=True, timeout=600, launch=None):
        """launch(np, command): the command under another launcher (tests/multihost)."""
        self.n += 1
        metrics = os.path.join(self.tmp, f"m{self.n}.jsonl")
        weights = os.path.join(self.tmp, f"w{self.n}.safetensors")
        cmd = [self.shardtrain, "train", "--config", self.config, "--metrics", metrics,
               "--export-final", weights]
        for s in sets:
            cmd += ["--set", s]
        cmd += list(extra)
        cmd = launch(np, cmd) if launch else MPIRUN + ["-np", str(np)] + cmd
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            sys.exit(f"run failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
        lines = [json.loads(x) for x in open(metrics)] if os.path.exists(metrics) else []
        data = open(weights, "rb").read() if os.path.exists(weights) else b""
        if check and (not lines or not data):
            # A run that "succeeded" without its metrics or weights would make every comparison
            # below vacuous (b"" == b"").
            sys.exit(f"run wrote no {'metrics' if not lines else 'weights'}: {' '.join(cmd)}")
        return lines, data, p


def initial_weights(env, sets, name):
    """The exported initial weights (nothing trained) of the config with `sets`, as bytes."""
    path = os.path.join(env.tmp, name)
    cmd = [env.shardtrain, "export", "--config", env.config, "--out", path]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, capture_output=True)
    return open(path, "rb").read()


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def differences(lines, w, ref_lines, ref_w):
    """Worst per-step relative differences of loss and grad_norm, and the worst weight
    difference after the run (max |got - ref| over a tensor / max |ref| of that tensor, worst
    tensor), between a run and its reference. Names must match."""
    got, ref = read_weights(w), read_weights(ref_w)
    if set(got) != set(ref) or len(lines) != len(ref_lines):
        return None
    loss = max(rel(g["loss"], r["loss"]) for g, r in zip(lines, ref_lines))
    norm = max(rel(g["grad_norm"], r["grad_norm"]) for g, r in zip(lines, ref_lines))
    errs = {k: float(abs(got[k] - ref[k]).max() / max(abs(ref[k]).max(), 1e-30)) for k in ref}
    worst = max(errs, key=errs.get)
    return loss, norm, errs[worst], worst


# AdamW eps 1e-5 and lr 1e-3 where final weights are compared: see tp_equivalence.
EXACT_SETS = ["optimizer.eps=1e-5", "optimizer.lr=1e-3", "optimizer.min_lr=1e-4"]


def equivalence(env, ref_sets, cases, bounds):
    """Each (np, sets) case against one np=1 run with ref_sets, all with EXACT_SETS: 10 steps,
    the same tensor names, and the worst per-step loss and grad_norm and final-weight
    differences (see differences) within bounds = (loss, grad_norm, weights)."""
    failures = []
    ref_lines, ref_w, _ = env.run(1, EXACT_SETS + ref_sets)
    for np_, sets in cases:
        lines, w, _ = env.run(np_, EXACT_SETS + sets)
        d = differences(lines, w, ref_lines, ref_w)
        if d is None or len(lines) != 10:
            failures.append(f"np={np_} {sets}: steps or tensor names differ from np=1")
            continue
        loss, norm, weight, where = d
        print(f"np={np_} {' '.join(sets)}: worst per-step rel diff vs np=1 {' '.join(ref_sets)}: "
              f"loss {loss:.2e}, grad_norm {norm:.2e}; final weights {weight:.2e} ({where})")
        if loss > bounds[0] or norm > bounds[1] or weight > bounds[2]:
            failures.append(f"np={np_} {sets} differs from np=1: loss {loss:.2e}, grad_norm "
                            f"{norm:.2e}, weights {weight:.2e} (bounds {bounds})")
    return failures


def dp_equivalence(env):
    # Bounds: only the summation order of the reduction differs. Measured worst: loss 7e-9,
    # grad_norm 4e-8, final weights 5e-6 (a c_proj bias, whose gradient is a sum of cancelling
    # terms; Adam turns its rounding into an update difference). A missing or extra 1/dp
    # doubles or halves grad_norm; AdamW divides that scale out of the weights, so the norm is
    # the quantity that catches it.
    return equivalence(env, ["data.micro_batch=8"], [
        (2, ["data.micro_batch=4"]), (4, ["data.micro_batch=2"]),
        (1, ["data.micro_batch=4", "data.grad_accum=2"]),
        (2, ["data.micro_batch=2", "data.grad_accum=2"]),
        (2, ["data.micro_batch=2", "data.grad_accum=2", "parallel.zero_stage=2"]),
        (2, ["data.micro_batch=2", "data.grad_accum=2", "parallel.zero_stage=3",
             "parallel.overlap=false"]),
        (4, ["data.micro_batch=1", "data.grad_accum=2", "parallel.zero_stage=3"])],
        (1e-6, 1e-6, 2e-5))


def zero_bitwise(env, np):
    failures = []
    for tp in ([1, 2] if np == 4 else [1]):
        extra = [f"parallel.tp={tp}"]
        ref_lines, ref_w, _ = env.run(np, extra + ["parallel.zero_stage=0"])
        for stage in (1, 2, 3):
            lines, w, _ = env.run(np, extra + [f"parallel.zero_stage={stage}"])
            same_loss = [a["loss"] for a in lines] == [b["loss"] for b in ref_lines]
            same_norm = [a["grad_norm"] for a in lines] == [b["grad_norm"] for b in ref_lines]
            print(f"np={np} tp={tp} stage {stage}: losses bitwise equal to stage 0: {same_loss}; "
                  f"grad norms: {same_norm}; exported weights: {w == ref_w}")
            if not (same_loss and same_norm and w == ref_w and len(lines) == 10):
                failures.append(f"stage {stage} differs from stage 0 at np={np} tp={tp}")
    return failures


def zero_memory(env, np):
    failures = []
    for compute, pbytes in (("BF16", 2), ("F32", 4)):
        for stage in (0, 1, 2, 3):
            lines, _, _ = env.run(np, [f"parallel.zero_stage={stage}", f"precision.compute={compute}",
                                        "train.steps=2"])
            live = lines[-1]["mem_live_bytes"]
            psi = PARAMS
            n = np
            # Model states after a step (REFERENCE.md): params in the compute dtype, fp32 grads,
            # fp32 master (none for fp32 compute: the params are the master), fp32 m and v.
            master = 0 if compute == "F32" else 4
            want = {
                "params": pbytes * psi / (n if stage == 3 else 1),
                "grads": 4 * psi / (n if stage >= 2 else 1),
                "master_params": master * psi / (n if stage >= 1 else 1),
                "optimizer_state": 8 * psi / (n if stage >= 1 else 1),
            }
            # Padding: each of the L+2 units rounds up to a multiple of n*16 elements.
            slack = UNITS * n * 16 * 8
            row = []
            for cat, w in want.items():
                got = live[cat]
                row.append(f"{cat} {got} vs {w:.0f}")
                if not (w <= got <= w + slack):
                    failures.append(f"{compute} stage {stage} {cat}: measured {got}, formula {w:.0f}")
            print(f"np={np} {compute} stage {stage}: " + "; ".join(row))
    return failures


def bible_shard(tmp, shardtrain, vocab=512):
    """The first 400 kB of the bundled corpus (Debian's bible-kjv), tokenized."""
    text = subprocess.run(["bible", "Gen1:1-Rev22:21"], capture_output=True, check=True).stdout
    corpus = os.path.join(tmp, "kjv.txt")
    with open(corpus, "wb") as f:
        f.write(text[:400_000])
    out = os.path.join(tmp, "kjv")
    subprocess.run([shardtrain, "tokenize", "--input", corpus, "--vocab-size", str(vocab),
                    "--out", out, "--val-fraction", "0"], check=True, capture_output=True)
    return os.path.join(out, "train_000.bin")


def mixed_precision(env):
    failures = []
    sets = ["train.steps=50", "optimizer.lr=1e-3", "optimizer.warmup_steps=5",
            f"data.train={bible_shard(env.tmp, env.shardtrain)}", "model.vocab_size=512"]
    ref, _, _ = env.run(2, sets)
    for compute in ("BF16", "F16"):
        got, _, _ = env.run(2, sets + [f"precision.compute={compute}"])
        # Tolerance: bf16 keeps 8 mantissa bits, so each activation carries up to 2^-9 relative
        # rounding; averaged over a loss of 2 x 4 x 32 tokens and with fp32 master weights the
        # trajectories stay close (measured worst step: 0.01% on the KJV slice, 0.12% on a
        # synthetic stream). 0.5% per step and 0.25% on the mean of the last 10 still leave a
        # margin, while a broken cast or loss scaler moves the loss by tens of percent.
        worst = max(rel(g["loss"], r["loss"]) for g, r in zip(got, ref))
        tail = rel(sum(g["loss"] for g in got[-10:]), sum(r["loss"] for r in ref[-10:]))
        skipped = sum(1 for g in got if g["skipped"])
        print(f"{compute}: worst per-step rel diff vs fp32 {worst:.3%}, last-10 mean {tail:.3%}, "
              f"loss {got[0]['loss']:.3f} -> {got[-1]['loss']:.3f} (fp32 {ref[-1]['loss']:.3f}), "
              f"skipped steps {skipped}")
        if worst > 0.005 or tail > 0.0025 or skipped:
            failures.append(f"{compute} does not track fp32")
    if ref[-1]["loss"] > ref[0]["loss"] - 0.5:
        failures.append("fp32 reference did not learn; the comparison would be vacuous")
    return failures


def overflow(env):
    lines, _, p = env.run(2, ["precision.compute=F16", "parallel.zero_stage=2"],
                          ["--inject-overflow", "3", "--fault-rank", "1", "--log-all-ranks"])
    failures = []
    s = {l["step"]: l for l in lines}
    print("loss_scale by step:", [l["loss_scale"] for l in lines], "skipped:",
          [l["step"] for l in lines if l["skipped"]])
    if not s[3]["skipped"] or any(s[k]["skipped"] for k in s if k != 3):
        failures.append("only step 3 must be skipped")
    if not (s[3]["loss_scale"] == 65536 and s[4]["loss_scale"] == 32768):
        failures.append("the scale must halve after the overflow")
    warned = p.stderr.count("step 3: non-finite gradients, step skipped on every rank")
    if warned != 2:
        failures.append(f"{warned} of 2 ranks reported skipping step 3")
    return failures + real_overflow(env)


def real_overflow(env):
    """Overflows that really happen in the fp16 backward: a loss scale of 2^40 makes the
    logits' gradient (scale / 256 tokens per step, times p - onehot) exceed fp16's 65504, so
    inf reaches the weight gradients through the backward itself, not by injection."""
    failures = []
    f16 = ["precision.compute=F16", "parallel.zero_stage=2"]
    # 1. Every step overflows: each is skipped on every rank, the scale halves per step
    #    (hysteresis 1), and the weights stay bitwise the initial ones.
    init = initial_weights(env, [], "overflow_init.safetensors")
    lines, w, p = env.run(2, f16 + ["precision.loss_scale.initial=1099511627776", "train.steps=3",
                                    "train.log_every=1"], ["--log-all-ranks"])
    got = [(l["loss_scale"], l["skipped"]) for l in lines]
    want = [(2.0 ** 40, True), (2.0 ** 39, True), (2.0 ** 38, True)]
    warned = p.stderr.count("non-finite gradients, step skipped on every rank")
    same = w == init
    print(f"scale 2^40: (loss_scale, skipped) by step {got}; warnings {warned} (of 6); weights "
          f"bitwise the initial ones: {same}")
    if got != want or warned != 6 or not same:
        failures.append("at scale 2^40 every step must overflow, be skipped on both ranks, halve "
                        "the scale and leave the weights untouched")
    # 2. From 2^30 the scaler backs off to a scale that fits and training proceeds.
    lines, _, _ = env.run(2, f16 + ["precision.loss_scale.initial=1073741824", "train.steps=30",
                                    "train.log_every=1"])
    skipped = [l["step"] for l in lines if l["skipped"]]
    halved = all(b["loss_scale"] == a["loss_scale"] / 2 for a, b in zip(lines, lines[1:])
                 if a["skipped"])
    clean = [l for l in lines if not l["skipped"]]
    print(f"scale 2^30: skipped steps {skipped}; trained at {clean[0]['loss_scale'] if clean else None}"
          f" from step {clean[0]['step'] if clean else None}; loss {lines[0]['loss']:.3f} -> "
          f"{lines[-1]['loss']:.3f}")
    if not lines[0]["skipped"] or not halved or len(clean) < 10 or \
            lines[-1]["loss"] > lines[0]["loss"] - 0.3:
        failures.append("from 2^30 the first step must overflow, each overflow halve the scale, "
                        "and training then proceed (>= 10 clean steps, loss down by 0.3)")
    return failures


def fault(env):
    failures = []
    t = time.time()
    _, _, p = env.run(2, ["train.steps=1000"], ["--inject-fault", "3", "--fault-rank", "1"],
                      check=False, timeout=60)
    dt = time.time() - t
    print(f"injected fault: exit {p.returncode} after {dt:.1f} s; stderr: "
          f"{[l for l in p.stderr.splitlines() if 'injected' in l]}")
    if p.returncode == 0 or dt > 10 or "injected fault at step 3" not in p.stderr:
        failures.append("an injected fault must end the job within 10 s with an error")
    # Kill one rank from outside.
    cmd = MPIRUN + ["-np", "2", env.shardtrain, "train", "--config", env.config, "--set",
                    "train.steps=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    for _ in range(200):
        time.sleep(0.1)
        out = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "shardtrain"],
                             capture_output=True, text=True).stdout.split()
        if len(out) == 2:
            victim = int(sorted(out)[-1])
            break
    if victim is None:
        proc.kill()
        return failures + ["could not find the ranks to kill"]
    time.sleep(1.0)
    t = time.time()
    os.kill(victim, signal.SIGKILL)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return failures + ["mpirun still running 20 s after a rank was killed"]
    dt = time.time() - t
    print(f"killed rank: mpirun exit {proc.returncode} after {dt:.1f} s")
    if proc.returncode == 0 or dt > 10:
        failures.append("a killed rank must end the job within 10 s, non-zero")
    return failures


def read_weights(data):
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + e], dtype=np.float32)
    return out


def tp_equivalence(env):
    # AdamW eps 1e-5 (EXACT_SETS): see tests/parity/gpt_parity.py -- with 1e-8, rounding noise
    # in gradients that are exactly zero in exact arithmetic (the key bias) becomes O(1%) of an
    # update, and any two summation orders (tp splits the c_proj sums) disagree there. lr 1e-3:
    # Adam turns a gradient's relative rounding difference into an update difference of up to
    # lr (for elements whose gradient is a sum of cancelling terms), so weight differences
    # scale with lr; at 3e-3 the worst element sat at 9.7e-6 of its tensor's largest weight,
    # too close to the bound to tell a regression from the noise. grad_norm: tp-replicated
    # parameters (LayerNorms, wpe, c_proj biases) must count once; counted on every tp rank
    # they would add their share again (a few % of the norm).
    return equivalence(env, ["data.micro_batch=4"], [
        (2, ["parallel.tp=2", "parallel.zero_stage=3", "data.micro_batch=4"]),
        (4, ["parallel.tp=2", "parallel.zero_stage=3", "data.micro_batch=2"]),
        (4, ["parallel.tp=2", "parallel.zero_stage=1", "data.micro_batch=2"]),
        (2, ["parallel.tp=2", "parallel.zero_stage=3", "data.micro_batch=4",
             "parallel.sequence_parallel=true"]),
        (4, ["parallel.tp=2", "parallel.zero_stage=0", "data.micro_batch=2",
             "parallel.sequence_parallel=true"]),
        (4, ["parallel.tp=2", "parallel.zero_stage=2", "data.micro_batch=2",
             "parallel.sequence_parallel=true"])],
        (1e-5, 1e-5, 1e-5))


def recompute(env):
    """parallel.recompute NONE / SELECTIVE / FULL train bitwise alike: the same losses, grad
    norms and exported weights, every recomputation running the forward's kernels on the
    forward's inputs (models/gpt.h, Recompute). Layouts: np 2 ZeRO 3 with 2 micro-steps; tp 2
    with sequence parallelism (the norms' all-gathers and the row-parallel reduce-scatters run
    again inside the backward); bf16 at ZeRO 2; the GPU code path (cuda-emu, bf16 and f16); and
    FULL on the first 2 of 3 blocks (recompute_layers). A mode that recomputed nothing would
    pass the equality, so each must also hold fewer activation bytes than the one before it
    (the exact bytes are memory.recompute's)."""
    failures = []
    emu = ["model.d_model=128", "model.n_head=2", "data.micro_batch=2", "train.steps=4",
           "train.device=cuda-emu"]
    if ARCH == "llama":  # head_dim 64 with grouped-query attention on the GPU path
        emu[0:2] = ["model.d_model=256", "model.n_head=4"]
    modes = [["parallel.recompute=NONE"], ["parallel.recompute=SELECTIVE"],
             ["parallel.recompute=FULL"]]
    layouts = [
        (2, ["parallel.zero_stage=3", "data.grad_accum=2", "data.micro_batch=2"], modes),
        (2, ["parallel.tp=2", "parallel.sequence_parallel=true", "parallel.zero_stage=1"], modes),
        (2, ["precision.compute=BF16", "parallel.zero_stage=2"], modes),
        (1, ["precision.compute=BF16"] + emu, modes),
        (2, ["precision.compute=F16", "parallel.zero_stage=3"] + emu, modes),
        (2, ["parallel.zero_stage=3", "model.n_layer=3"],
         [modes[0], ["parallel.recompute=FULL", "parallel.recompute_layers=2"]]),
    ]
    for np_, sets, cases in layouts:
        runs = [(case, env.run(np_, sets + case)) for case in cases]
        (ref_case, (ref_lines, ref_w, _)) = runs[0]
        prev = None
        for case, (lines, w, _) in runs:
            acts = lines[-1]["mem_live_bytes"]["activations"]
            same = ([a["loss"] for a in lines] == [b["loss"] for b in ref_lines] and
                    [a["grad_norm"] for a in lines] == [b["grad_norm"] for b in ref_lines] and
                    w == ref_w and len(lines) == len(ref_lines) > 0)
            print(f"np={np_} {' '.join(sets)} {' '.join(case)}: activations {acts} bytes; "
                  f"losses, grad norms and weights bitwise equal to {ref_case[0]}: {same}")
            if not same:
                failures.append(f"np={np_} {sets}: {case} differs from {ref_case}")
            if prev is not None and not acts < prev:
                failures.append(f"np={np_} {sets}: {case} holds {acts} activation bytes, not "
                                f"fewer than the mode before it ({prev})")
            prev = acts
    return failures


def kv_replicated(env):
    # Llama with tp 4 > n_kv_head 2: each K/V head on 2 tp ranks (models/gpt_layout.cpp,
    # TpSplit::kRowGroups), its gradient summed over them and counted once in the norm. Against
    # np 1, bounds as tp_equivalence: a gradient left partial moves the K/V weights by whole
    # updates, one counted twice moves grad_norm by percents.
    return equivalence(env, ["data.micro_batch=4"], [
        (4, ["parallel.tp=4", "parallel.zero_stage=3", "data.micro_batch=4"]),
        (4, ["parallel.tp=4", "parallel.zero_stage=1", "data.micro_batch=4",
             "parallel.sequence_parallel=true"])],
        (1e-5, 1e-5, 1e-5))


def cuda_emu(env):
    """The GPU code path without a GPU: train.device cuda-emu runs the model and the ZeRO engine
    through kernels/gpu_backend.inc with the CUDA kernels' own source (kernels/emu), exactly as
    `cuda` does on a GPU but for the memory copies and cuBLASLt. A 2-layer GPT trains 5 steps
    and matches the CPU backend: one rank; two ranks at ZeRO 3 (bf16) and ZeRO 2 (fp16, loss
    scaling); tensor parallel 2 with sequence parallelism (the vocabulary-parallel kernels).
    Width 128 with 2 heads gives head_dim 64, which the tensor-core attention takes (bf16/f16;
    it has no fp32 variant). Compared per step: loss and grad_norm; after the run: every
    tensor's change from the initial weights. Then ZeRO's bitwise promise on that path; the host
    synchronisations per optimizer step (`host_syncs`) at ZeRO 0, 1, 2, 3 and tp 2; and the
    refusals."""
    failures = []
    # AdamW with eps 1 is SGD with momentum: the update lr * m / (sqrt(v) + 1) is lr * m to
    # within sqrt(v) (gradient elements here are < 1e-2, so < 1%), so each tensor's change
    # over the run is a linear image of its own gradients, and a wrong gradient in any small
    # group (a LayerNorm, a bias) moves that tensor's change by O(1). With the default eps
    # Adam normalises each element's update to ~lr, which hides gradient magnitudes and turns
    # the rounding of near-zero gradients into whole-lr differences. lr 0.3 still trains
    # (loss 4.59 -> 3.78 in 5 steps).
    base = ["optimizer.eps=1", "optimizer.lr=0.3", "optimizer.min_lr=0.03", "train.steps=5",
            "model.d_model=128", "model.n_head=2", "data.micro_batch=2"]
    if ARCH == "llama":  # grouped-query on the GPU path: 4 query heads of 64 share 2 K/V heads
        base[4:6] = ["model.d_model=256", "model.n_head=4"]
    emu = ["train.device=cuda-emu"]
    w0 = read_weights(initial_weights(env, base, "cuda_emu_init.safetensors"))
    runs = {}
    for np_, sets in [(1, ["precision.compute=BF16"]),
                      (2, ["precision.compute=BF16", "parallel.zero_stage=3"]),
                      (2, ["precision.compute=F16", "parallel.zero_stage=2"]),
                      (2, ["precision.compute=BF16", "parallel.tp=2", "parallel.zero_stage=1",
                           "parallel.sequence_parallel=true"])]:
        cpu, cpu_w, _ = env.run(np_, base + sets)
        got, w, _ = env.run(np_, base + sets + emu)
        runs[(np_, tuple(sets))] = (got, w)
        if len(got) != 5 or len(cpu) != 5:
            failures.append(f"np={np_} {sets}: {len(got)} and {len(cpu)} steps, expected 5")
            continue
        # Tolerances: both run 16-bit storage with fp32 accumulation but in different orders
        # (tensor-core tiles vs the CPU's loops), and round P to 16 bits before P V in attention
        # where the CPU keeps fp32: per-value differences of a few ulps (2^-8 bf16) that average
        # over a step's 128-256 tokens. Measured worst (bf16): loss 1.9e-4, grad_norm 5.5e-4,
        # a tensor's change 7.9e-3 (relative L2; fp16 9e-4). Bounds: 5e-4, 2e-3, 3e-2, each
        # >= 2.5x the measurement; a broken kernel moves them by tens of percent.
        loss = max(rel(e["loss"], c["loss"]) for e, c in zip(got, cpu))
        norm = max(rel(e["grad_norm"], c["grad_norm"]) for e, c in zip(got, cpu))
        if set(read_weights(w)) != set(w0) or set(read_weights(cpu_w)) != set(w0):
            failures.append(f"np={np_} {sets}: exported tensor names differ")
            continue
        change = weight_changes(w, cpu_w, w0)
        where = max(change, key=change.get)
        print(f"np={np_} {' '.join(sets)}: cuda-emu vs cpu, worst per step: loss {loss:.2e} "
              f"(losses {[round(e['loss'], 5) for e in got]}), grad_norm {norm:.2e}; weight "
              f"change {change[where]:.2e} ({where})")
        if loss > 5e-4 or norm > 2e-3 or change[where] > 3e-2:
            failures.append(f"cuda-emu differs from cpu at np={np_} {sets}: loss {loss:.2e} "
                            f"(bound 5e-4), grad_norm {norm:.2e} (2e-3), change of {where} "
                            f"{change[where]:.2e} (3e-2)")
    # ZeRO 0 and ZeRO 3 on the GPU path: bitwise the same losses, norms and weights.
    s3, w3 = runs[(2, ("precision.compute=BF16", "parallel.zero_stage=3"))]
    s0, w0, _ = env.run(2, base + ["precision.compute=BF16", "parallel.zero_stage=0"] + emu)
    # Host waits for the device per optimizer step: one, the step-end read-back of loss, norm
    # and overflow flag (ZeroEngine::step_stats), whatever the stage, the tp layout and the
    # number of micro-steps; kernels/cuda/README.md states the bound, 2. Step 1 also grows the
    # kernel workspace and the staging buffer (each growth waits once), so it is reported, not
    # bounded. ZeRO 1 with 3 micro-steps covers the accumulation path.
    s1, _, _ = env.run(2, base + ["precision.compute=BF16", "parallel.zero_stage=1",
                                  "data.grad_accum=3"] + emu)
    counted = [("zero 0", s0), ("zero 1, 3 micro-steps", s1)]
    counted += [(f"np={np_} {' '.join(sets)}", got) for (np_, sets), (got, _) in runs.items()]
    for name, steps in counted:
        syncs = [m.get("host_syncs") for m in steps]
        print(f"cuda-emu {name}: host_syncs per step {syncs}")
        if any(not isinstance(x, int) for x in syncs) or max(syncs[1:], default=99) > 2:
            failures.append(f"cuda-emu {name}: host_syncs per step {syncs}, bound 2 after step 1")
    same = ([a["loss"] for a in s0] == [b["loss"] for b in s3] and
            [a["grad_norm"] for a in s0] == [b["grad_norm"] for b in s3] and w0 == w3)
    print(f"cuda-emu np=2 ZeRO 0 vs ZeRO 3: bitwise equal losses, norms and weights: {same}")
    if not same or len(s0) != 5:
        failures.append("cuda-emu ZeRO 0 and ZeRO 3 differ")
    # Refused before any work, exit 2, one line naming the problem: fp32 (no fp32 attention
    # kernel), and `cuda` on a machine without a GPU (or a build without CUDA).
    for flag, needle in [("cuda-emu", "bf16 or f16 compute with head_dim 64 or 128"),
                         ("cuda", "train.device cuda: ")]:
        _, _, p = env.run(2, base, extra=["--device", flag], check=False)
        err = [line for line in p.stderr.splitlines() if "error" in line]
        print(f"fp32, --device {flag}: exit {p.returncode}: {err}")
        if p.returncode != 2 or len(err) != 1 or needle not in err[0]:
            failures.append(f"--device {flag}: expected exit 2 with '{needle}', got {p.returncode} {err}")
    return failures


def weight_changes(w, ref_w, w0):
    """Per tensor: |change of w - change of ref| / |change of ref| (L2), changes from w0."""
    g, r = read_weights(w), read_weights(ref_w)
    return {k: float(np.linalg.norm((g[k] - w0[k]) - (r[k] - w0[k])) /
                     max(np.linalg.norm(r[k] - w0[k]), 1e-30)) for k in w0}


def cuda_gpu(env):
    """ctest -L gpu and gpu-bundle/gpu_check.sh: train.device cuda on real GPUs (one per rank)
    matches cuda-emu, the same host code and kernel source run on the CPU, with cuda_emu's
    probe settings and bounds (per step loss 5e-4, grad_norm 2e-3; each tensor's weight change
    3e-2), in bf16 and fp16; recompute SELECTIVE and FULL bitwise equal to NONE (bf16); with
    two GPUs also ZeRO 3 and its bitwise equality to ZeRO 0. Skips (exit 77) with shardtrain's reason where no GPU can be used, or fails under
    SHARDTRAIN_REQUIRE_GPU=1."""
    failures = []
    base = ["optimizer.eps=1", "optimizer.lr=0.3", "optimizer.min_lr=0.03", "train.steps=5",
            "model.d_model=128", "model.n_head=2", "data.micro_batch=2"]
    if ARCH == "llama":  # grouped-query on the GPU path: 4 query heads of 64 share 2 K/V heads
        base[4:6] = ["model.d_model=256", "model.n_head=4"]
    w0 = read_weights(initial_weights(env, base, "cuda_gpu_init.safetensors"))
    runs = [(1, ["precision.compute=BF16"]), (1, ["precision.compute=F16"])]
    if env_np() >= 2:
        runs.append((2, ["precision.compute=BF16", "parallel.zero_stage=3"]))
    for np_, sets in runs:
        got, w, p = env.run(np_, base + sets, extra=["--device", "cuda"], check=False)
        if p.returncode == 2 and "train.device cuda: " in p.stderr:
            reason = [x for x in p.stderr.splitlines() if "train.device cuda: " in x][0]
            if np_ == 1:
                print(f"SKIP: {reason}")
                sys.exit(1 if os.environ.get("SHARDTRAIN_REQUIRE_GPU") == "1" else 77)
            print(f"np={np_} not run: {reason}")  # fewer GPUs than ranks
            break
        if p.returncode != 0 or len(got) != 5:
            failures.append(f"np={np_} {sets}: cuda run failed ({p.returncode}): "
                            f"{p.stderr[-2000:]}")
            continue
        ref, ref_w, _ = env.run(np_, base + sets, extra=["--device", "cuda-emu"])
        loss = max(rel(g["loss"], r["loss"]) for g, r in zip(got, ref))
        norm = max(rel(g["grad_norm"], r["grad_norm"]) for g, r in zip(got, ref))
        change = weight_changes(w, ref_w, w0)
        where = max(change, key=change.get)
        print(f"np={np_} {' '.join(sets)}: cuda vs cuda-emu, worst per step: loss {loss:.2e} "
              f"(losses {[round(g['loss'], 5) for g in got]}), grad_norm {norm:.2e}; weight "
              f"change {change[where]:.2e} ({where}); step_ms {[g['step_ms'] for g in got]}")
        if loss > 5e-4 or norm > 2e-3 or change[where] > 3e-2:
            failures.append(f"np={np_} {sets}: cuda differs from cuda-emu: loss {loss:.2e}, "
                            f"grad_norm {norm:.2e}, change of {where} {change[where]:.2e}")
        if np_ == 2:
            s0, w0_, _ = env.run(np_, base + ["precision.compute=BF16", "parallel.zero_stage=0"],
                                 extra=["--device", "cuda"])
            same = [a["loss"] for a in s0] == [b["loss"] for b in got] and w0_ == w
            print(f"cuda np=2 ZeRO 0 vs ZeRO 3 bitwise equal: {same}")
            if not same:
                failures.append("cuda ZeRO 0 and ZeRO 3 differ")
        if np_ == 1 and sets == ["precision.compute=BF16"]:
            # Recomputation on the GPU: SELECTIVE and FULL bitwise equal to NONE (the FFN's
            # GELU is the same kernel in the forward and in the recomputation).
            for mode in ("SELECTIVE", "FULL"):
                rc, rc_w, _ = env.run(1, base + sets + [f"parallel.recompute={mode}"],
                                      extra=["--device", "cuda"])
                same = ([a["loss"] for a in rc] == [b["loss"] for b in got] and
                        [a["grad_norm"] for a in rc] == [b["grad_norm"] for b in got] and
                        rc_w == w)
                print(f"cuda recompute {mode} vs NONE bitwise equal: {same}")
                if not same:
                    failures.append(f"cuda recompute {mode} differs from NONE")
    return failures


def model_flops_per_token(L, C, V, T):
    """Training FLOPs per token, PaLM appendix B / Megatron-LM (Narayanan et al. 2021), written
    out here apart from models/flops.h: 6 x the matmul parameters (12 L C^2 per layer plus the
    tied head C V, the model's vocabulary) plus 12 L C T for Q K^T and P V, forward and
    backward, the full T x T square (no causal halving)."""
    return 6 * (12 * L * C * C + C * V) + 12 * L * C * T


def parse_eta(text):
    """'42s' / '12m05s' / '1h02m' / '3d04h' -> (seconds, half the last unit: the rounding)."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([dhms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None, None
    return sum(int(n) * units[u] for n, u in parts), units[parts[-1][1]] / 2


def metrics(env):
    """tflops, eta_s and mfu in the metrics lines, and the eta in the progress line. tflops is
    per device: the whole step's model FLOPs over its time, divided by the world size (dp x tp).
    eta_s is the steps left times the mean step time of the last (up to) 10 steps, the run's
    first step left out (warm-up; it alone is used at step 1), recomputed here from the lines'
    own step_ms; the lines are the only clock both sides share, so the bounds are rounding only:
    1e-6 for tflops (JSON prints doubles to round-trip), 1e-9 for eta_s (ms vs s, summation).
    mfu exists only on `cuda` with a GPU in runtime/gpu_peak.h: never here."""
    failures = []
    cfg = open(env.config).read()
    vocab = int(re.search(r"vocab_size: (\d+)", cfg).group(1))
    emu = ["train.device=cuda-emu", "precision.compute=BF16", "model.d_model=128",
           "model.n_head=2", "data.micro_batch=2", "train.steps=5"]
    # (name, np, sets, C, B, dp): L 2, T 32, grad_accum 1 from CONFIG.
    runs = [("cpu dp 2", 2, [], 64, 4, 2),
            ("cpu tp 2", 2, ["parallel.tp=2"], 64, 4, 1),
            ("cuda-emu", 1, emu, 128, 2, 1)]
    for name, np_, sets, C, B, dp in runs:
        lines, _, p = env.run(np_, sets + ["train.log_every=1"])
        L, T, steps = 2, 32, len(lines)
        fpt = model_flops_per_token(L, C, vocab, T)
        tokens = B * T * dp
        worst_tflops = max(rel(m["tflops"], fpt * tokens / (m["step_ms"] / 1e3) / np_ / 1e12)
                           for m in lines)
        ms = [m["step_ms"] for m in lines]
        want = [(steps - k - 1) * (ms[0] if k == 0 else sum(ms[max(1, k - 9):k + 1]) /
                                   len(ms[max(1, k - 9):k + 1])) / 1e3 for k in range(steps)]
        worst_eta = max(abs(m["eta_s"] - w) / max(w, 1e-30) if w > 0 else abs(m["eta_s"])
                        for m, w in zip(lines, want))
        etas = [m["eta_s"] for m in lines]
        # Decreasing-ish: the ETA of a step with at least 4x the steps left of a later one is
        # larger, unless the recent mean step time grew 4x in between (never on a quiet run).
        rising = [(i + 1, j + 1) for i in range(steps) for j in range(i + 1, steps - 1)
                  if steps - i - 1 >= 4 * (steps - j - 1) and etas[i] <= etas[j]]
        progress = {int(g[0]): g[1] for g in
                    re.findall(r"step\s+(\d+)/\d+ \|[^\n]*\| eta (\S+)", p.stdout)}
        shown = []
        for m in lines:
            secs, half = parse_eta(progress.get(m["step"], ""))
            shown.append(secs is not None and abs(secs - m["eta_s"]) <= half + 1e-6)
        print(f"{name}: {steps} steps, tflops {lines[-1]['tflops']:.3e} (model FLOPs/token "
              f"{fpt}, {tokens} tokens/step, world {np_}): worst rel diff {worst_tflops:.1e}; "
              f"eta_s {[round(e, 4) for e in etas]}: worst rel diff {worst_eta:.1e}; first step "
              f"{ms[0]:.1f} ms, later {min(ms[1:]):.1f}-{max(ms[1:]):.1f} ms; progress etas "
              f"{[progress.get(m['step']) for m in lines]}")
        if steps != (5 if "cuda-emu" in name else 10):
            failures.append(f"{name}: {steps} metrics lines")
        if worst_tflops > 1e-6:
            failures.append(f"{name}: tflops differs from the model-FLOPs formula by "
                            f"{worst_tflops:.2e} (bound 1e-6)")
        if worst_eta > 1e-9 or etas[-1] != 0 or rising:
            failures.append(f"{name}: eta_s {etas} vs steps left x recent step time {want}: "
                            f"{worst_eta:.2e} (bound 1e-9), last {etas[-1]}, not falling {rising}")
        if any("mfu" in m for m in lines) or "mfu" in p.stdout:
            failures.append(f"{name}: an mfu field without a GPU peak")
        if not all(shown):
            failures.append(f"{name}: progress line etas {progress} do not show eta_s {etas}")
    return failures


def profile(env):
    """train --profile (kernels/profiler.h, launch/profile_report.h): every step but the first
    is profiled; the profile's step time is the metrics' own (both from the step's one clock
    pair: 1e-9, JSON round-trip and the mean's summation); ops + "other" add up to it; each op
    is called as often as the model calls it (per block per micro-step, the head once per
    micro-step; GEMM GFLOP/s = 2 m n k calls / time). Runs: np 1 with grad_accum 2, and np 2
    at tp 2 (rank 0's profile: the head's GEMM has this rank's half of the vocabulary)."""
    failures = []
    L, C, T, B, Vp, steps = 2, 64, 32, 4, 128, 10
    for name, np_, sets, accum, tp in [("np 1, grad_accum 2", 1, ["data.grad_accum=2"], 2, 1),
                                       ("np 2, tp 2", 2, ["parallel.tp=2"], 1, 2)]:
        path = os.path.join(env.tmp, f"profile{env.n}.json")
        lines, _, p = env.run(np_, sets, ["--profile", path])
        r = json.load(open(path))
        ops = {o["op"]: o for o in r["ops"]}
        mean_ms = sum(m["step_ms"] for m in lines[1:]) / len(lines[1:])
        total = sum(o["ms_per_step"] for o in r["ops"]) + r["other_ms_per_step"]
        head = f"gemm {B * T}x{Vp // tp}x{C} NT f32->f32"  # logits = lnf @ wte^T
        print(f"{name}: {r['steps']} steps profiled, {r['step_ms']:.3f} ms per step (metrics "
              f"{mean_ms:.3f}), other {r['other_ms_per_step']:.3f} ms; top ops "
              f"{[(o['op'], round(o['share'], 3)) for o in r['ops'][:5]]}")
        if r["steps"] != steps - 1:
            failures.append(f"{name}: {r['steps']} steps profiled, want {steps - 1}")
        if abs(r["step_ms"] - mean_ms) > 1e-9 * mean_ms:
            failures.append(f"{name}: profile step_ms {r['step_ms']} vs metrics {mean_ms}")
        if abs(total - r["step_ms"]) > 1e-9 * r["step_ms"] or r["other_ms_per_step"] < 0:
            failures.append(f"{name}: ops + other = {total} ms vs step {r['step_ms']} ms")
        want_calls = {"attention_forward": L * accum, "attention_backward": L * accum,
                      "layernorm_backward": (2 * L + 1) * accum, head: accum}
        for op, n in want_calls.items():
            got = ops.get(op, {}).get("calls_per_step")
            if got != n:
                failures.append(f"{name}: {op} called {got} times per step, want {n}")
        if head in ops:
            o = ops[head]
            want = 2 * B * T * (Vp // tp) * C * o["calls_per_step"] / (o["ms_per_step"] * 1e6)
            if abs(o["gflops"] - want) > 1e-6 * want:
                failures.append(f"{name}: {head} at {o['gflops']} GFLOP/s, its time says {want}")
        if "profile of 9 step(s)" not in p.stdout + p.stderr:
            failures.append(f"{name}: no profile table in the log")
    return failures


# The Llama variant of the test model (--arch llama): 2 K/V heads for 4 query heads, FFN 160,
# untied head.
LLAMA = "arch: LLAMA n_kv_head: 2 ffn_hidden: 160"


def env_np():
    return NP


NP = 2
ARCH = "gpt2"
PARAMS = UNITS = 0


def main():
    global PARAMS, UNITS
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--check", required=True)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    a = ap.parse_args()
    global NP, ARCH
    NP, ARCH = a.np, a.arch
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # Parameters of the test GPT (L=2, C=64, V=96 padded to 128, T=32): wte 128*64, wpe 32*64,
    # per block 12*C^2 + 13*C, ln_f 2*C.
    C, L = 64, 2
    PARAMS = 128 * C + 32 * C + L * (12 * C * C + 13 * C) + 2 * C
    UNITS = L + 2
    with tempfile.TemporaryDirectory() as tmp:
        env = Env(a.shardtrain, tmp, a.corpus, LLAMA if a.arch == "llama" else "")
        checks = {
            "dp_equivalence": lambda: dp_equivalence(env),
            "zero_bitwise": lambda: zero_bitwise(env, a.np),
            "zero_memory": lambda: zero_memory(env, a.np),
            "mixed_precision": lambda: mixed_precision(env),
            "overflow": lambda: overflow(env),
            "fault": lambda: fault(env),
            "tp_equivalence": lambda: tp_equivalence(env),
            "cuda_emu": lambda: cuda_emu(env),
            "kv_replicated": lambda: kv_replicated(env),
            "recompute": lambda: recompute(env),
            "cuda_gpu": lambda: cuda_gpu(env),
            "metrics": lambda: metrics(env),
            "profile": lambda: profile(env),
        }
        failures = checks[a.check]()
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
