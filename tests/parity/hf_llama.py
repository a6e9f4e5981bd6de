"""Parity: a Llama export is a Hugging Face model directory that transformers' LlamaForCausalLM
loads as is, and computes what shardtrain computes.

shardtrain trains a 2-layer grouped-query Llama (4 query heads sharing 2 K/V heads, SwiGLU
width 160, RoPE theta 500, untied head; and once with the head tied) for 30 steps on a
synthetic stream and exports it with `train --export-final DIR`; transformers 4.38.2 (the
virtual environment of scripts/setup.sh) loads DIR with AutoModelForCausalLM, nothing written
by hand, and this checks:
  - config.json: LlamaForCausalLM, every tensor loads (no missing or unexpected keys), the
    configured shapes, num_key_value_heads, intermediate_size, rope_theta, rms_norm_eps,
    tie_word_embeddings;
  - logits on fixed ids against `shardtrain sample --logits-out`, fp32 on both sides;
  - greedy generation (`generate`, do_sample=False) against `shardtrain sample --top-k 1`.
Exit 77 (a ctest skip) when transformers is not installed.
"""
import argparse
import json
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_common import AutoModelForCausalLM, greedy_ids, logits_error, run, torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
import train_runs as tr  # noqa: E402

# Logits: max |shardtrain - transformers| / max |logit|, both fp32 with different GEMM blockings
# and reduction orders (as hf_transformers.py's 1e-5 for GPT-2: a few float32 ulps are ~4e-7);
# a wrong RoPE pairing, theta or norm epsilon moves logits by 1e-3 or more.
LOGITS_RTOL = 1e-5

CONFIG = """
model {{ n_layer: 2 n_head: 4 d_model: 64 vocab_size: {vocab} seq_len: 48 arch: LLAMA
        n_kv_head: 2 ffn_hidden: 160 rope_theta: 500 norm_eps: 1e-6 tie_embeddings: {tied} }}
precision {{ compute: F32 }}
optimizer {{ lr: 3e-3 min_lr: 3e-4 warmup_steps: 5 schedule: COSINE }}
data {{ train: "{shard}" micro_batch: 8 }}
train {{ steps: 30 seed: 3 log_every: 10 threads: 2 }}
"""


def check_export(st, tmp, tied, failures):
    shard = os.path.join(tmp, "train.bin")
    vocab = tr.write_synthetic_shard(shard)
    cfg = os.path.join(tmp, f"llama_{tied}.pbtxt")
    with open(cfg, "w") as f:
        f.write(CONFIG.format(vocab=vocab, shard=shard, tied="true" if tied else "false"))
    model_dir = os.path.join(tmp, f"llama_{tied}")
    run([st, "train", "--config", cfg, "--export-final", model_dir])
    conf = json.load(open(os.path.join(model_dir, "config.json")))
    want = {"architectures": ["LlamaForCausalLM"], "num_key_value_heads": 2,
            "intermediate_size": 160, "rope_theta": 500.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": tied, "hidden_size": 64, "num_hidden_layers": 2}
    for k, v in want.items():
        if conf.get(k) != v:
            failures.append(f"tied={tied}: config.json {k} = {conf.get(k)!r}, want {v!r}")
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    model.eval()
    loading = {k: v for k, v in info.items() if v}
    print(f"tied={tied}: loaded {type(model).__name__}; loading info {loading or 'clean'}")
    if type(model).__name__ != "LlamaForCausalLM" or loading:
        failures.append(f"tied={tied}: {type(model).__name__}, loading info {loading}")

    rng = random.Random(4)
    for name, ids in [("pattern", [(i * 7 + i // 5) % vocab for i in range(40)]),
                      ("random", [rng.randrange(vocab) for _ in range(48)])]:
        out = os.path.join(tmp, f"logits_{tied}_{name}.safetensors")
        rel, _ = logits_error(st, model, model_dir, ids, out)
        if rel is None:
            failures.append(f"tied={tied} {name}: logits shapes differ")
            continue
        print(f"tied={tied} logits, {name}: max |diff| / max |logit| = {rel:.2e} "
              f"(bound {LOGITS_RTOL:.0e})")
        if rel > LOGITS_RTOL:
            failures.append(f"tied={tied} {name}: logits differ by {rel:.2e}")

    prompt = [(i * 7 + i // 5) % vocab for i in range(10)]
    ours = greedy_ids(st, model_dir, prompt, 12)
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                pad_token_id=0)[0].tolist()
    print(f"tied={tied} greedy: shardtrain {' '.join(map(str, ours))}; transformers "
          f"{' '.join(map(str, theirs))}")
    if ours != theirs:
        failures.append(f"tied={tied}: greedy generation differs")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for tied in (False, True):
            check_export(a.shardtrain, tmp, tied, failures)
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
