"""A malformed token shard under mpirun, each a ctest case (--case NAME):

  truncated   the header counts more tokens than the file holds;
  foreign     a file that is not a token shard at all (a zip's first bytes);
  vocab       the shard's vocabulary is larger than model.vocab_size.

`train` at np 2 must end with exactly one line on stderr, naming the file and the problem, every
rank must exit 2, and nothing may be written: no metrics file, no checkpoint directory, no
exported weights. The ranks' own exit codes are recorded by a wrapper between mpirun and
shardtrain, with Open MPI's abort-on-first-failure off so that no rank is killed before it
exits by itself; --quiet keeps mpirun's own banners out of stderr. A second run without the
wrapper, as a user types it, must exit 2 as well.
"""
import argparse
import os
import struct
import subprocess
import sys
import tempfile

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]
VOCAB = 96

CONFIG = f"""
model {{ n_layer: 1 n_head: 2 d_model: 32 vocab_size: {VOCAB} seq_len: 16 }}
data {{ train: "TRAIN" micro_batch: 2 }}
train {{ steps: 3 seed: 1 threads: 1 }}
"""

# The wrapper: run the command, append "RANK CODE" to the file named by $CODES, pass the code on.
WRAPPER = """#!/bin/sh
"$@"
code=$?
echo "$OMPI_COMM_WORLD_RANK $code" >> "$CODES"
exit $code
"""


def header(vocab, count, width=2):
    h = b"STTOKENS" + struct.pack("<IIQQ", 1, width, vocab, count)
    return h + b"\0" * (64 - len(h))


def make_shard(case, path):
    """Writes the malformed shard; returns the text its error line must contain."""
    with open(path, "wb") as f:
        if case == "truncated":
            f.write(header(VOCAB, 1000) + struct.pack("<500H", *([1] * 500)))
            return "header says 1000 tokens of 2 bytes but the file holds 1000 bytes"
        if case == "foreign":
            f.write(b"PK\3\4" + bytes(range(256)) * 8)
            return "not a token shard"
        if case == "vocab":
            f.write(header(50000, 1000) + struct.pack("<1000H", *([7] * 1000)))
            return "vocab size 50000 exceeds model.vocab_size 96"
    raise ValueError(case)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--case", required=True, choices=["truncated", "foreign", "vocab"])
    a = ap.parse_args()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        shard = os.path.join(tmp, f"{a.case}.bin")
        needle = make_shard(a.case, shard)
        config = os.path.join(tmp, "c.pbtxt")
        with open(config, "w") as f:
            f.write(CONFIG.replace("TRAIN", shard))
        wrapper = os.path.join(tmp, "wrap.sh")
        with open(wrapper, "w") as f:
            f.write(WRAPPER)
        os.chmod(wrapper, 0o755)
        out = os.path.join(tmp, "out")
        train = [a.shardtrain, "train", "--config", config, "--metrics", out + "/m.jsonl",
                 "--export-final", out + "/w.safetensors", "--set", f"checkpoint.dir={out}/ck",
                 "--set", "checkpoint.every=1"]
        codes = os.path.join(tmp, "codes")
        p = subprocess.run(MPIRUN + ["--quiet", "--mca", "orte_abort_on_non_zero_status", "0",
                                     "-np", "2", wrapper] + train,
                           capture_output=True, text=True, timeout=120, env=dict(env, CODES=codes))
        err = p.stderr.splitlines()
        ranks = sorted(open(codes).read().split("\n")[:-1]) if os.path.exists(codes) else []
        print(f"{a.case}: stderr {err}; rank exit codes {ranks}")
        if len(err) != 1 or shard not in err[0] or needle not in err[0] or \
                not err[0].startswith("shardtrain: error: "):
            failures.append(f"expected one line 'shardtrain: error: {shard}: ...{needle}...'")
        if ranks != ["0 2", "1 2"]:
            failures.append(f"every rank must exit 2, got {ranks}")
        if os.path.exists(out):
            failures.append(f"the failed run wrote {sorted(os.listdir(out))} under {out}")
        # As a user runs it: mpirun itself exits 2.
        q = subprocess.run(MPIRUN + ["-np", "2"] + train, capture_output=True, text=True,
                           timeout=120, env=env)
        print(f"plain mpirun: exit {q.returncode}")
        if q.returncode != 2:
            failures.append(f"mpirun exited {q.returncode}, expected 2")
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
