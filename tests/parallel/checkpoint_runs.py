"""Checkpoint checks under mpirun, each a ctest case (tests/parallel/train_runs.py drives runs).

  resume_exact   10 steps straight vs 5 + save + resume for 5, same layout (np=2, ZeRO-2; fp32
                 and fp16 with its loss scaler): bitwise-identical losses for steps 6-10; a
                 checkpoint that does not fit the config's shapes is refused; the fp32 one
                 resumes under parallel.recompute FULL / SELECTIVE, and one saved under FULL
                 without recomputation, bitwise alike (recomputation is not state).
  --arch llama   runs a check on the Llama form of the test model.
  cross_layout   save at np=4 (tp=2, ZeRO-3) at step 5; resume at np=2 ZeRO-1 and at np=1
                 ZeRO-0, directly and after `reshard`: steps 6-10 equal the np=4 run's to 1e-5
                 relative in fp32 (only summation orders differ, ~1e-7); the resharded
                 checkpoint resumes bitwise like the original. bf16 (saved at np=4 tp=2 ZeRO-3)
                 resumes at np=2 ZeRO-1 and np=1 ZeRO-0 within 1e-3 (16-bit activations round
                 differently per layout).
  save_fault     a rank killed at one point of step 4's save (--rank, --point: each rank's
                 pieces half-written or fsynced, rank 0 before / after the manifest, the
                 directory rename and the `latest` update): the disk holds what that point
                 leaves, `latest` inspects clean, and `--resume auto` continues from it
                 bitwise like an uninterrupted run.
  resave_fault   the same for a re-save of the step `latest` names (a run resumed from an
                 older checkpoint into the same root), killed just before / after the
                 directory swap: that step stays complete at every instant.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_runs as tr  # noqa: E402


def losses(lines, first):
    return [l["loss"] for l in lines if l["step"] >= first]


def scaler_state(env, ckpt):
    """The loss-scaler line of `shardtrain inspect`: scale, clean steps, overflows."""
    out = subprocess.run([env.shardtrain, "inspect", ckpt], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"loss scale (\S+) \(clean steps (\d+), overflows (\d+)\)", out)
    return m.groups() if m else None


def resume_exact(env, tmp):
    failures = []
    for compute in ("F32", "F16"):
        root = os.path.join(tmp, f"ck_{compute}")
        # fp16: growth every 3 clean steps, so the scale doubles at steps 3, 6, 9 and the saved
        # growth counter (2 at step 5) decides when the resumed run doubles. A power-of-two
        # scale cancels exactly, so the losses alone would not see a broken restore.
        sets = ["parallel.zero_stage=2", f"precision.compute={compute}", f"checkpoint.dir={root}",
                "checkpoint.every=5", "precision.loss_scale.growth_interval=3"]
        straight, _, _ = env.run(2, sets)
        resumed, _, _ = env.run(2, sets + [f"checkpoint.dir={root}_2"],
                                ["--resume", os.path.join(root, "step_00000005")])
        same = losses(straight, 6) == losses(resumed, 6)
        scales = [l["loss_scale"] for l in straight if l["step"] >= 6]
        same_scales = scales == [l["loss_scale"] for l in resumed]
        saved = scaler_state(env, os.path.join(root, "step_00000005"))
        final = (scaler_state(env, os.path.join(root, "step_00000010")),
                 scaler_state(env, os.path.join(f"{root}_2", "step_00000010")))
        print(f"{compute}: steps 6-10 straight {losses(straight, 6)}\n"
              f"     resumed {losses(resumed, 6)}: bitwise equal {same}; loss scales straight "
              f"{scales}, resumed {[l['loss_scale'] for l in resumed]}; scaler saved at step 5 "
              f"{saved}, at step 10 straight {final[0]}, resumed {final[1]}")
        if not same or [l["step"] for l in resumed] != [6, 7, 8, 9, 10]:
            failures.append(f"{compute}: resumed run differs from the straight run")
        if not same_scales or final[0] != final[1] or final[0] is None:
            failures.append(f"{compute}: the resumed loss scaler differs from the straight run's")
        if compute == "F16" and (saved != ("131072", "2", "0") or scales[0] == scales[-1]):
            # Hand count: 65536 doubled once after steps 1-3; steps 4-5 clean.
            failures.append(f"F16: step 5 saved scaler {saved}, expected 131072 with 2 clean "
                            "steps, and the scale must grow during steps 6-10")
    # Recomputation is not state: the fp32 checkpoint resumes under FULL and SELECTIVE, and one
    # saved under FULL resumes without recomputation, bitwise like the straight run.
    root = os.path.join(tmp, "ck_none")
    sets = ["parallel.zero_stage=2", "precision.compute=F32", "checkpoint.every=5"]
    straight, _, _ = env.run(2, sets + [f"checkpoint.dir={root}"])
    full_root = os.path.join(tmp, "ck_full")
    env.run(2, sets + [f"checkpoint.dir={full_root}", "parallel.recompute=FULL"])
    for name, ckpt, mode in (("NONE -> FULL", root, "FULL"), ("NONE -> SELECTIVE", root, "SELECTIVE"),
                             ("FULL -> NONE", full_root, "NONE")):
        resumed, _, _ = env.run(2, sets + [f"checkpoint.dir={tmp}/ck_{mode}_resumed",
                                           f"parallel.recompute={mode}"],
                                ["--resume", os.path.join(ckpt, "step_00000005")])
        same = losses(straight, 6) == losses(resumed, 6) and len(resumed) == 5
        print(f"recompute {name}: steps 6-10 bitwise equal to the straight run: {same}")
        if not same:
            failures.append(f"recompute {name}: the resumed run differs from the straight run")
    # A checkpoint whose tensors disagree with the config is refused, naming file and tensor.
    _, _, p = env.run(2, ["model.d_model=32", f"checkpoint.dir={root}_3"],
                      ["--resume", os.path.join(root, "step_00000005")], check=False)
    print("resume with another d_model:", p.returncode, p.stderr.strip().splitlines()[:1])
    if p.returncode != 2 or "has shape" not in p.stderr or "manifest.pb" not in p.stderr:
        failures.append("a checkpoint of another shape must be refused with exit 2")
    return failures


def cross_layout(env, tmp, save_tp=2):
    """save_tp: the tp of the saving run (4 with --arch llama's kv_layout: n_kv_head 2 < tp, each
    K/V head replicated on 2 ranks, saved once)."""
    failures = []
    # bf16: the state is identical at resume; only the rounding of 16-bit activations differs
    # between layouts (2^-9 relative per value, averaging down over a loss of 4096 tokens:
    # measured 6e-5), so 1e-3 still catches a mis-loaded tensor, which moves the loss by >1%.
    for compute, tol in (("F32", 1e-5), ("BF16", 1e-3)):
        root = os.path.join(tmp, f"x_{compute}")
        base = [f"precision.compute={compute}", "checkpoint.every=5"]
        # 16 sequences per step in every layout: micro-batch 16 over the 4 / tp data ranks.
        saved, _, _ = env.run(4, base + [f"parallel.tp={save_tp}", "parallel.zero_stage=3",
                                         f"data.micro_batch={16 * save_tp // 4}",
                                         f"checkpoint.dir={root}"])
        ckpt = os.path.join(root, "step_00000005")
        want = losses(saved, 6)
        layouts = [(2, ["parallel.zero_stage=1", "data.micro_batch=8"]),
                   (1, ["parallel.zero_stage=0", "data.micro_batch=16"])]
        for np_, sets in layouts:
            got, _, _ = env.run(np_, base + sets + [f"checkpoint.dir={root}_np{np_}"],
                                ["--resume", ckpt])
            worst = max(tr.rel(g, w) for g, w in zip(losses(got, 6), want))
            print(f"{compute}: np=4 tp={save_tp} ZeRO-3 -> np={np_} {sets[0]}: worst rel diff "
                  f"{worst:.2e}")
            if worst > tol or len(got) != 5:
                failures.append(f"{compute} resume at np={np_} differs by {worst:.2e} > {tol}")
        # Offline reshard for np=2 ZeRO-1, then resume: the same as resuming the original.
        out = os.path.join(tmp, f"resharded_{compute}")
        subprocess.run([env.shardtrain, "reshard", "--in", ckpt, "--out", out, "--world", "2",
                        "--set", "parallel.tp=1", "--set", "parallel.zero_stage=1"], check=True)
        direct, _, _ = env.run(2, base + layouts[0][1] + [f"checkpoint.dir={root}_d"],
                               ["--resume", ckpt])
        via, _, _ = env.run(2, base + layouts[0][1] + [f"checkpoint.dir={root}_r"],
                            ["--resume", out])
        same = losses(direct, 6) == losses(via, 6)
        print(f"{compute}: resume after reshard bitwise equal to direct resume: {same}")
        if not same:
            failures.append(f"{compute}: resharded checkpoint resumes differently")
    return failures


# Where a crash during the step-4 save can happen (parallel/checkpoint.h, SaveFault::Point),
# in commit order, and what must be on disk afterwards: STEP.tmp, the complete STEP, and the
# checkpoint `latest` names. Before the rename the save is invisible; after it the new
# directory is complete but only `latest` makes it the one `--resume auto` takes.
SAVE_FAULT_POINTS = {
    "mid_piece": dict(tmp=True, manifest=False, final=False, latest="step_00000002"),
    "after_fsync": dict(tmp=True, manifest=False, final=False, latest="step_00000002"),
    "before_manifest": dict(tmp=True, manifest=False, final=False, latest="step_00000002"),
    "after_manifest": dict(tmp=True, manifest=True, final=False, latest="step_00000002"),
    "before_rename": dict(tmp=True, manifest=True, final=False, latest="step_00000002"),
    "after_rename": dict(tmp=False, manifest=None, final=True, latest="step_00000002"),
    "before_latest": dict(tmp=False, manifest=None, final=True, latest="step_00000002"),
    "after_latest": dict(tmp=False, manifest=None, final=True, latest="step_00000004"),
}


def save_fault(env, tmp, rank, point):
    """Rank `rank` dies at `point` of step 4's save (checkpoint.every 2, np 2, ZeRO 2): the
    job ends non-zero, the disk holds what SAVE_FAULT_POINTS says (so the crash happened where
    intended), whatever `latest` names inspects clean, and `--resume auto` continues from it
    bitwise like an uninterrupted run."""
    failures = []
    want = SAVE_FAULT_POINTS[point]
    root = os.path.join(tmp, "fault")
    sets = ["parallel.zero_stage=2", f"checkpoint.dir={root}", "checkpoint.every=2"]
    straight, _, _ = env.run(2, sets + [f"checkpoint.dir={tmp}/straight"])
    _, _, p = env.run(2, sets, ["--inject-save-fault", "4", "--fault-rank", str(rank),
                                "--fault-point", point], check=False)
    died = f"[rank {rank}] injected death during checkpoint save ({point})" in p.stderr
    entries = sorted(os.listdir(root))
    latest = open(os.path.join(root, "latest")).read().strip()
    tmp_dir, final = os.path.join(root, "step_00000004.tmp"), os.path.join(root, "step_00000004")
    got = dict(tmp=os.path.isdir(tmp_dir),
               manifest=os.path.exists(os.path.join(tmp_dir, "manifest.pb"))
               if os.path.isdir(tmp_dir) else None,
               final=os.path.isdir(final), latest=latest)
    print(f"rank {rank} killed at {point}: exit {p.returncode}, died there: {died}; entries "
          f"{entries}; state {got}")
    if p.returncode == 0 or not died:
        failures.append(f"the run must die at {point} on rank {rank}")
    if got != want:
        failures.append(f"after a crash at {point}: {got}, expected {want}")
    for ckpt in [latest] + (["step_00000004"] if got["final"] else []):
        ins = subprocess.run([env.shardtrain, "inspect", os.path.join(root, ckpt)],
                             capture_output=True, text=True)
        if ins.returncode != 0 or "every checksum verified" not in ins.stdout:
            failures.append(f"{ckpt} must inspect clean: {ins.stderr.strip()}")
    # --resume auto reads checkpoint.dir: the crashed run's root.
    resumed, _, r = env.run(2, sets, ["--resume", "auto"], check=False)
    first = int(latest[5:]) + 1
    same = losses(resumed, first) == losses(straight, first)
    print(f"resume auto from {latest}: exit {r.returncode}, steps {[l['step'] for l in resumed]}, "
          f"losses bitwise equal to the uninterrupted run's: {same}")
    if r.returncode != 0 or [l["step"] for l in resumed] != list(range(first, 11)) or not same:
        failures.append(f"resume auto must continue from step {first} like the uninterrupted run")
    return failures


def resave_fault(env, tmp, point):
    """A re-save of the step `latest` names: a run saves at 2 and 4 (latest -> step 4), then
    a run resumed from step 2 into the same root dies at `point` of its own step-4 save. The
    old step 4 is replaced atomically, so step 4 is complete at every instant: it inspects
    clean and `--resume auto` continues from it bitwise like an uninterrupted run."""
    failures = []
    root = os.path.join(tmp, "resave")
    sets = ["parallel.zero_stage=2", f"checkpoint.dir={root}", "checkpoint.every=2",
            "checkpoint.keep=5"]
    straight, _, _ = env.run(2, sets + [f"checkpoint.dir={tmp}/straight"])
    # The first run stops at step 5 (an injected failure) with step 4 saved: the schedule is
    # the 10-step one throughout, so every run here shares one trajectory.
    env.run(2, sets, ["--inject-fault", "5", "--fault-rank", "1"], check=False)
    _, _, p = env.run(2, sets, ["--resume", os.path.join(root, "step_00000002"),
                                "--inject-save-fault", "4", "--fault-rank", "0",
                                "--fault-point", point], check=False)
    died = f"[rank 0] injected death during checkpoint save ({point})" in p.stderr
    latest = open(os.path.join(root, "latest")).read().strip()
    entries = sorted(os.listdir(root))
    print(f"re-save of step 4, rank 0 killed at {point}: exit {p.returncode}, died there: "
          f"{died}; latest -> {latest}; entries {entries}")
    want_tmp = point == "before_rename"
    if p.returncode == 0 or not died or latest != "step_00000004" or \
            ("step_00000004.tmp" in entries) != want_tmp:
        failures.append(f"the re-save must die at {point} with latest -> step 4 and "
                        f"step_00000004.tmp {'present' if want_tmp else 'gone'}")
    ins = subprocess.run([env.shardtrain, "inspect", os.path.join(root, latest)],
                         capture_output=True, text=True)
    if ins.returncode != 0 or "every checksum verified" not in ins.stdout:
        failures.append(f"{latest} must inspect clean: {ins.stderr.strip()}")
    resumed, _, r = env.run(2, sets, ["--resume", "auto"], check=False)
    same = losses(resumed, 5) == losses(straight, 5)
    print(f"resume auto: exit {r.returncode}, steps {[l['step'] for l in resumed]}, bitwise "
          f"equal to the uninterrupted run: {same}")
    if r.returncode != 0 or [l["step"] for l in resumed] != list(range(5, 11)) or not same:
        failures.append("resume auto must continue from step 5 like the uninterrupted run")
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--check", required=True)
    ap.add_argument("--rank", type=int, default=1, help="save_fault: the rank that dies")
    ap.add_argument("--point", default="mid_piece", choices=sorted(SAVE_FAULT_POINTS),
                    help="save_fault: where it dies")
    ap.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2",
                    help="the test model as GPT-2 or as Llama (train_runs.py's LLAMA)")
    a = ap.parse_args()
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    with tempfile.TemporaryDirectory() as tmp:
        env = tr.Env(a.shardtrain, tmp, arch=tr.LLAMA if a.arch == "llama" else "")
        failures = {"resume_exact": resume_exact, "cross_layout": cross_layout,
                    "cross_layout_tp4": lambda e, t: cross_layout(e, t, save_tp=4),
                    "save_fault": lambda e, t: save_fault(e, t, a.rank, a.point),
                    "resave_fault": lambda e, t: resave_fault(e, t, a.point)}[a.check](env, tmp)
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
