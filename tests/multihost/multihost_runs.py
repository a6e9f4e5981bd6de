"""Ranks on separate hosts (network namespaces, tests/multihost/hosts.py), each check a ctest
case (label multihost). Exit 77 (skip) with the reason where namespaces cannot be made.

  equivalence   2 hosts x 2 ranks (tp 2 inside a host, ZeRO 3) train bitwise like 4 ranks on
                one host (the same rank order, so the same rings); 3 hosts x 1 rank (ZeRO 2)
                like 3 local ranks: losses, grad norms and exported weights.
  link_down     host 1's link goes down mid-training: within comm_timeout_s + 10 s the job
                has exited non-zero and no process of it is left on any host, and a rank named
                the collective, its group and the peer it waited on (the watchdog line).
  silent_drop   the same when host 1's frames are dropped silently (its port leaves the bridge;
                the link stays up, nothing errors: only the watchdog can tell).
  host_killed   every process of host 1 is SIGKILLed: the job ends within 10 s, nothing left.
  save_cut      host 1 is cut while a checkpoint is being saved (its rank 2 stopped half-way
                through its pieces of step 4): the job ends as above; the previous checkpoint
                (step 2) is what `latest` names and inspects clean; `--resume auto` on the
                surviving host alone (2 ranks, tp 1 ZeRO 1 instead of tp 2 ZeRO 3) continues from
                it, steps 3-10 matching an uninterrupted 4-rank run to 1e-5 in the loss (fp32;
                only summation orders differ between layouts, as checkpoint.cross_layout).
Each fault run uses comm_timeout_s 3 and Open MPI's out-of-band keepalive at 3 s + 2 x 1 s, later than the watchdog (the
daemons' connections; README "Running on a cluster"), and prints its measured time to exit.
"""
import argparse
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
import train_runs as tr  # noqa: E402
from hosts import Hosts, wait_gone  # noqa: E402

TIMEOUT_S = 3  # parallel.comm_timeout_s of the fault runs


def same_run(a, b):
    (la, wa, _), (lb, wb, _) = a, b
    return (len(la) == len(lb) == 10 and [x["loss"] for x in la] == [x["loss"] for x in lb] and
            [x["grad_norm"] for x in la] == [x["grad_norm"] for x in lb] and wa == wb)


def equivalence(env, hosts):
    failures = []
    for per_host, sets in (([2, 2], ["parallel.tp=2", "parallel.zero_stage=3"]),
                           ([1, 1, 1], ["parallel.zero_stage=2"])):
        np_ = sum(per_host)
        local = env.run(np_, sets)
        remote = env.run(np_, sets, launch=lambda n, cmd: hosts.mpirun_command(per_host, cmd))
        ok = same_run(local, remote)
        print(f"{len(per_host)} hosts x {per_host[0]} ranks {' '.join(sets)}: bitwise equal to "
              f"{np_} local ranks: {ok} (losses {[round(x['loss'], 4) for x in remote[0]]})")
        if not ok:
            failures.append(f"{per_host} {sets}: differs from {np_} local ranks")
    return failures


class Job:
    """A training run across the hosts, its stderr collected as it comes."""

    def __init__(self, env, hosts, per_host, sets, extra=()):
        self.metrics = os.path.join(env.tmp, f"job{time.monotonic_ns()}.jsonl")
        cmd = [env.shardtrain, "train", "--config", env.config, "--metrics", self.metrics]
        for s in sets:
            cmd += ["--set", s]
        self.p = subprocess.Popen(hosts.mpirun_command(per_host, cmd + list(extra)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.err = []
        self.reader = threading.Thread(target=lambda: self.err.extend(self.p.stderr), daemon=True)
        self.reader.start()

    def steps(self):
        return len(open(self.metrics).read().splitlines()) if os.path.exists(self.metrics) else 0

    def wait_for(self, cond, seconds, what):
        deadline = time.monotonic() + seconds
        while not cond():
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.p.kill()
                sys.exit(f"FAIL: {what} did not happen (exit {self.p.poll()}):\n{''.join(self.err)}")
            time.sleep(0.05)

    def end(self, seconds):
        """Seconds until the job ended (None: still running after `seconds`, then killed)."""
        t0 = time.monotonic()
        try:
            self.p.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return None
        self.reader.join(timeout=5)
        return time.monotonic() - t0


def fault_run(env, hosts, fault, bound, watchdog, extra_sets=(), extra=(), started=None):
    """Trains on 2 hosts x 2 ranks, applies `fault` to host 1 once `started` holds (default: two
    steps done), and checks the job's end. Returns (failures, the job)."""
    failures = []
    sets = ["train.steps=100000", f"parallel.comm_timeout_s={TIMEOUT_S}", "parallel.tp=2",
            "parallel.zero_stage=3", "train.log_every=1000"] + list(extra_sets)
    job = Job(env, hosts, [2, 2], sets, extra)
    job.wait_for(started or (lambda: job.steps() >= 2), 120, "training start")
    t0 = time.monotonic()
    getattr(hosts, fault)(1)
    took = job.end(bound + 30)
    # Nothing of the job may outlive the bound either: ranks and Open MPI's daemons, any host.
    left = wait_gone(hosts, max(0.5, t0 + bound - time.monotonic()))
    gone = time.monotonic() - t0
    lines = [x.strip() for x in job.err if "comm_timeout_s:" in x]
    print(f"{fault}: job exit {job.p.returncode} after {'>' if took is None else ''}"
          f"{took or bound + 30:.1f} s, every process gone after {gone:.1f} s (bound {bound} s); "
          f"watchdog lines: {lines}; processes left: {left or 'none'}")
    if took is None or took > bound:
        failures.append(f"{fault}: the job took {'more than ' if took is None else ''}"
                        f"{took or bound + 30:.1f} s to end (bound {bound} s)")
    if job.p.returncode == 0:
        failures.append(f"{fault}: the job exited 0")
    named = re.compile(r"comm_timeout_s: \w+ in the group of world ranks \{[\d,]+\} made no "
                       r"progress for [\d.]+ s, waiting (to receive from|to send to|on) rank")
    if watchdog and not any(named.search(x) for x in lines):
        failures.append(f"{fault}: no watchdog line naming the collective, group and peer")
    if left:
        failures.append(f"{fault}: processes left running: {left}")
    return failures, job


def resume_on_survivor(env, hosts, root):
    failures = []
    latest = open(os.path.join(root, "latest")).read().strip()
    ins = subprocess.run([env.shardtrain, "inspect", os.path.join(root, latest)],
                         capture_output=True, text=True)
    print(f"after the cut: latest = {latest}, inspect exit {ins.returncode}")
    if latest != "step_00000002" or ins.returncode != 0:
        failures.append(f"latest is {latest} (inspect exit {ins.returncode}), expected step 2")
    # The uninterrupted run (4 local ranks, the saving layout) against host 0 alone, resumed in
    # another layout with the same global batch (dp 2 x micro-batch 4 = 8 sequences per step).
    base = ["optimizer.eps=1e-5"]
    want, _, _ = env.run(4, base + ["parallel.tp=2", "parallel.zero_stage=3"])
    got, _, _ = env.run(2, base + ["parallel.zero_stage=1", f"checkpoint.dir={root}",
                                   "checkpoint.every=100"], extra=["--resume", "auto"],
                        launch=lambda n, cmd: hosts.mpirun_command([2, 0], cmd))
    steps = [x["step"] for x in got]
    worst = max((tr.rel(g["loss"], w["loss"]) for g, w in zip(got, want[2:])), default=1)
    print(f"resumed on host 0 alone (tp 1 ZeRO 1): steps {steps}; worst loss difference vs the "
          f"uninterrupted run {worst:.1e} (bound 1e-5)")
    if steps != list(range(3, 11)) or worst > 1e-5:
        failures.append(f"resume on the surviving host: steps {steps}, loss difference {worst:.1e}")
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--check", required=True,
                    choices=["equivalence", "link_down", "silent_drop", "host_killed", "save_cut"])
    a = ap.parse_args()
    why = Hosts.unavailable()
    if why:
        print(f"SKIP: {why}")
        sys.exit(77)
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp, Hosts(3 if a.check == "equivalence" else 2) as hosts:
        env = tr.Env(a.shardtrain, tmp)
        if a.check == "equivalence":
            failures = equivalence(env, hosts)
        elif a.check == "link_down":
            failures, _ = fault_run(env, hosts, "cut", TIMEOUT_S + 10, True)
        elif a.check == "silent_drop":
            failures, _ = fault_run(env, hosts, "drop", TIMEOUT_S + 10, True)
        elif a.check == "host_killed":
            failures, _ = fault_run(env, hosts, "kill", 10, False)
        else:
            root = os.path.join(tmp, "ckpt")
            holder = {}
            started = lambda: any("injected stall" in x for x in holder["job"].err)  # noqa: E731
            # fault_run builds the job; `started` reads it through holder once it exists.
            orig = Job.__init__

            def init(self, *args, **kw):
                orig(self, *args, **kw)
                holder["job"] = self
            Job.__init__ = init
            failures, _ = fault_run(env, hosts, "cut", TIMEOUT_S + 10, True,
                                    ["train.steps=10", f"checkpoint.dir={root}",
                                     "checkpoint.every=2", "optimizer.eps=1e-5"],
                                    ["--inject-save-fault", "4", "--fault-rank", "2",
                                     "--fault-point", "mid_piece", "--fault-stall"], started)
            failures += resume_on_survivor(env, hosts, root)
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
