"""The statistics of a fresh model (`shardtrain export --config`, nothing trained) against
GPT-2's initialisation (REFERENCE.md; Radford et al. 2019, as in HF's GPT2PreTrainedModel):
weights N(0, 0.02); the residual projections attn.c_proj and mlp.c_proj N(0, 0.02 / sqrt(2 L));
every bias 0; LayerNorm weight 1.

For a tensor of n samples of N(0, s^2), the sample mean has standard error s / sqrt(n), the
sample standard deviation s / sqrt(2 n), the excess kurtosis sqrt(24 / n), the fraction beyond
2 s (p = 0.0455) sqrt(p (1 - p) / n), and the correlation of two independent tensors
1 / sqrt(n). Each check allows 6 standard errors: a correct initialiser fails one with
probability ~1e-9, while a wrong scale (sqrt(L) for sqrt(2 L): std off by 41 %), a uniform
(excess kurtosis -1.2) or a tensor repeated across layers (correlation 1) fails by far more.
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
import train_runs as tr  # noqa: E402

STD = 0.02
L = 4
CONFIG = f"""
model {{ n_layer: {L} n_head: 4 d_model: 128 vocab_size: 1000 seq_len: 256 }}
data {{ train: "unused.bin" micro_batch: 1 }}
train {{ steps: 1 seed: 7 }}
"""
Z = 6.0  # standard errors allowed


def expected(name):
    """("normal", std) / ("const", value) for a GPT-2 tensor name."""
    if name.endswith(".bias"):
        return "const", 0.0
    if ".ln_" in name or name.startswith("ln_f"):
        return "const", 1.0
    if name.endswith("attn.c_proj.weight") or name.endswith("mlp.c_proj.weight"):
        return "normal", STD / math.sqrt(2 * L)
    return "normal", STD


def check_normal(name, x, s):
    n = x.size
    failures = []
    mean, std = x.mean(), x.std()
    kurt = ((x - mean) ** 4).mean() / std ** 4 - 3.0
    p = 2 * (1 - 0.5 * (1 + math.erf(2 / math.sqrt(2))))  # P(|x| > 2 s) = 0.0455
    tail = float((np.abs(x) > 2 * s).mean())
    bounds = {
        "mean": (abs(mean), Z * s / math.sqrt(n)),
        "std/expected - 1": (abs(std / s - 1), Z / math.sqrt(2 * n)),
        "excess kurtosis": (abs(kurt), Z * math.sqrt(24 / n)),
        "fraction beyond 2 std - 0.0455": (abs(tail - p), Z * math.sqrt(p * (1 - p) / n)),
    }
    for what, (got, bound) in bounds.items():
        if got > bound:
            failures.append(f"{name} (n={n}, std {s:.5f}): {what} = {got:.3g} > {bound:.3g}")
    return failures, f"{name}: n={n} std {std:.5f} (expected {s:.5f}) kurtosis {kurt:+.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    a = ap.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "c.pbtxt")
        with open(config, "w") as f:
            f.write(CONFIG)
        out = os.path.join(tmp, "init.safetensors")
        subprocess.run([a.shardtrain, "export", "--config", config, "--out", out], check=True)
        w = {k: v.astype(np.float64)
             for k, v in tr.read_weights(open(out, "rb").read()).items()}
    for name in sorted(w):
        kind, value = expected(name)
        if kind == "const":
            bad = int((w[name] != value).sum())
            print(f"{name}: {w[name].size} values, {bad} differ from {value}")
            if bad:
                failures.append(f"{name}: {bad} of {w[name].size} values are not {value}")
            continue
        f, line = check_normal(name, w[name], value)
        print(line)
        failures += f
    # Independent across layers: the same tensor of two blocks must not be correlated.
    for suffix in ("attn.c_attn.weight", "mlp.c_fc.weight", "attn.c_proj.weight"):
        x, y = w[f"h.0.{suffix}"], w[f"h.1.{suffix}"]
        r = float(np.corrcoef(x, y)[0, 1])
        print(f"corr(h.0.{suffix}, h.1.{suffix}) = {r:+.4f}")
        if abs(r) > Z / math.sqrt(x.size):
            failures.append(f"h.0 and h.1 {suffix} are correlated: r = {r:.3g}")
    if len([n for n in w if expected(n)[0] == "normal"]) != 2 + 4 * L:
        failures.append(f"expected {2 + 4 * L} normal tensors (wte, wpe, 4 per block)")
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
