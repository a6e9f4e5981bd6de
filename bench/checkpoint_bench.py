"""Checkpoint save and load throughput for >= 1 GB of state, against the disk, in one run.

A GPT of 110M parameters (d 1024, 6 layers, vocab 32768) holds 1.3 GB of checkpoint state
(fp32 master weights and both AdamW moments). It trains one step on 2 ranks (ZeRO-2) and saves;
then resumes from that checkpoint (on 2 ranks, and on 1 rank with another layout). The save
and load times come from shardtrain's own log lines. The disk's sequential write speed is
measured just before: 1 GiB written in 64 MiB blocks and fsynced, in the same directory.

  /usr/bin/python3 bench/checkpoint_bench.py --shardtrain build/bin/shardtrain [--dir DIR]
"""
import argparse
import os
import re
import struct
import subprocess
import tempfile
import time

CONFIG = """
model { n_layer: 6 n_head: 16 d_model: 1024 vocab_size: 32768 seq_len: 64 }
parallel { zero_stage: 2 }
data { train: "SHARD" micro_batch: 1 }
train { steps: 1 seed: 1 log_every: 1 threads: 1 }
checkpoint { dir: "ROOT" keep: 1 }
"""


def disk_write_speed(directory, total=1 << 30, block=64 << 20):
    path = os.path.join(directory, "disk_probe.bin")
    buf = os.urandom(block)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for _ in range(total // block):
        os.write(fd, buf)
    os.fsync(fd)
    os.close(fd)
    dt = time.perf_counter() - t
    os.remove(path)
    return total / dt / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary dir)")
    a = ap.parse_args()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        shard = os.path.join(tmp, "t.bin")
        toks = list(range(1000))
        with open(shard, "wb") as f:
            h = b"STTOKENS" + struct.pack("<IIQQ", 1, 2, 32768, len(toks))
            f.write(h + b"\0" * (64 - len(h)) + struct.pack(f"<{len(toks)}H", *toks))
        cfg = os.path.join(tmp, "c.pbtxt")
        root = os.path.join(tmp, "ckpt")
        with open(cfg, "w") as f:
            f.write(CONFIG.replace("SHARD", shard).replace("ROOT", root))
        disk = disk_write_speed(tmp)
        mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe"]
        out = subprocess.run(mpirun + ["-np", "2", a.shardtrain, "train", "--config", cfg],
                             capture_output=True, text=True, env=env, check=True).stdout
        m = re.search(r"saved checkpoint \S+: ([\d.e+-]+) GB in ([\d.e+-]+) s", out)
        gb, save_s = float(m.group(1)), float(m.group(2))
        print(f"disk sequential write (1 GiB, fsync): {disk:.2f} GB/s")
        print(f"save  {gb:.2f} GB on 2 ranks: {save_s:.2f} s = {gb / save_s:.2f} GB/s "
              f"({gb / save_s / disk:.2f}x the disk)")
        ck = os.path.join(root, open(os.path.join(root, "latest")).read().strip())
        for np_, sets in ((2, []), (1, ["--set", "parallel.zero_stage=0"])):
            # steps = 1 is already done: the run loads the checkpoint and stops.
            out = subprocess.run(mpirun + ["-np", str(np_), a.shardtrain, "train", "--config", cfg,
                                           "--resume", ck] + sets,
                                 capture_output=True, text=True, env=env, check=True).stdout
            load_s = float(re.search(r"loaded in ([\d.e+-]+) s", out).group(1))
            layout = "same layout" if np_ == 2 else "1 rank, ZeRO-0"
            print(f"load  {gb:.2f} GB on {np_} rank(s) ({layout}): {load_s:.2f} s = "
                  f"{gb / load_s:.2f} GB/s")


if __name__ == "__main__":
    main()
