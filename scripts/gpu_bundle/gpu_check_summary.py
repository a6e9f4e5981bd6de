"""gpu_check_summary.py RECORDS OUT: writes OUT/summary.json from gpu_check.sh's step records
(tab-separated: number, name, status, seconds) and the figures in the steps' logs (OUT/step_N.log),
prints it, and exits 0 when every step passed, 1 otherwise."""
import csv
import io
import json
import os
import re
import sys


def read(out, n):
    path = os.path.join(out, f"step_{n}.log")
    return open(path, errors="replace").read() if os.path.exists(path) else ""


def gtest_counts(text):
    """Totals over every gtest run in `text` (--gtest_brief=1 prints failures only)."""
    ran = sum(int(m) for m in re.findall(r"\[==========\] (\d+) tests? from .* ran", text))
    passed = sum(int(m) for m in re.findall(r"\[  PASSED  \] (\d+) tests?", text))
    failed = sorted(set(re.findall(r"\[  FAILED  \] ([^\s,]+)[^\n]*\(\d+ ms\)", text)))
    return {"ran": ran, "passed": passed, "failed": len(failed),
            "skipped": ran - passed - len(failed), "failed_tests": failed[:40]}


def main():
    records, out = sys.argv[1], sys.argv[2]
    steps = []
    for line in open(records):
        n, name, status, secs = line.rstrip("\n").split("\t")
        steps.append({"step": int(n), "name": name, "status": status, "seconds": int(secs)})
    figures = {}
    smi = read(out, 1)
    rows = [r for r in csv.reader(io.StringIO(smi)) if len(r) == 6]
    if len(rows) >= 2:
        figures["gpu"] = dict(zip([h.strip() for h in rows[0]], [v.strip() for v in rows[1]]))
    if read(out, 2):
        figures["gpu_tests"] = gtest_counts(read(out, 2))
    if read(out, 3):
        text = read(out, 3)
        figures["sanitizer"] = {
            "error_summaries": re.findall(r"========= ERROR SUMMARY: .*", text),
            "gtest": gtest_counts(text)}
    m = re.findall(r"^RESULT (\{.*\})$", read(out, 5), re.M)
    if m:
        figures["gpt2_124m"] = json.loads(m[-1])
    figures["train_cuda_vs_emu"] = [l for l in read(out, 4).splitlines()
                                    if l.startswith(("np=", "FAIL", "SKIP", "cuda"))][-20:]
    attn = []
    for line in read(out, 6).splitlines():
        if line.startswith("{"):
            try:
                attn.append(json.loads(line))
            except ValueError:
                pass
    if attn:
        figures["attention"] = attn
    if read(out, 7):
        figures["ncu_tail"] = read(out, 7).splitlines()[-60:]
    summary = {"steps": steps, "figures": figures,
               "passed": all(s["status"] == "passed" for s in steps)}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    for s in steps:
        print(f"  {s['step']} {s['name']:18s} {s['status']} ({s['seconds']} s)")
    print(f"summary: {os.path.join(out, 'summary.json')}")
    sys.exit(0 if summary["passed"] else 1)


if __name__ == "__main__":
    main()
