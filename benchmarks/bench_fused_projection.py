"""GPU benchmark of the fused q/k/v projection + RoPE vs cuBLAS GEMM + separate RoPE, HF eager and
torch.compile(HF), and the GEMM alone.

    python benchmarks/bench_fused_projection.py --out benchmarks/results/fused-<device>.json [--budget-s 60]
    python benchmarks/bench_fused_projection.py --dry-run     # what it measures, in order (no GPU)

Runs, most valuable first (RUNS): bf16 x [1, 16384, 4096], w_q [4096, 4096], w_k / w_v [1024, 4096]
(32 q heads, 8 kv heads, D = 128): the forward, then forward + backward; then a decode-like
x [1, 32, 4096], forward and forward + backward. Ours: ``fused_*`` rotates in the GEMM's epilogue
(``rope_in_epilogue=True``), ``gemm_then_rope_*`` is the op's other path (cuBLAS GEMMs into the
packed output, then our RoPE kernel in place); ``gemm_alone`` is the ceiling. Reports median ms
(triton.testing.do_bench), TFLOP/s of the projection GEMMs, and that as ``fraction_of_gemm``, a
fraction of the rate of a square bf16 cuBLAS GEMM measured in the same process. Backward passes go
through ``torch.autograd.grad`` (no leaf accumulation timed). HF eager is Llama attention's path:
three linears, then the rotary on [B, H, T, D] views; torch.compile(HF) is compiled at the long shape
only, its first call reported apart (``first_call_s``). A measurement that may not fit
``--budget-s`` is skipped and says so. The JSON is rewritten after every measurement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bench_rope import dprope_inv_freq, hf_apply_rotary_pos_emb
from common import Budget, Report, bench_ms, first_call_s, gemm_rate, parse_on_cuda, timed

import dprope_kernels as dk
from dprope_kernels.backends import unavailable

HIDDEN, HQ, HK, D = 4096, 32, 8, 128
LONG, DECODE = 16384, 32
RUNS = [(LONG, "fwd"), (LONG, "fwd+bwd"), (DECODE, "fwd"), (DECODE, "fwd+bwd")]
PROVIDERS = ["fused_triton", "fused_cuda", "gemm_then_rope_triton", "gemm_then_rope_cuda", "gemm_alone",
             "hf_eager", "hf_compile"]
MEASURE_S, AUTOTUNE_S, COMPILE_S = 3, 15, 25  # seconds: a measurement, the fused autotune, a compile


def hf_projection(x, w_q, w_k, w_v, inv_freq, pos):
    """Hugging Face Llama attention's projections and rotary, eager (x [1, N, hidden], pos [1, N])."""
    N = x.shape[1]
    q = F.linear(x, w_q).view(1, N, HQ, D).transpose(1, 2)
    k = F.linear(x, w_k).view(1, N, HK, D).transpose(1, 2)
    v = F.linear(x, w_v).view(1, N, HK, D).transpose(1, 2)
    q, k = hf_apply_rotary_pos_emb(q, k, inv_freq, pos.view(1, N))
    return q, k, v


def ours(x, w_q, w_k, w_v, phases, pos) -> dict:
    """Name -> callable for our two paths per backend and the GEMM alone, or why not."""
    w_qkv = torch.cat([w_q, w_k, w_v]).detach().requires_grad_(w_q.requires_grad)

    def projection(backend, epilogue):
        reason = unavailable(backend, x.device)
        if reason:
            return f"unavailable: {reason}"
        return lambda: dk.fused_qk_rope_projection(x, w_q, w_k, phases, pos, w_v=w_v, backend=backend,
                                                   validate=False, rope_in_epilogue=epilogue)

    out = {f"fused_{backend}": projection(backend, True) for backend in ("triton", "cuda")}
    out |= {f"gemm_then_rope_{backend}": projection(backend, False) for backend in ("triton", "cuda")}
    out["gemm_alone"] = lambda: (x @ w_qkv.t(),)
    return out


def providers(x, w_q, w_k, w_v, pos, compiled) -> dict:
    """Ours, then HF eager, then torch.compile(HF) (last: compiling costs the most time)."""
    inv_freq = dprope_inv_freq(D)
    out = ours(x, w_q, w_k, w_v, dk.phase_tensor(inv_freq, device="cuda"), pos)
    inv_freq = inv_freq.cuda()
    out["hf_eager"] = lambda: hf_projection(x, w_q, w_k, w_v, inv_freq, pos)
    out["hf_compile"] = (compiled if isinstance(compiled, str)
                         else lambda: compiled(x, w_q, w_k, w_v, inv_freq, pos))
    return out


def _needs(name: str, N: int, report: Report) -> float:
    if name == "hf_compile" and name not in report.data["first_call_s"]:
        return COMPILE_S
    if name == "fused_triton" and N not in report.data["autotuned_tokens"]:
        return AUTOTUNE_S
    return MEASURE_S


def run_shape(report: Report, budget: Budget, N: int, mode: str, rate: float, compiled) -> None:
    torch.manual_seed(0)

    def param(*shape):
        weights = torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * shape[-1] ** -0.5
        return weights.requires_grad_(mode != "fwd")

    x = param(1, N, HIDDEN)  # [B, T, hidden], as the fused op takes it
    w_q, w_k, w_v = param(HQ * D, HIDDEN), param(HK * D, HIDDEN), param(HK * D, HIDDEN)
    pos = torch.randint(0, 16384, (1, N), device="cuda")
    flops = 2 * N * HIDDEN * (HQ + 2 * HK) * D * (3 if mode == "fwd+bwd" else 1)
    rows = report.run(shape={"N": N, "hidden": HIDDEN, "Hq": HQ, "Hk": HK, "D": D}, **{"pass": mode})
    for name, fn in providers(x, w_q, w_k, w_v, pos, compiled).items():
        skipped = fn if isinstance(fn, str) else budget.skip(_needs(name, N, report))
        if skipped:
            report.record(rows, name, skipped)
            continue
        if name == "hf_compile" and name not in report.data["first_call_s"]:
            report.data["first_call_s"][name] = first_call_s(fn)
        if name == "fused_triton" and N not in report.data["autotuned_tokens"]:
            report.data["first_call_s"][f"fused_triton N={N} (autotune)"] = first_call_s(fn)
            report.data["autotuned_tokens"].append(N)
        inputs = (x, w_q, w_k, w_v)
        ms = bench_ms(timed(fn, inputs, mode))
        tflops = flops / (ms * 1e-3)
        report.record(rows, name, {"ms": ms, "TFLOP/s": tflops / 1e12, "fraction_of_gemm": tflops / rate})


def plan() -> list[str]:
    """What the benchmark measures, in order."""
    return [f"{mode} x[1,{N},{HIDDEN}] -> q/k/v {HQ}/{HK}/{HK} heads of {D}, bf16: {', '.join(PROVIDERS)}"
            + ("" if N == LONG else " (hf_compile not: compiled at the long shape only)") for N, mode in RUNS]


def main():
    args = parse_on_cuda(__doc__, plan)
    if args is None:
        return
    budget = Budget(args.budget_s)
    rate = gemm_rate()
    report = Report(args.out, **{"gemm_rate_TFLOP/s": rate / 1e12, "first_call_s": {},
                                 "autotuned_tokens": []})
    long_only = "not measured: compiled at the long shape only (each shape recompiles)"
    compiled = torch.compile(hf_projection, dynamic=False)
    for N, mode in RUNS:
        run_shape(report, budget, N, mode, rate, compiled if N == LONG else long_only)
    report.finish()


if __name__ == "__main__":
    main()
