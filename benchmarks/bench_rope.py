"""GPU benchmark of RoPE apply: ours (triton, cuda) vs HF eager, torch.compile(HF), Liger-Kernel.

    python benchmarks/bench_rope.py --out benchmarks/results/rope-<device>.json

Shapes (issue 3): bf16 q [4, 4096, 32, 128], k [4, 4096, 8, 128], per-token positions, and a
decode-like B=64, T=1. Reports median ms (triton.testing.do_bench), GB/s of q+k read and
written, and that as a fraction of the measured device copy bandwidth.
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

import dprope_kernels as dk
from dprope_kernels.backends import unavailable
from common import report_header, write_report


def hf_rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def hf_apply_rotary_pos_emb(q, k, inv_freq, position_ids):
    """Hugging Face Llama's rotary path: cos/sin built from float32 angles, then applied ([B, H, T, D])."""
    freqs = (inv_freq[None, :, None].float() @ position_ids[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(q.dtype)[:, None], emb.sin().to(q.dtype)[:, None]
    return q * cos + hf_rotate_half(q) * sin, k * cos + hf_rotate_half(k) * sin


def copy_bandwidth(nbytes: int) -> float:
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src))
    return 2 * src.numel() * 2 / (ms * 1e-3)


def providers(q, k, inv_freq, pos):
    phases = dk.phase_tensor(inv_freq, device="cuda")
    q_hf, k_hf = q.transpose(1, 2), k.transpose(1, 2)
    out = {
        "hf_eager": lambda: hf_apply_rotary_pos_emb(q_hf, k_hf, inv_freq.cuda(), pos),
        "hf_compile": (lambda f: lambda: f(q_hf, k_hf, inv_freq.cuda(), pos))(torch.compile(hf_apply_rotary_pos_emb)),
    }
    for backend in ("triton", "cuda"):
        if unavailable(backend, q.device) is None:
            out[f"dprope_{backend}"] = (lambda b: lambda: dk.apply_rope(q, k, phases, pos, backend=b, validate=False))(backend)
    try:
        from liger_kernel.ops.rope import LigerRopeFunction

        freqs = (inv_freq.cuda().float()[None, :, None] @ pos[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
        out["liger"] = lambda: LigerRopeFunction.apply(q_hf, k_hf, cos, sin)
    except Exception as err:  # not installed here: say so in the results
        out["liger"] = f"unavailable: {err}"
    return out


def run_shape(B, T, Hq, Hk, D, backward: bool, bandwidth: float) -> dict:
    torch.manual_seed(0)
    q = torch.randn(B, T, Hq, D, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
    k = torch.randn(B, T, Hk, D, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
    inv_freq = dk.plan_dprope(head_dim=D, factor=4).inv_freq
    pos = torch.randint(0, 16384, (B, T), device="cuda")
    nbytes = 2 * (q.numel() + k.numel()) * q.element_size() * (2 if backward else 1)
    rows = {}
    for name, fn in providers(q, k, inv_freq, pos).items():
        if isinstance(fn, str):
            rows[name] = fn
            continue
        if backward:
            gq, gk = torch.randn_like(q), torch.randn_like(k)

            def step(fn=fn):
                oq, ok = fn()
                torch.autograd.backward((oq, ok), (gq.transpose(1, 2) if oq.shape != q.shape else gq,
                                                   gk.transpose(1, 2) if ok.shape != k.shape else gk))
            bench = step
        else:
            bench = fn
        ms = triton.testing.do_bench(bench)
        rows[name] = {"ms": ms, "GB/s": nbytes / (ms * 1e-3) / 1e9, "fraction_of_copy": nbytes / (ms * 1e-3) / bandwidth}
    return {"shape": dict(B=B, T=T, Hq=Hq, Hk=Hk, D=D), "pass": "fwd+bwd" if backward else "fwd", "results": rows}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    bandwidth = copy_bandwidth(1 << 30)
    report = report_header(**{"copy_bandwidth_GB/s": bandwidth / 1e9})
    for shape in [(4, 4096, 32, 8, 128), (64, 1, 32, 8, 128)]:
        for backward in (False, True):
            report["runs"].append(run_shape(*shape, backward=backward, bandwidth=bandwidth))
    # histogram: 64 pairs x 2**20 positions x 2 strategies
    plan = dk.plan_dprope(factor=4)
    phases = torch.cat([dk.phase_tensor(plan.tables["extrapolation"]), dk.phase_tensor(plan.tables["interpolation"])]).cuda()
    for backend in ("triton", "cuda"):
        if unavailable(backend, phases.device) is None:
            ms = triton.testing.do_bench(lambda: dk.angle_histogram(phases, length=1 << 20, phases=True, backend=backend))
            report[f"histogram_{backend}_ms"] = ms
    write_report(report, args.out)


if __name__ == "__main__":
    main()
