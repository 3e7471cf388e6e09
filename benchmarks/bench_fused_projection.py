"""GPU benchmark of the fused q/k/v projection + RoPE vs cuBLAS GEMM + separate RoPE vs the GEMM alone.

    python benchmarks/bench_fused_projection.py --out benchmarks/results/fused-<device>.json

Shapes (issue 5): bf16 x [16384, 4096] and a decode-like x [32, 4096]; w_q [4096, 4096],
w_k / w_v [1024, 4096] (32 q heads, 8 kv heads, D = 128). Reports median ms
(triton.testing.do_bench), TFLOP/s, and that as a fraction of the GEMM rate measured in the same
run (a square bf16 cuBLAS GEMM).
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

import dprope_kernels as dk
from dprope_kernels.backends import unavailable
from common import report_header, write_report

HIDDEN, HQ, HK, D = 4096, 32, 8, 128


def gemm_rate(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3)


def providers(x, w_q, w_k, w_v, phases, pos):
    w_qkv = torch.cat([w_q, w_k, w_v]).detach().requires_grad_(w_q.requires_grad)
    sizes = [w.shape[0] for w in (w_q, w_k, w_v)]
    N = x.shape[0]
    rope_backend = next((b for b in ("cuda", "triton") if unavailable(b, x.device) is None), "torch")

    def gemm_alone():
        return (x @ w_qkv.t(),)

    def gemm_then_rope():
        q, k, v = (x @ w_qkv.t()).split(sizes, dim=-1)
        q, k = dk.apply_rope(q.view(1, N, HQ, D), k.view(1, N, HK, D), phases, pos.view(1, N),
                             backend=rope_backend, validate=False)
        return q, k, v

    out = {"gemm_alone": gemm_alone, f"gemm+rope_{rope_backend}": gemm_then_rope}
    for backend in ("triton", "cuda"):
        if unavailable(backend, x.device) is None:
            out[f"fused_{backend}"] = (lambda b: lambda: dk.fused_qk_rope_projection(
                x, w_q, w_k, phases, pos, w_v=w_v, backend=b, validate=False))(backend)
    return out


def run_shape(N: int, backward: bool, rate: float) -> dict:
    torch.manual_seed(0)

    def param(rows, cols):
        return (torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) * cols**-0.5).requires_grad_(backward)

    x = param(N, HIDDEN)
    w_q, w_k, w_v = param(HQ * D, HIDDEN), param(HK * D, HIDDEN), param(HK * D, HIDDEN)
    phases = dk.phase_tensor(dk.plan_dprope(head_dim=D, factor=4).inv_freq, device="cuda")
    pos = torch.randint(0, 16384, (N,), device="cuda")
    flops = 2 * N * HIDDEN * (HQ + 2 * HK) * D * (3 if backward else 1)
    rows = {}
    for name, fn in providers(x, w_q, w_k, w_v, phases, pos).items():
        def step(fn=fn):
            outs = fn()
            if backward:
                torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

        ms = triton.testing.do_bench(step)
        tflops = flops / (ms * 1e-3)
        rows[name] = {"ms": ms, "TFLOP/s": tflops / 1e12, "fraction_of_gemm_rate": tflops / rate}
    return {"shape": dict(N=N, hidden=HIDDEN, Hq=HQ, Hk=HK, D=D), "pass": "fwd+bwd" if backward else "fwd",
            "results": rows}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rate = gemm_rate()
    report = report_header(**{"gemm_rate_TFLOP/s": rate / 1e12})
    for N in (16384, 32):
        for backward in (False, True):
            report["runs"].append(run_shape(N, backward, rate))
    write_report(report, args.out)


if __name__ == "__main__":
    main()
