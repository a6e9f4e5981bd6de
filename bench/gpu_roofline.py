"""The expected time of one GPT-2 training step on a GPU, op by op, from the roofline of each
kernel (kernels/cuda/README.md): bytes / HBM bandwidth for the memory-bound kernels, FLOPs / the
tensor-core ceiling for the GEMMs and attention. These are the figures the [gpu-kit] check's
measurements (bench/step_bench.py --device cuda, attention_gpu_bench, the ncu per-kernel times)
are read against; no GPU ran them.

  python3 bench/gpu_roofline.py [--gpu h100|h200] [--batch 16] [--seq 1024] [--grad-accum 1]
                                [--markdown]
  python3 bench/gpu_roofline.py --batch 1 --seq 64 --check-profile PROFILE.json

--check-profile compares the op list with a `shardtrain train --profile` run of configs/gpt2_124m
on the cpu backend at the same batch and sequence length and grad_accum 1 (the model calls the same
Backend ops on every device): every op's calls per step, and the GEMM FLOPs summed from the
profiled shapes. It exits 1 naming the first difference.

One step = grad_accum micro-steps (forward, backward), then the optimizer over all parameters,
on one GPU. bf16 storage (2 bytes), fp32 gradients, master weights and moments. MFU as train
reports it (models/flops.h) against the dense bf16 peak.
"""
import argparse
import json
import re
import sys

# Dense bf16 tensor peak (wgmma), what mma.sync reaches (FlashAttention-2 on H100 is reported at
# ~1/3 of the dense peak in the FlashAttention-3 paper; our attention kernels use mma.sync), HBM.
GPUS = {
    "h100": dict(name="H100 SXM", tensor=989e12, mma_sync=330e12, hbm=3.35e12),
    "h200": dict(name="H200 SXM", tensor=989e12, mma_sync=330e12, hbm=4.8e12),
}
# Expected fractions of those ceilings (assumptions until the GPU check measures them):
# cuBLASLt's bf16 GEMMs at these shapes (N = B*T rows, K and N in 768..50304) ~70 % of the dense
# peak; FlashAttention-2 class forward ~75 % of the mma.sync ceiling, backward ~2/3 of forward's
# (FlashAttention-2 paper); memory-bound kernels ~80 % of HBM bandwidth.
EFFICIENCY = {"gemm": 0.70, "attention_forward": 0.75, "attention_backward": 0.50, "hbm": 0.80}
LAUNCH_S = 4e-6  # one kernel launch and its tail, for the launch-bound sort
OPTIMIZER_OPS = ("zero", "sum_squares", "adamw_update_segments")  # once per optimizer step

GPT2 = dict(layers=12, heads=12, C=768, V=50257, n_ctx=1024)  # configs/gpt2_124m.pbtxt


def ops(batch, seq, m=GPT2):
    """(backend op, calls per step, bytes per step, FLOPs per step, bound) for one GPT-2 step."""
    L, C, H = m["layers"], m["C"], m["heads"]
    Vp = (m["V"] + 63) // 64 * 64
    N, D = batch * seq, C // H
    # parameters: wte (padded vocabulary), wpe, per layer 12 C^2 weights + 13 C biases and norms,
    # the final norm
    P = Vp * C + m["n_ctx"] * C + L * (12 * C * C + 13 * C) + 2 * C
    s = 2  # bytes of a bf16 element
    layer_matmul = 12 * C * C  # qkv 3C^2, proj C^2, fc 4C^2, mlp proj 4C^2
    fwd_gemm = 2 * N * (L * layer_matmul + C * Vp)
    pairs = batch * H * seq * (seq + 1) / 2  # visible (query, key) pairs per layer
    return [
        ("embedding_forward", 1, 2 * s * N * C, 0, "hbm"),
        ("layernorm_forward", L + 1, 2 * s * N * C * (L + 1), 0, "hbm"),
        ("residual_layernorm_forward", L, 4 * s * N * C * L, 0, "hbm"),
        # Every GEMM of the step: per layer qkv, attention proj and mlp proj forward (fc is
        # gemm_bias_gelu), and two per forward GEMM in backward (input and weight gradients);
        # the head forward and its two. The FLOPs include gemm_bias_gelu's GEMM, whose own row
        # is the GELU kernel that follows it.
        ("gemm", 11 * L + 3, 0, 3 * fwd_gemm, "gemm"),
        ("gemm_bias_gelu", L, 2 * s * N * 4 * C * L, 0, "hbm"),
        ("attention_forward", L, 0, L * 2 * 2 * D * pairs, "attention_forward"),
        ("residual_add", L, 3 * s * N * C * L, 0, "hbm"),
        ("cross_entropy_forward", 1, s * N * Vp, 0, "hbm"),
        ("cross_entropy_backward", 1, 2 * s * N * Vp, 0, "hbm"),
        ("gelu_backward", L, 3 * s * N * 4 * C * L, 0, "hbm"),
        ("attention_backward", L, 0, L * 5 * 2 * D * pairs, "attention_backward"),
        # 4 per layer: qkv (3C), attention proj (C), fc (4C), mlp proj (C) columns
        ("bias_backward", 4 * L, s * N * 9 * C * L, 0, "hbm"),
        # 2 per layer and the final one: dx (dout, x read, dx read-modify-write) + the
        # parameter-gradient partials re-reading dout and x
        ("layernorm_backward", 2 * L + 1, 6 * s * N * C * (2 * L + 1), 0, "hbm"),
        # dout once, the fp32 dwte rows read-modified-written (at most one per position), the
        # radix sort of the token ids (8 passes of ~32 B per position), wpe
        ("embedding_backward", 1, s * N * C + 8 * N * C + 8 * 32 * N + s * N * C, 0, "hbm"),
        # the optimizer step, per unit (embedding, each layer, the final norm): gradients
        # zeroed (and the loss sum and the residual gradient), their squares summed, AdamW (fp32
        # param, grad, m, v read; param, m, v written; the bf16 compute copy written)
        ("zero", L + 4, 4 * P + s * N * C, 0, "hbm"),
        ("sum_squares", L + 2, 4 * P, 0, "hbm"),
        ("adamw_update_segments", L + 2, 30 * P, 0, "hbm"),
    ], P, fwd_gemm


def seconds(op, gpu):
    name, calls, nbytes, flops, bound = op
    if bound == "hbm":
        t = nbytes / (gpu["hbm"] * EFFICIENCY["hbm"])
        floor = nbytes / gpu["hbm"]
        if name == "embedding_backward":  # ~25 launches of the sort, latency-bound
            t += 25 * LAUNCH_S
            floor += 25 * LAUNCH_S
    elif bound == "gemm":
        t = flops / (gpu["tensor"] * EFFICIENCY["gemm"])
        floor = flops / gpu["tensor"]
    else:
        t = flops / (gpu["mma_sync"] * EFFICIENCY[bound])
        floor = flops / gpu["mma_sync"]
    return floor, t


def model_flops_per_token(seq, m=GPT2):
    """models/flops.h (train's `tflops` and `mfu`): 6 N + 12 L C T, N = 12 L C^2 + C V."""
    L, C = m["layers"], m["C"]
    return 6 * (12 * L * C * C + C * m["V"]) + 12 * L * C * seq


def report(args):
    gpu = GPUS[args.gpu]
    table, P, _ = ops(args.batch, args.seq)
    ga = args.grad_accum
    tokens = args.batch * args.seq * ga
    model_flops = tokens * model_flops_per_token(args.seq)
    rows, total_floor, total = [], 0.0, 0.0
    for op in table:
        floor, t = seconds(op, gpu)
        if op[0] not in OPTIMIZER_OPS:  # once per micro-step
            floor, t = floor * ga, t * ga
        total_floor += floor
        total += t
        rows.append((op, floor, t))
    mfu = model_flops / total / gpu["tensor"]
    head = (f"GPT-2 124M, B {args.batch}, T {args.seq}, bf16, one step of {ga} micro-step(s) on "
            f"{gpu['name']} ({gpu['tensor'] / 1e12:.0f} TFLOP/s dense bf16, mma.sync "
            f"~{gpu['mma_sync'] / 1e12:.0f}, HBM {gpu['hbm'] / 1e12:.2f} TB/s); {P / 1e6:.1f} M "
            f"parameters")
    if args.markdown:
        print(head + "\n")
        print("| op | calls per micro-step | bound (per micro-step) | at the ceiling (ms per step) "
              "| expected (ms per step) | share |")
        print("|---|---|---|---|---|---|")
        for (name, calls, nbytes, flops, bound), floor, t in rows:
            what = (f"{nbytes / 1e6:,.0f} MB" if bound == "hbm" else f"{flops / 1e12:.2f} TFLOP")
            print(f"| `{name}` | {calls} | {bound}, {what} | "
                  f"{floor * 1e3:.3f} | {t * 1e3:.3f} | {t / total:.1%} |")
        print(f"| **step** | | | **{total_floor * 1e3:.1f}** | **{total * 1e3:.1f}** | |")
        print(f"\nModel FLOPs (models/flops.h) {model_flops / 1e12:.2f} TFLOP per step: expected "
              f"MFU {mfu:.0%} ({tokens / total:,.0f} tokens/s); at every ceiling "
              f"{model_flops / total_floor / gpu['tensor']:.0%}.")
    else:
        print(head)
        for (name, calls, _, _, bound), floor, t in rows:
            print(f"  {name:28s} {calls:5d} {bound:19s} {floor * 1e3:9.3f} ms "
                  f"floor {t * 1e3:9.3f} ms expected")
        print(f"  step: {total_floor * 1e3:.1f} ms at the ceilings, {total * 1e3:.1f} ms "
              f"expected: MFU {mfu:.0%}, {tokens / total:,.0f} tokens/s")


def check_profile(args):
    prof = json.load(open(args.check_profile))
    got, gemm_flops = {}, 0.0
    for o in prof["ops"]:
        name, calls = o["op"], o["calls_per_step"]
        m = re.match(r"(gemm(?:_bias_gelu)?) (\d+)x(\d+)x(\d+) ", name)
        if m:
            gemm_flops += 2.0 * int(m[2]) * int(m[3]) * int(m[4]) * calls
            name = m[1]
        got[name] = got.get(name, 0) + calls
    table, _, fwd_gemm = ops(args.batch, args.seq)
    want_gemm = 3 * fwd_gemm
    bad = []
    for name, calls, _, _, _ in table:
        if got.get(name) != calls:
            bad.append(f"{name}: {got.get(name)} calls per step profiled, {calls} modelled")
    if abs(gemm_flops - want_gemm) > 1e-9 * want_gemm:
        bad.append(f"GEMM FLOPs per step: {gemm_flops:.6g} profiled, {want_gemm:.6g} modelled")
    modelled = {op[0] for op in table} | {"accumulate_sum", "sum_f64_in_order", "upload", "copy",
                                          "download_async"}
    for name in got:
        if name not in modelled:
            bad.append(f"{name}: profiled, not modelled")
    if bad:
        print("FAIL: " + bad[0])
        for b in bad[1:]:
            print("      " + b)
        sys.exit(1)
    print(f"ok: {len(table)} ops, calls per step and {gemm_flops / 1e9:.3f} GFLOP of GEMMs as "
          f"profiled")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--check-profile", metavar="PROFILE_JSON")
    args = ap.parse_args()
    if args.check_profile:
        check_profile(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
