"""Memory planner vs measured memory, and the memory report's HTML page; each a ctest case.

  match  --np N   (--arch llama: the same on the Llama form of the model; --recompute: with
                  parallel.recompute SELECTIVE, FULL and FULL on the first block, each in fp32
                  ZeRO 0, bf16 ZeRO 3 and bf16 tp 2 + sequence parallel ZeRO 2, instead of the
                  layouts below) train a small GPT for 2 steps at ZeRO stages 0-3 in fp32 and bf16 (and bf16
                  with tensor parallelism tp = 2, without and with sequence parallelism) with
                  --memory-report, and compare with `memplan --format json` for the same config
                  and world: model states (params, grads, master_params, optimizer_state) live
                  after the last step must equal memplan's steady bytes EXACTLY on every rank
                  (metrics line of rank 0 and every rank's report), and every rank's peak of
                  every category (model states, activations, comm_buffers, workspace) and its
                  peak total must equal memplan's prediction to the byte. The differences are
                  printed.
  html            one run's DIR/memory_report.html loaded in headless Chromium; from the DOM
                  the browser leaves: <body data-render="ok"> (set by the page's script only
                  when every chart was drawn without an exception; nothing a reader sees), the
                  error list (window.onerror, console.error, unhandled rejections) empty, and
                  the drawn content itself: the summary text, shapes in the timeline chart, a
                  rank option per rank, the comparison table with a row per category and a
                  total;
                  a screenshot is taken (--screenshot PATH, e.g. docs/memory_report.png). Exit
                  77 (ctest: skipped) when no chromium is installed.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
import train_runs as tr  # noqa: E402

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]

# A small GPT like the multi-rank tests' (tests/parallel/train_runs.py), but width 72 so that
# units are not multiples of dp x 16 elements and ZeroEngine's padding is exercised: a block
# has 12*72^2 + 13*72 = 63144 elements (padded to 63168 at np 2 and 4), ln_f 144 (-> 160 at
# np 2, 192 at np 4).
CONFIG = """
model {{ n_layer: 2 n_head: 4 d_model: 72 vocab_size: {vocab} seq_len: 32 {arch} }}
parallel {{ zero_stage: 0 bucket_mb: 0.01 }}
precision {{ compute: F32 }}
optimizer {{ lr: 3e-3 warmup_steps: 2 schedule: COSINE weight_decay: 0.1 grad_clip: 1.0 }}
data {{ train: "{train}" val: "{train}" micro_batch: 4 grad_accum: 1 }}
train {{ steps: 2 seed: 11 log_every: 1 threads: 1 }}
"""
MODEL_STATES = ("params", "grads", "master_params", "optimizer_state")
CATEGORIES = MODEL_STATES + ("activations", "comm_buffers", "workspace")


# --arch llama: the same model as Llama (2 K/V heads for 4, FFN 200: odd unit sizes again).
LLAMA = "arch: LLAMA n_kv_head: 2 ffn_hidden: 200"


def make_config(tmp, arch=""):
    train = os.path.join(tmp, "train.bin")
    vocab = tr.write_synthetic_shard(train)
    path = os.path.join(tmp, "base.pbtxt")
    with open(path, "w") as f:
        f.write(CONFIG.format(vocab=vocab, train=train, arch=arch))
    return path


def run(cmd, timeout=300):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    return p


def train_with_report(exe, config, tmp, np, sets, name):
    out = os.path.join(tmp, name)
    metrics = os.path.join(tmp, name + ".jsonl")
    cmd = MPIRUN + ["-np", str(np), exe, "train", "--config", config, "--metrics", metrics,
                    "--memory-report", out]
    for s in sets:
        cmd += ["--set", s]
    p = run(cmd)
    lines = [json.loads(x) for x in open(metrics)]
    report = json.load(open(os.path.join(out, "memory_report.json")))
    return lines, report, out, p


def memplan(exe, config, np, sets):
    cmd = [exe, "memplan", "--config", config, "--world", str(np), "--format", "json"]
    for s in sets:
        cmd += ["--set", s]
    return json.loads(run(cmd).stdout)


# --recompute: each recomputation mode (FULL also on the first block only) in three layouts.
RECOMPUTE_MODES = (["parallel.recompute=SELECTIVE"], ["parallel.recompute=FULL"],
                   ["parallel.recompute=FULL", "parallel.recompute_layers=1"])


def layouts(recompute):
    """(compute, tp, sequence parallel, ZeRO stage, extra sets) of each run to compare."""
    if not recompute:
        return [(compute, tp, sp, stage, [])
                for compute, tp, sp in (("F32", 1, 0), ("BF16", 1, 0), ("F16", 1, 0),
                                        ("BF16", 2, 0), ("BF16", 2, 1))
                for stage in (0, 1, 2, 3)]
    return [(compute, tp, sp, stage, mode) for mode in RECOMPUTE_MODES
            for compute, tp, sp, stage in (("F32", 1, 0, 0), ("BF16", 1, 0, 3),
                                           ("BF16", 2, 1, 2))]


def match(exe, tmp, np, arch="", recompute=False):
    config = make_config(tmp, arch)
    failures = []
    for n, (compute, tp, sp, stage, extra) in enumerate(layouts(recompute)):
        sets = [f"parallel.zero_stage={stage}", f"precision.compute={compute}",
                f"parallel.tp={tp}", f"parallel.sequence_parallel={'true' if sp else 'false'}"]
        sets += extra
        plan = memplan(exe, config, np, sets)
        lines, report, _, _ = train_with_report(exe, config, tmp, np, sets, f"run{n}")
        steady, peak = plan["steady_bytes"], plan["rank_bytes"]
        label = (f"np={np} tp={tp}{' sp' if sp else ''} {compute} stage {stage}"
                 f"{' ' + ' '.join(extra) if extra else ''}")
        # 1. Model states, exact: rank 0's metrics after the last step, and every rank's
        #    live bytes at the end of the run (the engine still holds them).
        live0 = lines[-1]["mem_live_bytes"]
        for cat in MODEL_STATES:
            if live0[cat] != steady[cat]:
                failures.append(f"{label} {cat}: metrics live {live0[cat]} != memplan "
                                f"{steady[cat]}")
            for r in report["ranks"]:
                if r["live"][cat] != steady[cat]:
                    failures.append(f"{label} rank {r['rank']} {cat}: live {r['live'][cat]} "
                                    f"!= memplan {steady[cat]}")
        # 2. Peaks, exact, on every rank: each category's own peak and the peak total.
        for r in report["ranks"]:
            for cat in CATEGORIES:
                if r["peak"][cat] != peak[cat]:
                    failures.append(f"{label} rank {r['rank']} {cat}: peak {r['peak'][cat]} "
                                    f"!= memplan {peak[cat]}")
            if r["peak_total"] != peak["total"]:
                failures.append(f"{label} rank {r['rank']} peak total {r['peak_total']} "
                                f"!= memplan {peak['total']}")
        states = "; ".join(f"{c} {live0[c]} (plan {steady[c]})" for c in MODEL_STATES)
        diffs = ", ".join(f"{c} {report['comparison'][c]['difference']:+d}"
                          for c in CATEGORIES + ("total",))
        print(f"{label}: model states {states}; activations peak "
              f"{report['comparison']['activations']['measured']} (plan "
              f"{peak['activations']}); peak total {report['comparison']['total']['measured']} "
              f"(plan {peak['total']}); measured - predicted peaks: {diffs}")
    return failures


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def html(exe, tmp, screenshot):
    browser = find_chromium()
    if browser is None:
        print("SKIP: no chromium on PATH (scripts/setup.sh installs Debian's chromium)")
        sys.exit(77)
    config = make_config(tmp)
    # A run with every phase and every category: bf16 (master weights), ZeRO-3 (gathers,
    # reduce buffers), evaluation every 2 steps.
    _, report, out, p = train_with_report(
        exe, config, tmp, 2,
        ["parallel.zero_stage=3", "precision.compute=BF16", "train.steps=4",
         "train.eval_every=2", "train.eval_batches=2"], "html")
    failures = []
    if "memory report:" not in p.stdout or "predicted" not in p.stdout:
        failures.append("rank 0 did not print the memory table")
    page = os.path.join(out, "memory_report.html")
    text = open(page).read()
    if re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text):
        failures.append("the page refers to the network")
    # Headless Chromium as root needs --no-sandbox; --disable-gpu avoids probing for one.
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1200,1250"]
    dom = subprocess.run(base + ["--dump-dom", "file://" + page], capture_output=True,
                         text=True, timeout=120)
    state = re.search(r'<body[^>]*\bdata-render="([^"]*)"', dom.stdout)
    errors = re.search(r'<pre id="errors">([^<]*)</pre>', dom.stdout)
    summary = re.search(r'<p id="summary">([^<]+)</p>', dom.stdout)
    table = re.search(r'<table id="cmp">(.*?)</table>', dom.stdout, re.S)
    rows = re.findall(r"<tr><td>([a-z_]+)</td>", table.group(1)) if table else []
    print(f"chromium: exit {dom.returncode}; body data-render: "
          f"{state.group(1) if state else None!r}; errors: "
          f"{errors.group(1) if errors else None!r}; summary: "
          f"{summary.group(1)[:80] if summary else None!r}; comparison rows: {rows}")
    if dom.returncode != 0 or not state or state.group(1) != "ok":
        failures.append("the page did not render (body data-render is not \"ok\")")
    if not errors or errors.group(1).strip():
        failures.append(f"the page reported errors: {errors.group(1) if errors else 'no list'}")
    if not summary:
        failures.append("the summary line is empty")
    timeline = re.search(r'<svg id="timeline"[^>]*>(.*?)</svg>', dom.stdout, re.S)
    shapes = len(re.findall(r"<(?:path|rect|polyline)\b", timeline.group(1))) if timeline else 0
    print(f"timeline shapes: {shapes}")
    if shapes == 0:
        failures.append("the timeline chart is empty")
    if sorted(rows) != sorted(CATEGORIES + ("total",)):
        failures.append(f"the comparison table has rows {rows}, expected {list(CATEGORIES)}"
                        " and total")
    if "REPORT_" in re.sub(r"<[^>]*>", "", dom.stdout.split("<script", 1)[0]):
        failures.append("the page shows a test marker to its reader")
    # Every rank appears in the selector; every category in the comparison table.
    if dom.stdout.count("<option") != report["world"]:
        failures.append("the rank selector does not list every rank")
    shot = screenshot or os.path.join(tmp, "memory_report.png")
    subprocess.run(base + [f"--screenshot={os.path.abspath(shot)}", "file://" + page],
                   capture_output=True, timeout=120)
    if not os.path.exists(shot) or os.path.getsize(shot) < 10000:
        failures.append("no screenshot")
    else:
        print(f"screenshot: {shot} ({os.path.getsize(shot)} bytes)")
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--check", required=True, choices=["match", "html"])
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--screenshot", default=None)
    ap.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    ap.add_argument("--recompute", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    with tempfile.TemporaryDirectory() as tmp:
        if a.check == "match":
            failures = match(a.shardtrain, tmp, a.np, LLAMA if a.arch == "llama" else "",
                             a.recompute)
        else:
            failures = html(a.shardtrain, tmp, a.screenshot)
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
