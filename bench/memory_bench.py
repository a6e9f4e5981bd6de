"""Cost of recording the memory timeline, two ways.

1. Per event (precise): bench/allocator_bench times the allocator's bookkeeping per allocation
   or release with the timeline on and off; times the events per step of a real ZeRO-3 run
   (from its memory report), over that run's step time, gives the overhead per step. This is
   the figure to quote: it does not depend on the machine being quiet.
2. End to end (noisy): step time with the timeline on (the default) vs off (hidden flag
   --no-memory-timeline; counters and peaks are kept either way), and with --memory-report.
   On a shared machine run-to-run noise is far larger than the effect; the spread is printed.

ZeRO stage 3 is measured because it allocates the most per step (gathered units, full-size
gradient buffers, reduce shards: about 6 events per unit per step); stage 0 allocates nothing
per step. Runs alternate on/off so that drift of a shared machine hits both; each run's step
time is the median after warm-up, and the overhead is the difference of the medians of the
runs.

  /usr/bin/python3 bench/memory_bench.py --shardtrain build/bin/shardtrain
  (bench/allocator_bench is looked for next to shardtrain)
"""
import argparse
import json
import os
import random
import statistics
import struct
import subprocess
import tempfile

# The DP/ZeRO benchmark's model (bench/dp_bench.py): big enough for tens of ms per step.
C, L, H, T, V = 256, 4, 4, 128, 4096

CONFIG = f"""
model {{ n_layer: {L} n_head: {H} d_model: {C} vocab_size: {V} seq_len: {T} }}
parallel {{ zero_stage: 3 }}
optimizer {{ lr: 3e-4 }}
data {{ train: "{{shard}}" micro_batch: 4 }}
train {{ steps: {{steps}} seed: 1 log_every: 1000 threads: 1 }}
"""


def write_shard(path, n, vocab):
    rng = random.Random(1)
    header = b"STTOKENS" + struct.pack("<IIQQ", 1, 2, vocab, n)
    with open(path, "wb") as f:
        f.write(header + b"\0" * (64 - len(header)))
        f.write(struct.pack(f"<{n}H", *(rng.randrange(vocab) for _ in range(n))))


def run(exe, tmp, np, extra, warmup):
    metrics = os.path.join(tmp, "m.jsonl")
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np), exe, "train",
           "--config", os.path.join(tmp, "c.pbtxt"), "--metrics", metrics] + extra
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    lines = [json.loads(l) for l in open(metrics)][warmup:]
    return statistics.median(l["step_ms"] for l in lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    with tempfile.TemporaryDirectory() as tmp:
        shard = os.path.join(tmp, "train.bin")
        write_shard(shard, 200000, V)
        with open(os.path.join(tmp, "c.pbtxt"), "w") as f:
            f.write(CONFIG.replace("{shard}", shard).replace("{steps}", str(a.steps)))
        report = os.path.join(tmp, "report")
        variants = {"timeline off": ["--no-memory-timeline"], "timeline on": [],
                    "timeline on + --memory-report": ["--memory-report", report]}
        times = {k: [] for k in variants}
        for _ in range(a.repeats):
            for name, extra in variants.items():
                times[name].append(run(a.shardtrain, tmp, a.np, extra, a.warmup))
        r0 = json.load(open(os.path.join(report, "memory_report.json")))["ranks"][0]
        phases = r0["phases"]
        steps = sum(1 for m in r0["phase_marks"] if phases[m[1]] == "forward_backward")
        events = r0["num_events"] - len(r0["phase_marks"])
    per_event = json.loads(subprocess.run(
        [os.path.join(os.path.dirname(a.shardtrain), "allocator_bench")], check=True,
        capture_output=True, text=True).stdout)
    base = statistics.median(times["timeline off"])
    print(f"ZeRO-3, np={a.np}, L={L} C={C} T={T} V={V}, {a.steps} steps ({a.warmup} warm-up), "
          f"{a.repeats} alternating runs per variant")
    print(f"allocation events per rank: {events} over {steps} steps "
          f"(~{events / max(steps, 1):.0f} per step, set-up included)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:32s} median step {med:8.2f} ms  (runs: "
              f"{', '.join(f'{t:.1f}' for t in ts)})  vs off: {100 * (med - base) / base:+.2f}%")
    spread = (max(times["timeline off"]) - min(times["timeline off"])) / base
    print(f"  run-to-run spread of the 'off' medians: {100 * spread:.1f}% (the noise floor of 2.)")
    per_step = events / max(steps, 1)
    cost = per_event["ns_per_event_timeline_cost"]
    whole = per_event["ns_per_event_timeline_on"]
    print(f"1. per event: bookkeeping {per_event['ns_per_event_timeline_off']:.1f} ns without the "
          f"timeline, {whole:.1f} ns with it (timeline {cost:.1f} ns)")
    print(f"   timeline overhead per step: {per_step:.0f} events x {cost:.1f} ns = "
          f"{per_step * cost / 1e3:.2f} us = {100 * per_step * cost * 1e-6 / base:.5f}% of a "
          f"{base:.1f} ms step (all bookkeeping: {100 * per_step * whole * 1e-6 / base:.5f}%)")


if __name__ == "__main__":
    main()
