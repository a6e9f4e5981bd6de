#!/usr/bin/env python3
"""train's default thread count under real launcher bindings (runtime/cpu_affinity.h): each
rank runs the CPUs it is bound to, divided among the ranks of its node bound to the same set.

  mpirun -np 1 --bind-to hwthread            1 thread (counting the node's CPUs gave them all,
                                             every one on that single CPU)
  mpirun -np 2 --bind-to none                this process's CPUs / 2 each
  taskset -c C mpirun -np 2 --bind-to none   1 each, both ranks on CPU C
  train.threads 3 under --bind-to hwthread   3: the config wins
--case quota: mpirun -np 1 --bind-to none inside a cgroup whose CFS quota is one CPU (made by
the test: cgroup v1's cpu controller, or v2 with cpu enabled) runs 1 thread, not the mask's
count (skipped, 77, where no such cgroup can be made or this process has one CPU).
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
                  r"bound like (\d+) rank.*; CPU quota ([\d.]+) shared by (\d+) rank")


def run(shardtrain, config, np, bind, prefix=(), threads=0):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = list(prefix) + ["mpirun", "--oversubscribe", "-np", str(np), "--bind-to", bind,
                          shardtrain, "--log-level", "debug", "--log-all-ranks", "train",
                          "--config", config, "--set", f"train.threads={threads}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    found = [tuple(float(g) if g and g[0].isdigit() else bool(g) for g in m.groups())
             for m in LINE.finditer(p.stdout + p.stderr)]
    return p.returncode, sorted(found), " ".join(cmd[-12:])


def quota_cgroup(tmp_name):
    """A new cgroup with a CFS quota of one CPU, as (directory, procs file), or a reason."""
    # mountinfo: "... ROOT MOUNT OPTIONS ... - FSTYPE SOURCE SUPEROPTIONS"
    mounts = [ln.split(" - ")[1].split() + ln.split()[4:5] for ln in open("/proc/self/mountinfo")
              if " - " in ln]
    reason = "no cgroup hierarchy with the cpu controller is mounted"
    for fstype, _, opts, mount in mounts:
        try:
            if fstype == "cgroup" and "cpu" in opts.split(","):
                d = os.path.join(mount, tmp_name)
                os.mkdir(d)
                open(os.path.join(d, "cpu.cfs_period_us"), "w").write("100000")
                open(os.path.join(d, "cpu.cfs_quota_us"), "w").write("100000")
                return d, None
            controllers = os.path.join(mount, "cgroup.controllers")
            if fstype == "cgroup2" and "cpu" in open(controllers).read().split():
                open(os.path.join(mount, "cgroup.subtree_control"), "w").write("+cpu")
                d = os.path.join(mount, tmp_name)
                os.mkdir(d)
                open(os.path.join(d, "cpu.max"), "w").write("100000 100000")
                return d, None
        except OSError as e:
            if os.path.isdir(os.path.join(mount, tmp_name)):
                os.rmdir(os.path.join(mount, tmp_name))
            reason = f"cannot make a cgroup with a CPU quota under {mount}: {e}"
    return None, reason


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--case", choices=["bindings", "quota"], default="bindings")
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
        # (threads, from the config, CPUs, sharers, quota CPUs, quota sharers) per rank
        n = len(mine)
        cases = [
            ("np 1 bound to one hardware thread", dict(np=1, bind="hwthread"),
             [(1, False, 1, 1, 0, 1)]),
            ("np 2 unbound", dict(np=2, bind="none"), [(max(1, n // 2), False, n, 2, 0, 1)] * 2),
            (f"np 2 unbound inside taskset -c {mine[0]}",
             dict(np=2, bind="none", prefix=("taskset", "-c", str(mine[0]))),
             [(1, False, 1, 2, 0, 1)] * 2),
            ("train.threads=3 wins", dict(np=1, bind="hwthread", threads=3),
             [(3, True, 1, 1, 0, 1)]),
        ]
        cgroup = None
        if args.case == "quota":
            if n < 2:
                print("this process may run on one CPU: a one-CPU quota cannot lower its count")
                sys.exit(77)
            cgroup, reason = quota_cgroup(f"shardtrain_test_{os.getpid()}")
            if not cgroup:
                print(reason)
                sys.exit(77)
            procs = os.path.join(cgroup, "cgroup.procs")
            cases = [("np 1 unbound in a cgroup with a quota of one CPU",
                      dict(np=1, bind="none", prefix=("sh", "-c", f'echo $$ > {procs} && exec "$@"',
                                                      "sh")),
                      [(1, False, n, 1, 1, 1)])]
        try:
            for name, kw, want in cases:
                rc, got, cmd = run(args.shardtrain, config, **kw)
                print(f"{name}: exit {rc}, (threads, from config, CPUs, sharers, quota, quota "
                      f"sharers) per rank {got}")
                if rc != 0 or got != want:
                    failures.append(f"{name} ({cmd}): exit {rc}, got {got}, want {want}")
        finally:
            if cgroup:
                os.rmdir(cgroup)
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
