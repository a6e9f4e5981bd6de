"""bench/gpu_roofline.py's op list is the model's: a two-step cpu run of configs/gpt2_124m with
`train --profile` (batch 1, sequence 64, grad_accum 1) calls the Backend ops the roofline models,
as many times per step, with the GEMM FLOPs it sums. The model calls the same ops on every
device, so the GPU step's expected time is built from the ops the GPU step really runs.

  gpu_roofline_ops.py --shardtrain build/bin/shardtrain
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "parallel"))
import train_runs as tr  # noqa: E402
BATCH, SEQ = 1, 64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tokens = os.path.join(d, "t.bin")
        rng = random.Random(1)
        tr.write_shard(tokens, [rng.randrange(50257) for _ in range(4096)], 50257)
        profile = os.path.join(d, "profile.json")
        sets = [f"data.train={tokens}", f"data.val={tokens}", f"data.micro_batch={BATCH}",
                "data.grad_accum=1", f"model.seq_len={SEQ}", "train.steps=2",
                "train.eval_every=0", "checkpoint.dir=", "train.device=cpu"]
        cmd = [a.shardtrain, "train", "--config", os.path.join(ROOT, "configs/gpt2_124m.pbtxt"),
               "--profile", profile]
        for s in sets:
            cmd += ["--set", s]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        if p.returncode != 0:
            sys.exit(f"train failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
        p = subprocess.run([sys.executable, os.path.join(ROOT, "bench/gpu_roofline.py"),
                            "--batch", str(BATCH), "--seq", str(SEQ), "--check-profile",
                            profile], capture_output=True, text=True, timeout=60)
        print(p.stdout, end="")
        sys.exit(p.returncode)


if __name__ == "__main__":
    main()
