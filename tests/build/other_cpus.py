#!/usr/bin/env python3
"""The executable on CPUs this machine is not: qemu-x86_64 (user mode) runs it on an emulated
CPU model whose cpuid and instruction set are that model's — an instruction the model lacks
is SIGILL, as on the real chip.

  avx2      -cpu Haswell-v4: AVX2 + FMA, no AVX-512 (the default build's baseline). The CPU
            kernel tests pass there; a bf16 training run (oneDNN without a bf16 matmul: the
            widened GEMMs) picks the x86-64-v3 kernels, trains, and gives bitwise the losses
            of the same run here under ONEDNN_MAX_CPU_ISA=AVX2 (the same code paths: the
            baseline kernels and oneDNN's AVX2 ones, run exactly either way).
  pre_avx2  -cpu Nehalem: no AVX at all. `train` and `sample` refuse it with one line naming
            the missing features, exit 2 — not SIGILL.
  torch_avx2
            bench/step_bench.py's PyTorch baseline capped at AVX2 takes an AVX2 CPU's path: a
            bf16 autocast step of its reference GPT (loss and every gradient) is bitwise the
            same here under the cap, with step_bench.torch_like_this_cpu(), as on -cpu
            Haswell-v4 uncapped. Where this CPU has AVX-512 the same capped step without that
            call must differ or fail, so the check can tell the two paths apart.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
import train_runs as tr  # noqa: E402

QEMU = "qemu-x86_64"


def on_cpu(model, cmd, env=None, timeout=600):
    return subprocess.run([QEMU, "-cpu", model] + cmd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def train_cmd(shardtrain, tmp, tag):
    shard = os.path.join(tmp, "train.bin")
    if not os.path.exists(shard):
        tr.write_synthetic_shard(shard)
    config = os.path.join(tmp, "cfg.pbtxt")
    with open(config, "w") as f:
        f.write(tr.CONFIG.format(vocab=96, train=shard, arch=""))
    metrics = os.path.join(tmp, f"{tag}.jsonl")
    return [shardtrain, "train", "--config", config, "--metrics", metrics,
            "--set", "precision.compute=BF16", "--set", "train.steps=3",
            "--set", "train.threads=2"], metrics


def avx2(args, tmp):
    failures = []
    p = on_cpu("Haswell-v4", [args.kernels_test, "--gtest_filter=" + args.cpu_tests])
    if p.returncode != 0:
        failures.append(f"kernels_test on Haswell: exit {p.returncode}\n{p.stdout[-3000:]}")
    else:
        print("kernels_test on Haswell:", [ln for ln in p.stdout.splitlines() if "PASSED" in ln])
    cmd, metrics = train_cmd(args.shardtrain, tmp, "haswell")
    p = on_cpu("Haswell-v4", cmd)
    if p.returncode != 0:
        return failures + [f"bf16 train on Haswell: exit {p.returncode}\n{p.stdout}\n{p.stderr}"]
    cpu_line = [ln for ln in p.stdout.splitlines() if ln.startswith("cpu:")]
    print("on Haswell:", cpu_line)
    if not cpu_line or "kernels x86-64-v3" not in cpu_line[0] or "oneDNN avx2" not in cpu_line[0]:
        failures.append(f"expected the x86-64-v3 kernels and oneDNN avx2, got {cpu_line}")
    emulated = [json.loads(x)["loss"] for x in open(metrics)]
    cmd, metrics = train_cmd(args.shardtrain, tmp, "capped")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if p.returncode != 0:
        return failures + [f"bf16 train under ONEDNN_MAX_CPU_ISA=AVX2: exit {p.returncode}"]
    capped = [json.loads(x)["loss"] for x in open(metrics)]
    print("losses on Haswell:", emulated, " here, capped at AVX2:", capped)
    if emulated != capped:
        failures.append(f"losses differ: Haswell {emulated} vs capped {capped}")
    return failures


# One bf16 autocast step of step_bench's reference GPT at a small shape, one thread; prints the
# path torch was set on and a digest of the loss and every gradient. argv[1]: "emulate" applies
# step_bench.torch_like_this_cpu().
TORCH_STEP = r"""
import hashlib, os, sys
import numpy as np
import torch
sys.path.insert(0, os.path.join(sys.argv[2], "bench"))
import step_bench as sb
sb.C, sb.L, sb.H, sb.T, sb.V, sb.B = 64, 1, 2, 16, 128, 2
print("path:", sb.torch_like_this_cpu() if sys.argv[1] == "emulate" else "untouched")
torch.set_num_threads(1)
tokens = np.random.default_rng(0).integers(0, sb.V, size=sb.B * sb.T + 1)
x, y = sb.ref.windows(tokens, sb.T, 0, sb.B)
model = sb.torch_model("cpu")
loss = sb.torch_loss(model, x, y, "bf16", "cpu")
loss.backward()
digest = hashlib.sha1(loss.detach().float().numpy().tobytes())
for _, p in sorted(model.named_parameters()):
    digest.update(p.grad.float().numpy().tobytes())
print("digest:", digest.hexdigest(), "loss:", loss.item())
"""

# The environment step_bench.py is run in to stand for an AVX2 CPU (its docstring).
AVX2_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
            "OPENBLAS_CORETYPE": "Haswell"}


def torch_avx2(args, tmp):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    base = {k: v for k, v in os.environ.items() if k not in AVX2_CAP}
    base["OMP_NUM_THREADS"] = "1"

    def step(emulate, capped, cpu=None):
        cmd = [sys.executable, "-c", TORCH_STEP, "emulate" if emulate else "plain", root]
        env = dict(base, **AVX2_CAP) if capped else base
        p = on_cpu(cpu, cmd, env) if cpu else subprocess.run(
            cmd, capture_output=True, text=True, timeout=300, env=env)
        out = [ln for ln in p.stdout.splitlines() if ln.startswith(("path:", "digest:"))]
        err = p.stderr.strip().splitlines()[-1:] if p.returncode else []
        return p.returncode, out, err

    failures = []
    rc, haswell, err = step(True, False, "Haswell-v4")
    print("on Haswell-v4, uncapped:", rc, haswell, err)
    rc2, here, err2 = step(True, True)
    print("here, capped at AVX2:   ", rc2, here, err2)
    if rc or rc2 or haswell[-1:] != here[-1:] or len(here) != 2:
        failures.append(f"the capped baseline is not an AVX2 CPU's torch: Haswell {rc} {haswell} "
                        f"{err}, capped here {rc2} {here} {err2}")
    sys.path.insert(0, os.path.join(root, "bench"))
    import step_bench as sb  # noqa: E402 (torch: only this check needs it)
    if sb.cpu_has_avx512_bf16_path():
        rc3, plain, err3 = step(False, True)
        print("here, capped, torch untouched:", rc3, plain, err3)
        if rc3 == 0 and plain[-1:] == here[-1:]:
            failures.append("the capped step without torch_like_this_cpu() took the same path: "
                            "the check cannot tell the paths apart")
    return failures


def pre_avx2(args, tmp):
    failures = []
    cmd, _ = train_cmd(args.shardtrain, tmp, "nehalem")
    for name, c in [("train", cmd),
                    ("sample", [args.shardtrain, "sample", "--ckpt", "x.safetensors",
                                "--tokenizer", "t.bpe", "--prompt", "p"])]:
        p = on_cpu("Nehalem", c)
        err = [ln for ln in p.stderr.splitlines() if not ln.startswith("qemu-x86_64: warning")]
        print(f"{name} on Nehalem: exit {p.returncode}: {err}")
        if p.returncode != 2 or len(err) != 1 or "lacks AVX, AVX2, FMA" not in err[0]:
            failures.append(f"{name} on Nehalem: want exit 2 and one line naming AVX2, got "
                            f"{p.returncode}: {err}")
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--kernels-test", required=True)
    ap.add_argument("--cpu-tests", required=True, help="gtest filter: the CPU kernel suites")
    ap.add_argument("--check", choices=["avx2", "pre_avx2", "torch_avx2"], required=True)
    args = ap.parse_args()
    if subprocess.run(["sh", "-c", f"command -v {QEMU}"], capture_output=True).returncode:
        print(f"{QEMU} not found (Debian's qemu-user; scripts/setup.sh installs it)")
        sys.exit(77)
    with tempfile.TemporaryDirectory() as tmp:
        failures = {"avx2": avx2, "pre_avx2": pre_avx2, "torch_avx2": torch_avx2}[args.check](
            args, tmp)
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
