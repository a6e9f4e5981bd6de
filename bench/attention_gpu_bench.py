"""Attention on one GPU: shardtrain's CUDA kernels (attention_gpu_bench) against PyTorch's
scaled_dot_product_attention with the FlashAttention backend, same shapes, same run.

Shapes: GPT-2's (B 16, H 12, so B*H = 192; T 1024) at head_dim 64 and 128; bf16 and fp16;
forward and backward. Both are timed with CUDA events (median of 20 after 3 warm-ups) and
counted the same way: the causal products only (the visible half of the T x T scores),
forward 2 and backward 5 products of 2 * D FLOPs per visible (query, key) pair. PyTorch's
backward is timed alone: out.backward(dout) on a graph built once (retain_graph).

  python3 bench/attention_gpu_bench.py --bench gpu-bundle/bin/attention_gpu_bench
Prints one JSON line per (impl, head_dim, dtype, pass), then the ratios (and, at head_dim 64,
the forward's 32 query rows per warp against 16); exit 77 without a GPU.
"""
import argparse
import json
import subprocess
import sys

B, H, T = 16, 12, 1024


def torch_rows(d, dtype_name):
    import torch
    import torch.nn.functional as F
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(B, H, T, d, device="cuda", dtype=dtype, generator=g).requires_grad_()
               for _ in range(3))
    dout = torch.randn(B, H, T, d, device="cuda", dtype=dtype, generator=g)
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        ctx = sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    except ImportError:  # torch < 2.3
        ctx = torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False,
                                             enable_mem_efficient=False)

    def median_ms(fn):
        for _ in range(3):
            fn()
        times = []
        for _ in range(20):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return sorted(times)[len(times) // 2]

    with ctx:
        fwd = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        bwd = median_ms(lambda: out.backward(dout, retain_graph=True))
    product = 2.0 * d * B * H * T * (T + 1) / 2
    name = torch.cuda.get_device_name(0)
    return [dict(impl=f"pytorch {torch.__version__} sdpa flash", dtype=dtype_name, pass_=p,
                 B=B, T=T, H=H, D=d, ms=ms, tflops=n * product / (ms * 1e-3) / 1e12, gpu=name)
            for p, ms, n in (("forward", fwd, 2.0), ("backward", bwd, 5.0))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="the attention_gpu_bench executable")
    a = ap.parse_args()
    rows = []
    for d in (64, 128):
        p = subprocess.run([a.bench, str(B), str(T), str(H), str(d)], capture_output=True,
                           text=True, timeout=120)
        if p.returncode == 77:
            print(p.stdout.strip())
            sys.exit(77)
        if p.returncode != 0:
            sys.exit(f"attention_gpu_bench failed ({p.returncode}): {p.stderr.strip()}")
        for line in p.stdout.splitlines():
            r = json.loads(line)
            r["pass_"] = r.pop("pass")
            rows.append(r)
        for dt in ("bf16", "f16"):
            rows += torch_rows(d, dt)
    for r in rows:
        print(json.dumps({("pass" if k == "pass_" else k): v for k, v in r.items()}))
    ours = {(r["D"], r["dtype"], r["pass_"]): r for r in rows if r["impl"] == "shardtrain"}
    for r in rows:
        if r["impl"].startswith("shardtrain"):
            continue
        o = ours[(r["D"], r["dtype"], r["pass_"])]
        print(f"D={r['D']} {r['dtype']} {r['pass_']:8s}: shardtrain {o['tflops']:7.1f} TFLOP/s "
              f"({o['ms']:.3f} ms), {r['impl']} {r['tflops']:7.1f} ({r['ms']:.3f} ms): "
              f"{o['tflops'] / r['tflops']:.2f}x  [{r['gpu']}]")
    for r in rows:  # the forward's two tile shapes at D = 64
        if r["impl"] == "shardtrain m_tiles=1":
            o = ours[(r["D"], r["dtype"], r["pass_"])]
            print(f"D={r['D']} {r['dtype']} forward tiles: 32 rows/warp {o['tflops']:7.1f} "
                  f"TFLOP/s, 16 rows/warp {r['tflops']:7.1f}: {o['tflops'] / r['tflops']:.2f}x  "
                  f"[{r['gpu']}]")


if __name__ == "__main__":
    main()
