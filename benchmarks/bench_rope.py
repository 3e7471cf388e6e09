"""GPU benchmark of RoPE apply: ours (triton, cuda) vs HF eager, torch.compile(HF), Liger-Kernel, flash-attn.

    python benchmarks/bench_rope.py --out benchmarks/results/rope-<device>.json

Shapes (issue 3): bf16 q [4, 4096, 32, 128], k [4, 4096, 8, 128], per-token positions, and a
decode-like B=64, T=1; the long shape's fwd+bwd first, as it matters most. Reports median ms
(triton.testing.do_bench), GB/s of q+k read and written, and that as ``fraction_of_copy``, a
fraction of the device copy bandwidth measured in the same process. Liger-Kernel and flash-attn
are measured where importable (flash-attn's rotary takes one position range shared by the batch).
The JSON is rewritten after every measurement, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import functools

import torch
from common import Report, bench_ms, copy_bandwidth, report_path_on_cuda

import dprope_kernels as dk
from dprope_kernels.backends import unavailable

LONG, DECODE = (4, 4096, 32, 8, 128), (64, 1, 32, 8, 128)
RUNS = [(LONG, True), (LONG, False), (DECODE, False), (DECODE, True)]  # (shape, backward), by value


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


def providers(q, k, inv_freq, pos) -> dict:
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
    out["hf_eager"] = lambda: hf_apply_rotary_pos_emb(q_hf, k_hf, inv_freq, pos)
    out["liger"] = liger(q_hf, k_hf, inv_freq, pos)
    out["flash_attn"] = flash_attn(q, k, inv_freq)
    compiled = torch.compile(hf_apply_rotary_pos_emb)  # last: compiling costs the most time
    out["hf_compile"] = lambda: compiled(q_hf, k_hf, inv_freq, pos)
    return out


def timed(fn, q, k, backward: bool):
    """What to time: the forward alone, or forward and backward with fixed random cotangents."""
    if not backward:
        return fn
    gq, gk = torch.randn_like(q), torch.randn_like(k)

    def step():
        oq, ok = fn()
        torch.autograd.backward((oq, ok), (gq.transpose(1, 2) if oq.shape != q.shape else gq,
                                           gk.transpose(1, 2) if ok.shape != k.shape else gk))
    return step


def run_shape(report: Report, B, T, Hq, Hk, D, backward: bool, bandwidth: float) -> None:
    torch.manual_seed(0)
    q = torch.randn(B, T, Hq, D, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
    k = torch.randn(B, T, Hk, D, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
    pos = torch.randint(0, 16384, (B, T), device="cuda")
    nbytes = 2 * (q.numel() + k.numel()) * q.element_size() * (2 if backward else 1)
    rows = report.run(shape={"B": B, "T": T, "Hq": Hq, "Hk": Hk, "D": D},
                      **{"pass": "fwd+bwd" if backward else "fwd"})
    for name, fn in providers(q, k, dprope_inv_freq(D), pos).items():
        if isinstance(fn, str):
            report.record(rows, name, fn)
            continue
        ms = bench_ms(timed(fn, q, k, backward))
        rate = nbytes / (ms * 1e-3)
        report.record(rows, name, {"ms": ms, "GB/s": rate / 1e9, "fraction_of_copy": rate / bandwidth})


def main():
    out = report_path_on_cuda(__doc__)
    bandwidth = copy_bandwidth()
    report = Report(out, **{"copy_bandwidth_GB/s": bandwidth / 1e9})
    for shape, backward in RUNS:
        run_shape(report, *shape, backward=backward, bandwidth=bandwidth)
    report.finish()


if __name__ == "__main__":
    main()
