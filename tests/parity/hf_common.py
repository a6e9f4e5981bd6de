"""What the transformers parity tests share: the offline, skip-if-absent import of transformers,
running shardtrain, and its logits and greedy tokens for a model directory.

Importing this module exits 77 (a ctest skip) when transformers is not installed.
"""
import os
import subprocess
import sys

# Everything is loaded from local directories; no hub look-up, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
try:
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM
except ImportError as e:
    print(f"SKIP: {e} (scripts/setup.sh installs transformers 4.38.2 into /opt/shardtrain-venv)")
    sys.exit(77)

__all__ = ["torch", "transformers", "AutoModelForCausalLM", "run", "logits_error",
           "greedy_ids"]


def run(cmd, **kw):
    """Runs cmd (root may run mpirun); its stdout, or the test fails with its stderr."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {r.returncode}:\n{r.stderr}")
    return r.stdout


def logits_error(st, model, model_dir, ids, out):
    """max |shardtrain - transformers| / max |logit| over every position and id of `ids`
    (shardtrain's through `sample --logits-out`, written to `out`), and the max |logit|; None
    for the error when the shapes differ."""
    run([st, "sample", "--ckpt", model_dir, "--prompt-ids", ",".join(map(str, ids)),
         "--tokens", "0", "--logits-out", out])
    ours = load_file(out)["logits"]
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    top = float(np.abs(theirs).max())
    if ours.shape != theirs.shape:
        print(f"logits shape {ours.shape} vs {theirs.shape}")
        return None, top
    return float(np.abs(ours - theirs).max() / top), top


def greedy_ids(st, model_dir, prompt, new):
    """The prompt and `new` greedy tokens after it, from `shardtrain sample --top-k 1`."""
    return [int(x) for x in run([st, "sample", "--ckpt", model_dir, "--prompt-ids",
                                 ",".join(map(str, prompt)), "--tokens", str(new), "--top-k",
                                 "1", "--print-ids"]).split()]
