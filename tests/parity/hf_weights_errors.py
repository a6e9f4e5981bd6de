"""Weights files in Hugging Face GPT-2 layout: what `model.init_from` accepts and refuses.

shardtrain exports a model's initial weights, then this test writes variants of that file and
starts from each with `export --config ... --set model.init_from=FILE`:
accepted — the same file; GPT2LMHeadModel's names ("transformer." prefix, a tied
"lm_head.weight", the old 4-D "attn.bias" mask buffers) — and refused with one line naming
the file and tensor — a missing tensor, an extra one, a mis-shaped one, a truncated file.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

CONFIG = "model { n_layer: 1 n_head: 2 d_model: 16 vocab_size: 50 seq_len: 8 }" + chr(10)


def read(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    meta = header.pop("__metadata__", {})
    return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}, meta


def write(path, tensors, meta=None):
    header, body, off = {}, b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        body += raw
        off += len(raw)
    if meta:
        header["__metadata__"] = meta
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    a = ap.parse_args()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "c.pbtxt")
        open(cfg, "w").write(CONFIG)
        good = os.path.join(tmp, "good.safetensors")
        subprocess.run([a.shardtrain, "export", "--config", cfg, "--out", good], check=True,
                       env=env, capture_output=True)
        tensors, meta = read(good)

        def load(name, variant):
            path = os.path.join(tmp, name + ".safetensors")
            if isinstance(variant, bytes):
                open(path, "wb").write(variant)
            else:
                write(path, variant)
            p = subprocess.run([a.shardtrain, "export", "--config", cfg, "--set",
                                f"model.init_from={path}", "--out", os.path.join(tmp, "o.st")],
                               env=env, capture_output=True, text=True)
            return p.returncode, (p.stderr.strip().splitlines() or [""])[-1], path

        hf = {"transformer." + k: v for k, v in tensors.items()}
        hf["lm_head.weight"] = tensors["wte.weight"]
        hf["transformer.h.0.attn.bias"] = ("F32", [1, 1, 8, 8], b"\0" * 256)
        missing = dict(tensors)
        del missing["h.0.mlp.c_fc.bias"]
        extra = dict(tensors)
        extra["h.7.ln_1.weight"] = tensors["h.0.ln_1.weight"]
        shaped = dict(tensors)
        shaped["wpe.weight"] = ("F32", [4, 32], tensors["wpe.weight"][2])
        cases = [
            ("same", dict(tensors), 0, ""),
            ("hf_lmhead_names", hf, 0, ""),
            ("missing", missing, 2, "tensor 'h.0.mlp.c_fc.bias' is missing"),
            ("extra", extra, 2, "unexpected tensor 'h.7.ln_1.weight'"),
            ("misshaped", shaped, 2, "tensor 'wpe.weight' has shape [4, 32], the config needs [8, 16]"),
            ("truncated", open(good, "rb").read()[:-10], 2, "data_offsets point outside the file"),
        ]
        for name, variant, code, expect in cases:
            rc, line, path = load(name, variant)
            ok = rc == code and expect in line and (code == 0 or path in line)
            print(f"{name}: exit {rc}: {line}")
            if not ok:
                failures.append(f"{name}: expected exit {code} and '{expect}'")
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
