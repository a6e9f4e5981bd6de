"""`sample` with the KV cache against `sample --no-cache` (the whole window per token), for GPT-2
and Llama (grouped-query): a 2-layer model trained 40 steps on the synthetic stream, a 10-token
prompt, 60 greedy tokens: through the context (48) and past it, where the window slides and the
cache gives way to the window path. The ids must be identical; the two paths' logits differ
only in fp32 summation order (kernels/attention.h attention_decode vs the flash forward, checked
to 1e-6 in tests/kernels/attention_test.cpp), so a greedy choice could only flip on a tie.
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
import train_runs as tr  # noqa: E402

ARCHS = {"gpt2": [], "llama": ["--set", "model.arch=LLAMA", "--set", "model.n_kv_head=2"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    a = ap.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        env = tr.Env(a.shardtrain, tmp)
        for arch, sets in ARCHS.items():
            weights = os.path.join(tmp, f"{arch}.safetensors")
            subprocess.run([a.shardtrain, "train", "--config", env.config, "--set",
                            "model.seq_len=48", "--set", "train.steps=40", "--export-final",
                            weights] + sets, check=True, capture_output=True)
            outs = {}
            for flag in ([], ["--no-cache"]):
                p = subprocess.run([a.shardtrain, "sample", "--ckpt", weights, "--prompt-ids",
                                    "1,2,3,4,5,6,7,8,9,10", "--tokens", "60", "--top-k", "1",
                                    "--print-ids"] + flag, check=True, capture_output=True,
                                   text=True)
                outs[bool(flag)] = p.stdout.split()
            same = outs[False] == outs[True]
            print(f"{arch}: cached {' '.join(outs[False][10:40])} ...; equal to --no-cache: {same}")
            if not same or len(outs[False]) != 70:
                failures.append(f"{arch}: the KV cache path differs from --no-cache")
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
