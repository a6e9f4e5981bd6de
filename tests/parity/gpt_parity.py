"""Parity: shardtrain vs PyTorch, same model, same initial weights, same batches, 5 AdamW steps.

--arch gpt2 (default) or llama (grouped-query: 4 heads, 2 K/V heads, untied head; the
reference is tests/parity/gpt_reference.py's Llama, written from Hugging Face's definition).

shardtrain exports its seeded initial weights as safetensors, trains from them, and exports
the result; PyTorch (tests/parity/gpt_reference.py) loads the same file and trains on the
same windows with torch.optim.AdamW, clip_grad_norm_ and gradient accumulation. Checked, fp32:
per-step losses to 1e-5 relative, grad norms to 1e-4, final weights to 1e-4 max relative error
(max |a - b| / max |b| per tensor). Both sides accumulate in fp32 in different orders; over 5
steps of a 2-layer model that stays around 1e-6, so these bounds have an order of magnitude
of margin while still catching any real difference in the math (which shows at 1e-3 or worse).

AdamW eps is 1e-5 here, not 1e-8: AdamW divides by sqrt(v) + eps, which turns rounding noise
(~1e-10) in gradients that are exactly zero in exact arithmetic -- the key bias, to which the
softmax is invariant, and dead GELU units -- into updates of lr * noise / (noise + eps) that
differ between any two implementations. With 1e-8 that is ~1% of a step (measured: 7e-4
relative weight error on those elements only); with 1e-5 it is below 1e-5, while every real
gradient (>= 1e-4 here) is still normalised by sqrt(v), so the update rule is fully exercised.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt_reference as ref  # noqa: E402

MODELS = {
    "gpt2": "",
    # Llama 3.1's RoPE rescaling with an original context of 16 and head dim 16: frequency 0 in
    # the blended band, 1 too, 2..7 divided by the factor (wavelengths 6.3, 13.6, 29.7, ...).
    "llama": "arch: LLAMA n_kv_head: 2 ffn_hidden: 160 rope_theta: 500 rope_scaling { factor: 4 "
             "low_freq_factor: 1 high_freq_factor: 4 original_max_position: 16 }",
}

CONFIG = """
model {{ n_layer: 2 n_head: 4 d_model: 64 vocab_size: {vocab} seq_len: {T} {arch} }}
precision {{ compute: F32 }}
optimizer {{ lr: 3e-3 min_lr: 3e-4 warmup_steps: 2 schedule: COSINE weight_decay: 0.1
            beta1: 0.9 beta2: 0.95 eps: 1e-5 grad_clip: {clip} }}
data {{ train: "{shard}" micro_batch: {B} grad_accum: {accum} }}
train {{ steps: {steps} seed: 7 log_every: 1 }}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--arch", choices=sorted(MODELS), default="gpt2")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    # vocab 100 pads to 128 inside shardtrain, exercising the padding path; 3000 tokens of
    # T=32 windows wrap around after 93 windows (not reached in 5 steps of 8 windows).
    vocab, T, B, accum, steps, clip = 100, 32, 2, 2, args.steps, 0.5
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(1)
        tokens = rng.integers(0, vocab, size=3000)
        shard = os.path.join(tmp, "train.bin")
        ref.write_shard(shard, tokens, vocab)
        cfg = os.path.join(tmp, "parity.pbtxt")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(vocab=vocab, T=T, clip=clip, shard=shard, B=B, accum=accum,
                                  steps=steps, arch=MODELS[args.arch]))
        init = os.path.join(tmp, "init.safetensors")
        final = os.path.join(tmp, "final.safetensors")
        metrics = os.path.join(tmp, "metrics.jsonl")
        subprocess.run([args.shardtrain, "export", "--config", cfg, "--out", init], check=True)
        subprocess.run([args.shardtrain, "train", "--config", cfg, "--set",
                        f"model.init_from={init}", "--metrics", metrics, "--export-final", final],
                       check=True, stdout=subprocess.DEVNULL)
        ours = [json.loads(line) for line in open(metrics)]
        init_w = ref.read_safetensors(init)
        final_w = ref.read_safetensors(final)

    if args.arch == "llama":
        model = ref.Llama(init_w, n_layer=2, n_head=4, n_kv_head=2, theta=500.0,
                          scaling=(4.0, 1.0, 4.0, 16.0))
    else:
        model = ref.Gpt(init_w, n_layer=2, n_head=4)
    decay = [p for n, p in model.p.items() if p.dim() >= 2]
    no_decay = [p for n, p in model.p.items() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95), eps=1e-5)
    failures = []
    for step in range(1, steps + 1):
        lr = ref.learning_rate(step, 3e-3, 3e-4, 2, steps, cosine=True)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        total = 0.0
        for micro in range(accum):
            m = (step - 1) * accum + micro
            x, y = ref.windows(tokens, T, m * B, B)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
            (loss / accum).backward()
            total += loss.item() / accum
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
        opt.step()
        got = ours[step - 1]
        rel = abs(got["loss"] - total) / abs(total)
        rel_norm = abs(got["grad_norm"] - norm) / abs(norm)
        print(f"step {step}: loss torch {total:.8f} shardtrain {got['loss']:.8f} (rel {rel:.2e}); "
              f"grad_norm torch {norm:.6f} shardtrain {got['grad_norm']:.6f} (rel {rel_norm:.2e}); "
              f"lr {lr:.6g} vs {got['lr']:.6g}")
        if rel > 1e-5:
            failures.append(f"step {step} loss rel error {rel:.2e} > 1e-5")
        if rel_norm > 1e-4:
            failures.append(f"step {step} grad_norm rel error {rel_norm:.2e} > 1e-4")
        if abs(got["lr"] - lr) > 1e-12 * lr:
            failures.append(f"step {step} lr {got['lr']} != {lr}")
    if ours[0]["grad_norm"] <= clip:
        failures.append("clipping never triggered: the test would not check it")
    worst = 0.0
    for name, p in model.p.items():
        name = name.replace("__", ".")
        want = p.detach()
        err = (final_w[name] - want).abs().max().item() / want.abs().max().item()
        worst = max(worst, err)
        if err > 1e-4:
            failures.append(f"weight {name}: max rel error {err:.2e} > 1e-4")
    print(f"final weights: worst max-relative error {worst:.2e} over {len(model.p)} tensors")
    if set(final_w) != {n.replace('__', '.') for n in model.p.keys()}:
        failures.append("exported tensor names differ from the reference's")
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
