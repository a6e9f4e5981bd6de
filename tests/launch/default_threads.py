#!/usr/bin/env python3
"""train's default thread count under real launcher bindings (runtime/cpu_affinity.h): each
rank runs the CPUs it is bound to, divided among the ranks of its node bound to the same set.

  mpirun -np 1 --bind-to hwthread            1 thread (counting the node's CPUs gave them all,
                                             every one on that single CPU)
  mpirun -np 2 --bind-to none                this process's CPUs / 2 each
  taskset -c C mpirun -np 2 --bind-to none   1 each, both ranks on CPU C
  train.threads 3 under --bind-to hwthread   3: the config wins
Each rank's debug line says its threads, its CPUs and how many local ranks share them.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
import train_runs as tr  # noqa: E402

LINE = re.compile(r"threads: (\d+)( \(train.threads\))?; this rank may run on (\d+) CPUs, "
                  r"bound like (\d+) rank")


def run(shardtrain, config, np, bind, prefix=(), threads=0):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = list(prefix) + ["mpirun", "--oversubscribe", "-np", str(np), "--bind-to", bind,
                          shardtrain, "--log-level", "debug", "--log-all-ranks", "train",
                          "--config", config, "--set", f"train.threads={threads}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    found = [tuple(int(g) if g and g[0].isdigit() else bool(g) for g in m.groups())
             for m in LINE.finditer(p.stdout + p.stderr)]
    return p.returncode, sorted(found), " ".join(cmd[-12:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    args = ap.parse_args()
    mine = sorted(os.sched_getaffinity(0))
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        shard = os.path.join(tmp, "train.bin")
        vocab = tr.write_synthetic_shard(shard)
        config = os.path.join(tmp, "cfg.pbtxt")
        with open(config, "w") as f:
            f.write(tr.CONFIG.format(vocab=vocab, train=shard, arch="").replace("steps: 10",
                                                                                "steps: 1"))
        # (threads, from the config, CPUs, sharers) per rank
        cases = [
            ("np 1 bound to one hardware thread", dict(np=1, bind="hwthread"),
             [(1, False, 1, 1)]),
            ("np 2 unbound", dict(np=2, bind="none"),
             [(max(1, len(mine) // 2), False, len(mine), 2)] * 2),
            (f"np 2 unbound inside taskset -c {mine[0]}",
             dict(np=2, bind="none", prefix=("taskset", "-c", str(mine[0]))),
             [(1, False, 1, 2)] * 2),
            ("train.threads=3 wins", dict(np=1, bind="hwthread", threads=3), [(3, True, 1, 1)]),
        ]
        for name, kw, want in cases:
            rc, got, cmd = run(args.shardtrain, config, **kw)
            print(f"{name}: exit {rc}, (threads, from config, CPUs, sharers) per rank {got}")
            if rc != 0 or got != want:
                failures.append(f"{name} ({cmd}): exit {rc}, got {got}, want {want}")
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
