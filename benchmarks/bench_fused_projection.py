"""GPU benchmark of the fused q/k/v projection + RoPE vs cuBLAS GEMM + separate RoPE, HF eager and
torch.compile(HF), and the GEMM alone.

    python benchmarks/bench_fused_projection.py --out benchmarks/results/fused-<device>.json

Shapes (issue 5): bf16 x [1, 16384, 4096] and a decode-like x [1, 32, 4096]; w_q [4096, 4096],
w_k / w_v [1024, 4096] (32 q heads, 8 kv heads, D = 128); the long shape first. Reports median ms
(triton.testing.do_bench), TFLOP/s of the projection GEMMs, and that as ``fraction_of_gemm``, a
fraction of the rate of a square bf16 cuBLAS GEMM measured in the same process. HF eager is Llama
attention's path: three linears, then the rotary on [B, H, T, D] views. The JSON is rewritten
after every measurement, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bench_rope import dprope_inv_freq, hf_apply_rotary_pos_emb
from common import Report, bench_ms, gemm_rate, report_path_on_cuda

import dprope_kernels as dk
from dprope_kernels.backends import unavailable

HIDDEN, HQ, HK, D = 4096, 32, 8, 128
RUNS = [(16384, False), (16384, True), (32, False), (32, True)]  # (tokens, backward), by value


def hf_projection(x, w_q, w_k, w_v, inv_freq, pos):
    """Hugging Face Llama attention's projections and rotary, eager (x [1, N, hidden], pos [1, N])."""
    N = x.shape[1]
    q = F.linear(x, w_q).view(1, N, HQ, D).transpose(1, 2)
    k = F.linear(x, w_k).view(1, N, HK, D).transpose(1, 2)
    v = F.linear(x, w_v).view(1, N, HK, D).transpose(1, 2)
    q, k = hf_apply_rotary_pos_emb(q, k, inv_freq, pos.view(1, N))
    return q, k, v


def ours(x, w_q, w_k, w_v, phases, pos) -> dict:
    """Name -> callable for the fused kernels and for cuBLAS GEMM followed by our RoPE, or why not."""
    w_qkv = torch.cat([w_q, w_k, w_v]).detach().requires_grad_(w_q.requires_grad)
    sizes = [w.shape[0] for w in (w_q, w_k, w_v)]
    N = x.shape[1]
    rope_backend = next((b for b in ("cuda", "triton") if unavailable(b, x.device) is None), "torch")

    def gemm_then_rope():
        q, k, v = (x @ w_qkv.t()).split(sizes, dim=-1)
        q, k = dk.apply_rope(q.view(1, N, HQ, D), k.view(1, N, HK, D), phases, pos.view(1, N),
                             backend=rope_backend, validate=False)
        return q, k, v

    def fused(backend):
        reason = unavailable(backend, x.device)
        if reason:
            return f"unavailable: {reason}"
        return lambda: dk.fused_qk_rope_projection(x, w_q, w_k, phases, pos, w_v=w_v, backend=backend,
                                                   validate=False)

    out = {f"fused_{backend}": fused(backend) for backend in ("triton", "cuda")}
    out["gemm_alone"] = lambda: (x @ w_qkv.t(),)
    out[f"gemm+rope_{rope_backend}"] = gemm_then_rope
    return out


def providers(x, w_q, w_k, w_v, pos) -> dict:
    """Ours, then HF eager, then torch.compile(HF) (last: compiling costs the most time)."""
    inv_freq = dprope_inv_freq(D)
    out = ours(x, w_q, w_k, w_v, dk.phase_tensor(inv_freq, device="cuda"), pos)
    inv_freq = inv_freq.cuda()
    out["hf_eager"] = lambda: hf_projection(x, w_q, w_k, w_v, inv_freq, pos)
    compiled = torch.compile(hf_projection)
    out["hf_compile"] = lambda: compiled(x, w_q, w_k, w_v, inv_freq, pos)
    return out


def run_shape(report: Report, N: int, backward: bool, rate: float) -> None:
    torch.manual_seed(0)

    def param(*shape):
        weights = torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * shape[-1] ** -0.5
        return weights.requires_grad_(backward)

    x = param(1, N, HIDDEN)  # [B, T, hidden], as the fused op takes it
    w_q, w_k, w_v = param(HQ * D, HIDDEN), param(HK * D, HIDDEN), param(HK * D, HIDDEN)
    pos = torch.randint(0, 16384, (1, N), device="cuda")
    flops = 2 * N * HIDDEN * (HQ + 2 * HK) * D * (3 if backward else 1)
    rows = report.run(shape={"N": N, "hidden": HIDDEN, "Hq": HQ, "Hk": HK, "D": D},
                      **{"pass": "fwd+bwd" if backward else "fwd"})
    for name, fn in providers(x, w_q, w_k, w_v, pos).items():
        if isinstance(fn, str):
            report.record(rows, name, fn)
            continue

        def step(fn=fn):
            outs = fn()
            if backward:
                torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

        ms = bench_ms(step)
        tflops = flops / (ms * 1e-3)
        report.record(rows, name, {"ms": ms, "TFLOP/s": tflops / 1e12, "fraction_of_gemm": tflops / rate})


def main():
    out = report_path_on_cuda(__doc__)
    rate = gemm_rate()
    report = Report(out, **{"gemm_rate_TFLOP/s": rate / 1e12})
    for N, backward in RUNS:
        run_shape(report, N, backward, rate)
    report.finish()


if __name__ == "__main__":
    main()
