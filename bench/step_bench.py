"""Training-step throughput: shardtrain vs PyTorch on the same GPT, same threads, one run.

Model (issue [gpt]): d_model 256, 4 layers, 4 heads, T 256, vocab 8192, micro-batch 8, AdamW
with clipping. shardtrain runs `train` (one process, train.threads = --threads) and reports
tokens/s per step in its metrics; PyTorch runs the reference GPT (tests/parity/
gpt_reference.py) with torch.set_num_threads(--threads), timed the same way (forward,
backward, clip, AdamW step). The median over the steps after --warmup is reported, then the
ratio. --dtype bf16 compares shardtrain's bf16 training with PyTorch's CPU autocast to bfloat16.
--device cuda compares `train --device cuda` (one GPU) with the same PyTorch model on that GPU
(autocast to bfloat16, timed with torch.cuda.synchronize(); needs a CUDA build of torch and
--dtype bf16: shardtrain's attention kernels take 16-bit inputs). Not run here: no GPU.

On the CPU it also prints, from the same run: the step's achieved GFLOP/s (model FLOPs per
token 6 N + 12 L C T, PaLM's count, N = the matmul parameters incl. the tied head: 34.6 M here),
and the machine's GEMM peak — the better of two runs of bench/gemm_peak (kernels::gemm, i.e.
oneDNN), before and after the steps, at the step's largest GEMM shape and at 2048^3 on the same
threads — with the CPU (model, oneDNN ISA, kernel level) of each figure, and shardtrain's step by
op from the same run (`train --profile`): the share of GEMMs, attention, cross-entropy, norms,
GELU and the optimizer, what the other ops and the host code between ops take, and the top ops.
On a CPU without AVX-512 (or capped below it) a bf16 run is compared twice: with PyTorch's CPU
autocast as it runs there — torch 1.13 then multiplies bf16 in ATen's own loops, which round
every partial sum to bf16 and run at a few GFLOP/s, so only a few of its steps are timed —
and with PyTorch's fp32 step, which is what a user of such a CPU runs instead.
ONEDNN_MAX_CPU_ISA=AVX2 (with ATEN_CPU_CAPABILITY=avx2 and OPENBLAS_CORETYPE=Haswell for
torch) measures an AVX-512 machine as an AVX2 one; torch_like_this_cpu() below says how torch
is made to take an AVX2 CPU's path there, and tests/build/other_cpus.py --check torch_avx2
shows it bitwise equal to torch on an emulated Haswell.

  /usr/bin/python3 bench/step_bench.py --shardtrain build/bin/shardtrain [--dtype f32|bf16]
                                       [--device cpu|cuda] [--model small|gpt2_124m]
--model gpt2_124m (GPT-2 small, B 16, T 1024) is the GPU figure: on cuda it also prints the
step time, TFLOP/s of both and their MFU against the peak shardtrain's metrics name for this GPU
(PyTorch with scaled_dot_product_attention, i.e. FlashAttention).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "parity"))
import gpt_reference as ref  # noqa: E402

C, L, H, T, V, B = 256, 4, 4, 256, 8192, 8
# --model gpt2_124m: GPT-2 small (configs/gpt2_124m.pbtxt) at micro-batch 16, for GPUs.
MODELS = {"small": (256, 4, 4, 256, 8192, 8), "gpt2_124m": (768, 12, 12, 1024, 50257, 16)}

def config_text():
    return f"""
model {{ n_layer: {L} n_head: {H} d_model: {C} vocab_size: {V} seq_len: {T} }}
precision {{ compute: {{dtype}} }}
optimizer {{ lr: 3e-4 weight_decay: 0.1 grad_clip: 1.0 }}
data {{ train: "{{shard}}" micro_batch: {B} }}
train {{ steps: {{steps}} seed: 1 log_every: 1000 threads: {{threads}} }}
"""


def bench_shardtrain(exe, tmp, shard, dtype, steps, threads, warmup, device):
    cfg = os.path.join(tmp, "bench.pbtxt")
    with open(cfg, "w") as f:
        f.write(config_text().replace("{dtype}", "BF16" if dtype == "bf16" else "F32")
                .replace("{shard}", shard).replace("{steps}", str(steps))
                .replace("{threads}", str(threads)))
    metrics = os.path.join(tmp, "m.jsonl")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    # On the cpu the same run is profiled (train --profile: a clock pair per op call, a few
    # hundred per step, i.e. microseconds of a step of hundreds of milliseconds).
    profile = os.path.join(tmp, "profile.json")
    extra = ["--profile", profile] if device == "cpu" else []
    subprocess.run([exe, "train", "--config", cfg, "--metrics", metrics, "--device", device]
                   + extra, check=True, env=env, stdout=subprocess.DEVNULL)
    lines = [json.loads(l) for l in open(metrics)][warmup:]
    LAST_METRICS[:] = lines
    LAST_PROFILE.clear()
    if extra:
        LAST_PROFILE.update(json.load(open(profile)))
    return statistics.median(l["tokens_per_s"] for l in lines)


LAST_METRICS = []  # shardtrain's metrics lines after the warm-up, of the last bench_shardtrain
LAST_PROFILE = {}  # its --profile report (cpu)

# How the profile's ops group in the summary line (launch/profile_report.h names the ops).
OP_GROUPS = [("GEMMs", ("gemm",)), ("attention", ("attention",)),
             ("cross-entropy", ("cross_entropy",)),
             ("norms", ("layernorm", "residual_layernorm", "rmsnorm", "residual_rmsnorm")),
             ("GELU", ("gelu_",)), ("optimizer (AdamW, grad norm)", ("adamw", "sum_squares"))]


def profile_summary(report):
    """Shares of the step per op group, the rest of the ops, and what no op accounts for."""
    shares = {name: 0.0 for name, _ in OP_GROUPS}
    rest = 0.0
    for op in report["ops"]:
        group = next((name for name, prefixes in OP_GROUPS
                      if op["op"].split(" ")[0].startswith(prefixes)), None)
        if group:
            shares[group] += op["share"]
        else:
            rest += op["share"]
    parts = [f"{name} {share:.1%}" for name, share in shares.items()]
    parts.append(f"other ops {rest:.1%}")
    parts.append(f"outside ops {report['other_ms_per_step'] / report['step_ms']:.1%}")
    return ", ".join(parts)


def onednn_capped_below_avx512():
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("SSE41", "AVX", "AVX2")


def cpu_has_avx512_bf16_path():
    """torch 1.13's condition for oneDNN's bf16 matmul (mkldnn_bf16_device_check): AVX-512 BW,
    VL and DQ in the CPU's flags, whatever ONEDNN_MAX_CPU_ISA says."""
    flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo")
                  if ln.startswith("flags")), [])
    return all(f in flags for f in ("avx512bw", "avx512vl", "avx512dq"))


def torch_like_this_cpu():
    """Makes torch take the path it takes on the CPU the environment stands for. torch 1.13
    sends bf16 matmuls to oneDNN when the CPU itself has AVX-512 BW/VL/DQ, without asking
    oneDNN's effective ISA; under ONEDNN_MAX_CPU_ISA=AVX2 on such a CPU the capped oneDNN then
    refuses them ("could not create a primitive descriptor iterator"), which no AVX2 CPU does:
    there torch computes them in ATen's own GEMM loops. Switching torch's oneDNN off takes that
    path (torch uses oneDNN for nothing else in this model). Returns what it did, for the log."""
    if onednn_capped_below_avx512() and cpu_has_avx512_bf16_path():
        torch.backends.mkldnn.enabled = False
        return "oneDNN off in torch, as on a CPU without AVX-512"
    return "as it is"


def torch_model(device):
    """The reference GPT of the benchmark's shape (C, L, H, T, V), weights from a fixed seed."""
    g = torch.Generator().manual_seed(0)
    w = {"wte.weight": torch.randn(V, C, generator=g) * 0.02,
         "wpe.weight": torch.randn(T, C, generator=g) * 0.02,
         "ln_f.weight": torch.ones(C), "ln_f.bias": torch.zeros(C)}
    for i in range(L):
        p = f"h.{i}."
        w.update({p + "ln_1.weight": torch.ones(C), p + "ln_1.bias": torch.zeros(C),
                  p + "attn.c_attn.weight": torch.randn(C, 3 * C, generator=g) * 0.02,
                  p + "attn.c_attn.bias": torch.zeros(3 * C),
                  p + "attn.c_proj.weight": torch.randn(C, C, generator=g) * 0.02,
                  p + "attn.c_proj.bias": torch.zeros(C),
                  p + "ln_2.weight": torch.ones(C), p + "ln_2.bias": torch.zeros(C),
                  p + "mlp.c_fc.weight": torch.randn(C, 4 * C, generator=g) * 0.02,
                  p + "mlp.c_fc.bias": torch.zeros(4 * C),
                  p + "mlp.c_proj.weight": torch.randn(4 * C, C, generator=g) * 0.02,
                  p + "mlp.c_proj.bias": torch.zeros(C)})
    return ref.Gpt(w, L, H, sdpa=device == "cuda").to(device)


def torch_loss(model, x, y, dtype, device):
    with torch.autocast(device, dtype=torch.bfloat16, enabled=(dtype == "bf16")):
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))


def bench_torch(tokens, dtype, steps, threads, warmup, device):
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = torch_model(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rates = []
    for step in range(steps):
        x, y = (t.to(device) for t in ref.windows(tokens, T, step * B, B))
        sync()
        t0 = time.perf_counter()
        loss = torch_loss(model, x, y, dtype, device)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        rates.append(B * T / (time.perf_counter() - t0))
    return statistics.median(rates[warmup:])


def model_flops_per_token():
    """6 N + 12 L C T (PaLM, appendix B): N = L * 12 C^2 (attention and MLP matmuls) + C V (the
    tied head); 12 L C T counts the attention scores and their weighted sum, forward+backward.
    models/flops.h (train's `tflops` and `mfu`) is the same formula."""
    n = L * 12 * C * C + C * V
    return 6 * n + 12 * L * C * T


def gemm_peaks(exe, dtype, threads):
    """kernels::gemm's GFLOP/s at the step's largest GEMM (the head: B*T x V x C) and 2048^3."""
    peak = os.path.join(os.path.dirname(os.path.abspath(exe)), "gemm_peak")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([peak, dtype, str(B * T), str(V), str(C), "2048", "2048", "2048"],
                         check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(line) for line in out.splitlines()]


def torch_cpu_name():
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                  if ln.startswith("model name")), "unknown CPU")
    caps = [ln.split(":", 1)[1].strip() for ln in torch.__config__.show().splitlines()
            if "CPU capability usage" in ln]
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "not capped")
    if not torch.backends.mkldnn.enabled:
        onednn += ", switched off in torch"
    blas = os.environ.get("OPENBLAS_CORETYPE", "detected")
    return (f"{model}; ATen {caps[0] if caps else '?'}, oneDNN (mkldnn) ISA {onednn}, "
            f"OpenBLAS core {blas}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardtrain", required=True)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="small", choices=sorted(MODELS))
    a = ap.parse_args()
    global C, L, H, T, V, B
    C, L, H, T, V, B = MODELS[a.model]
    if a.device == "cuda" and (a.dtype != "bf16" or not torch.cuda.is_available()):
        sys.exit("--device cuda needs --dtype bf16 and a GPU visible to torch")
    tokens = np.random.default_rng(0).integers(0, V, size=B * T * (a.steps + 1) + 1)
    # The GEMM peak is measured before and after the two steps and the higher kept: shared
    # machines here swing by up to 1.7x within seconds, and the step's share of the peak must
    # not be flattered by a slow moment of the peak's own measurement.
    peaks_before = gemm_peaks(a.shardtrain, a.dtype, a.threads) if a.device == "cpu" else []
    with tempfile.TemporaryDirectory() as tmp:
        shard = os.path.join(tmp, "bench.bin")
        ref.write_shard(shard, tokens, V)
        ours = bench_shardtrain(a.shardtrain, tmp, shard, a.dtype, a.steps, a.threads, a.warmup,
                                a.device)
    torch_path = torch_like_this_cpu() if a.device == "cpu" else "as it is"
    # Without AVX-512, torch's autocast runs at a few GFLOP/s (see the top of this file): a few
    # of its steps are timed, and its fp32 step, what such a user runs instead, beside them.
    slow_bf16 = (a.dtype == "bf16" and a.device == "cpu"
                 and (onednn_capped_below_avx512() or not cpu_has_avx512_bf16_path()))
    if slow_bf16:
        slow_steps = min(a.steps, 3)
        autocast = bench_torch(tokens, "bf16", slow_steps, a.threads, 1, a.device)
    theirs = bench_torch(tokens, "f32" if slow_bf16 else a.dtype, a.steps, a.threads, a.warmup,
                         a.device)
    where = "1 GPU" if a.device == "cuda" else f"{a.threads} threads"
    print(f"GPT d={C} L={L} H={H} T={T} V={V} B={B}, {a.dtype}, {where}, "
          f"median of {a.steps - a.warmup} steps")
    print(f"  shardtrain: {ours:10.0f} tokens/s")
    if slow_bf16:
        print(f"  pytorch {torch.__version__} (bf16 autocast, no AVX-512 bf16 matmul: {torch_path}; "
              f"median of {slow_steps - 1} steps): {autocast:10.0f} tokens/s")
        print(f"  ratio shardtrain / pytorch bf16 autocast: {ours / autocast:.2f}x")
    baseline = "f32" if slow_bf16 else a.dtype
    print(f"  pytorch {torch.__version__} ({baseline}): {theirs:10.0f} tokens/s")
    print(f"  ratio shardtrain / pytorch: {ours / theirs:.2f}x")
    if a.device == "cuda":
        fpt = model_flops_per_token()
        ms = statistics.median(l["step_ms"] for l in LAST_METRICS)
        print(f"  shardtrain step {ms:.1f} ms; model FLOPs per token {fpt / 1e6:.1f} M: "
              f"shardtrain {ours * fpt / 1e12:.1f} TFLOP/s, pytorch {theirs * fpt / 1e12:.1f}")
        mfu = [l for l in LAST_METRICS if "mfu" in l]
        if mfu:  # the peak shardtrain matched to this GPU's name: tflops / mfu
            peak = mfu[-1]["tflops"] / mfu[-1]["mfu"]
            print(f"  MFU against {peak:.0f} TFLOP/s dense bf16: shardtrain "
                  f"{ours * fpt / 1e12 / peak:.1%}, pytorch {theirs * fpt / 1e12 / peak:.1%}")
        print(f"  GPU: {torch.cuda.get_device_name(0)}")
        print("RESULT " + json.dumps({"model": a.model, "tokens_per_s": ours,
                                       "pytorch_tokens_per_s": theirs, "step_ms": ms,
                                       "tflops": ours * fpt / 1e12,
                                       "pytorch_tflops": theirs * fpt / 1e12,
                                       "mfu": mfu[-1]["mfu"] if mfu else None,
                                       "gpu": torch.cuda.get_device_name(0)}))
    if a.device == "cpu":
        fpt = model_flops_per_token()
        achieved = ours * fpt / 1e9
        peaks = [max(p, q, key=lambda x: x["gflops"])
                 for p, q in zip(peaks_before, gemm_peaks(a.shardtrain, a.dtype, a.threads))]
        print(f"  model FLOPs per token {fpt / 1e6:.1f} M: shardtrain achieves "
              f"{achieved:.1f} GFLOP/s, pytorch {theirs * fpt / 1e9:.1f}")
        for p in peaks:
            print(f"  {p['dtype']} GEMM peak {p['m']}x{p['n']}x{p['k']}: {p['gflops']:.1f} GFLOP/s"
                  f" -> the step reaches {achieved / p['gflops'] * 100:.0f} % of it")
        print(f"  shardtrain's step by op (train --profile, same run, "
              f"{LAST_PROFILE['step_ms']:.1f} ms): {profile_summary(LAST_PROFILE)}")
        for op in LAST_PROFILE["ops"][:6]:
            rate = f", {op['gflops']:.0f} GFLOP/s" if "gflops" in op else ""
            print(f"    {op['op']}: {op['ms_per_step']:.2f} ms ({op['share']:.1%}{rate})")
        print(f"  CPU (shardtrain): {peaks[0]['cpu']}")
        print(f"  CPU (pytorch):    {torch_cpu_name()}")


if __name__ == "__main__":
    main()
