"""GPU benchmark of RoPE apply: ours (triton, cuda) vs HF eager, torch.compile(HF), Liger-Kernel, flash-attn.

    python benchmarks/bench_rope.py --out benchmarks/results/rope-<device>.json [--budget-s 50]
    python benchmarks/bench_rope.py --dry-run     # what it measures, in order (no GPU)

Runs, most valuable first (RUNS): bf16 q [4, 4096, 32, 128], k [4, 4096, 8, 128] with per-token
positions: the forward, the backward alone, forward + backward; then a decode step (B=64, T=1):
forward, forward + backward. Reports median ms (triton.testing.do_bench), GB/s of q+k read and
written (per pass), and that as ``fraction_of_copy``, a fraction of the device copy bandwidth
measured in the same process. Backward passes go through ``torch.autograd.grad`` for every provider
(no leaf accumulation timed). Liger-Kernel and flash-attn are measured where importable
(flash-attn's rotary takes one position range shared by the batch). torch.compile(HF) is compiled
once, at the long shape (each shape would recompile); its first call's seconds, compiling included,
are reported apart (``first_call_s``) and the decode runs say why it is absent. A measurement that may
not fit ``--budget-s`` is skipped and says so. The JSON is rewritten after every measurement.
"""

from __future__ import annotations

import functools

import torch
from common import Budget, Report, bench_ms, copy_bandwidth, first_call_s, parse_on_cuda, timed

import dprope_kernels as dk
from dprope_kernels.backends import unavailable

LONG, DECODE = (4, 4096, 32, 8, 128), (64, 1, 32, 8, 128)
RUNS = [(LONG, "fwd"), (LONG, "bwd"), (LONG, "fwd+bwd"), (DECODE, "fwd"), (DECODE, "fwd+bwd")]
PROVIDERS = ["dprope_triton", "dprope_cuda", "liger", "flash_attn", "hf_eager", "hf_compile"]
MEASURE_S, COMPILE_S = 3, 25  # seconds a measurement may take (Triton JIT included); a compile


def hf_rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def hf_apply_rotary_pos_emb(q, k, inv_freq, position_ids):
    """Hugging Face Llama's rotary path: cos/sin built from float32 angles, then applied ([B, H, T, D])."""
    freqs = (inv_freq[None, :, None].float() @ position_ids[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(q.dtype)[:, None], emb.sin().to(q.dtype)[:, None]
    return q * cos + hf_rotate_half(q) * sin, k * cos + hf_rotate_half(k) * sin


@functools.lru_cache
def dprope_inv_freq(head_dim: int) -> torch.Tensor:
    return dk.plan_dprope(head_dim=head_dim, factor=4).inv_freq


def liger(q_hf, k_hf, inv_freq, pos):
    """Liger-Kernel's RoPE on [B, H, T, D] views, or why it is unavailable."""
    try:
        from liger_kernel.ops.rope import LigerRopeFunction
    except Exception as err:  # not installed here: say so in the results
        return f"unavailable: {err}"
    freqs = (inv_freq.float()[None, :, None] @ pos[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(q_hf.dtype), emb.sin().to(q_hf.dtype)
    return lambda: LigerRopeFunction.apply(q_hf, k_hf, cos, sin)


def flash_attn(q, k, inv_freq):
    """flash-attn's rotary kernel on [B, T, H, D] (positions 0..T-1 for every sequence), or why not."""
    try:
        from flash_attn.layers.rotary import apply_rotary_emb
    except Exception as err:
        return f"unavailable: {err}"
    freqs = torch.outer(torch.arange(q.shape[1], device=q.device, dtype=torch.float32), inv_freq.float())
    cos, sin = freqs.cos().to(q.dtype), freqs.sin().to(q.dtype)
    return lambda: (apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin))


def providers(q, k, inv_freq, pos, compiled) -> dict:
    """Name -> a callable returning (q_out, k_out), or a string saying why it is not measured."""
    phases = dk.phase_tensor(inv_freq, device="cuda")
    inv_freq = inv_freq.cuda()
    q_hf, k_hf = q.transpose(1, 2), k.transpose(1, 2)

    def ours(backend):
        reason = unavailable(backend, q.device)
        if reason:
            return f"unavailable: {reason}"
        return lambda: dk.apply_rope(q, k, phases, pos, backend=backend, validate=False)

    out = {f"dprope_{backend}": ours(backend) for backend in ("triton", "cuda")}
    out["liger"] = liger(q_hf, k_hf, inv_freq, pos)
    out["flash_attn"] = flash_attn(q, k, inv_freq)
    out["hf_eager"] = lambda: hf_apply_rotary_pos_emb(q_hf, k_hf, inv_freq, pos)
    out["hf_compile"] = (compiled if isinstance(compiled, str)
                         else lambda: compiled(q_hf, k_hf, inv_freq, pos))
    return out


def run_shape(report: Report, budget, shape, mode: str, bandwidth: float, compiled) -> None:
    B, T, Hq, Hk, D = shape
    torch.manual_seed(0)
    q = torch.randn(B, T, Hq, D, device="cuda", dtype=torch.bfloat16, requires_grad=mode != "fwd")
    k = torch.randn(B, T, Hk, D, device="cuda", dtype=torch.bfloat16, requires_grad=mode != "fwd")
    pos = torch.randint(0, 16384, (B, T), device="cuda")
    nbytes = 2 * (q.numel() + k.numel()) * q.element_size() * (2 if mode == "fwd+bwd" else 1)
    rows = report.run(shape={"B": B, "T": T, "Hq": Hq, "Hk": Hk, "D": D}, **{"pass": mode})
    for name, fn in providers(q, k, dprope_inv_freq(D), pos, compiled).items():
        needs = COMPILE_S if name == "hf_compile" and name not in report.data["first_call_s"] else MEASURE_S
        skipped = fn if isinstance(fn, str) else budget.skip(needs)
        if skipped:
            report.record(rows, name, skipped)
            continue
        if name == "hf_compile" and name not in report.data["first_call_s"]:
            report.data["first_call_s"][name] = first_call_s(fn)
        ms = bench_ms(timed(fn, (q, k), mode))
        rate = nbytes / (ms * 1e-3)
        report.record(rows, name, {"ms": ms, "GB/s": rate / 1e9, "fraction_of_copy": rate / bandwidth})


def plan() -> list[str]:
    """What the benchmark measures, in order."""
    return [f"{mode} q[{B},{T},{Hq},{D}] k[{B},{T},{Hk},{D}] bf16: {', '.join(PROVIDERS)}"
            + ("" if (B, T, Hq, Hk, D) == LONG else " (hf_compile not: compiled at the long shape only)")
            for (B, T, Hq, Hk, D), mode in RUNS]


def main():
    args = parse_on_cuda(__doc__, plan)
    if args is None:
        return
    budget = Budget(args.budget_s)
    bandwidth = copy_bandwidth()
    report = Report(args.out, **{"copy_bandwidth_GB/s": bandwidth / 1e9, "first_call_s": {}})
    long_only = "not measured: compiled at the long shape only (each shape recompiles)"
    compiled = torch.compile(hf_apply_rotary_pos_emb, dynamic=False)
    for shape, mode in RUNS:
        run_shape(report, budget, shape, mode, bandwidth, compiled if shape == LONG else long_only)
    report.finish()


if __name__ == "__main__":
    main()
