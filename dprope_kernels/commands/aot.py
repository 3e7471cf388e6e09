"""Ahead-of-time compile report: every Triton kernel variant the launch code produces, compiled
for real NVIDIA targets (sm_80, sm_90) on a machine without a GPU.

For each variant it records registers, spills and stack (Triton's bundled ``ptxas -v`` on the
PTX Triton produced), shared memory, theoretical occupancy on the target's SM, and PTX features
(vector widths of global loads/stores, tensor-core instructions, how sin/cos are evaluated, 64-bit
division). :func:`budget_violations` checks them against the budgets the project holds itself to.

Variants come from the package's own launch functions: they are called with ``meta`` tensors
while the kernel object is replaced by a recorder, so the arguments compiled are exactly what
the launch code passes; for the autotuned fused projection every config the pruning keeps is
compiled.

    python -m dprope_kernels.commands.aot --json "benchmarks/results/static-{arch}.json"
    (TRITON_INTERPRET must be unset; {arch} becomes sm80 / sm90, one file each)

The numbers are static: what the compiled code needs, not how fast it runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import io
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import torch

from .. import files

META = torch.device("meta")
ARCHS = (90, 80)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
HEAD_DIMS = (64, 128, 256)
PAIRINGS = {"neox": (False, False), "gptj": (True, True), "gptj>neox": (True, False),
            "neox>gptj": (False, True)}

# per-SM limits: registers, shared memory (and the driver's 1 KB per CTA), threads, CTAs
SM_LIMITS = {
    90: dict(regs=65536, smem=228 * 1024, smem_per_cta=227 * 1024, threads=2048, ctas=32),
    80: dict(regs=65536, smem=164 * 1024, smem_per_cta=163 * 1024, threads=2048, ctas=32),
}
ROPE_MIN_OCCUPANCY = 0.5

_PTX_PATTERNS = {
    "wgmma": r"\bwgmma\.mma_async",
    "mma.sync": r"\bmma\.sync",
    "ldmatrix": r"\bldmatrix",
    "cp.async": r"\bcp\.async\.(?:ca|cg)",
    "ld.global.v": r"\bld\.global(?:\.\w+)*\.v[248]\.",
    "ld.global.narrow": r"\bld\.global(?:\.nc)?(?:\.L\w+::\w+)*\.(?:b|u|s|f)(?:8|16|32)\b",
    "st.global.v": r"\bst\.global(?:\.\w+)*\.v[248]\.",
    "st.global.narrow": r"\bst\.global(?:\.L\w+::\w+)*\.(?:b|u|s|f)(?:8|16|32)\b",
    "cvt.f32.s64": r"\bcvt\.rn\.f32\.s64",
    "divrem64": r"\b(?:div|rem)\.[su]64",
    "f64": r"\b(?:mul|fma|add|sub)\.[a-z.]*f64",
    "payne_hanek": r"__cudart_i2opi_f",
    "local": r"\b(?:ld|st)\.local",
    "atom": r"\b(?:atom|red)\.",
}


@dataclass
class Variant:
    kernel: str  # "rope", "fused", "histogram"
    name: str
    args: tuple
    kwargs: dict
    tiles: dict = field(default_factory=dict)
    specialization: bool = False  # held to compiling without spills only: not a launch the package tunes


# ---------------------------------------------------------------------------------------------
# what the launch code passes
# ---------------------------------------------------------------------------------------------


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records instead of launching."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


@contextlib.contextmanager
def _recording(module, name: str):
    real = getattr(module, name)
    recorder = _Recorder(real)
    setattr(module, name, recorder)
    try:
        yield recorder
    finally:
        setattr(module, name, real)


def _recorded(module, name, launch, *args) -> tuple[object, list]:
    with _recording(module, name) as recorder:
        launch(*args)
    return recorder.real, recorder.calls


def _rope_variant(name: str, q, k, il: bool, ol: bool, out_q=None, out_k=None, positions=None) -> Variant:
    from ..triton import rope as mod

    D = q.shape[-1]
    phases = torch.empty(D // 2, dtype=torch.int64, device=META)
    positions = torch.empty(q.shape[:2], dtype=torch.int64, device=META) if positions is None else positions
    out_q = torch.empty_like(q) if out_q is None else out_q
    out_k = torch.empty_like(k) if out_k is None else out_k
    _, calls = _recorded(mod, "rope_kernel", mod.rope_triton, q, k, out_q, out_k, phases, positions, il, ol,
                         False)
    args, kwargs = calls[0]
    tiles = {x: kwargs[x] for x in ("BLOCK_T", "BLOCK_H", "BLOCK_P")}
    # what one head block of a program loads: both halves of BLOCK_T x BLOCK_H x BLOCK_P pairs
    load = tiles["BLOCK_T"] * tiles["BLOCK_H"] * tiles["BLOCK_P"] * 2 * q.element_size()
    return Variant("rope", name, args, kwargs, tiles | {"warps": kwargs["num_warps"], "load_bytes": load})


def rope_variants() -> list[Variant]:
    """Each dtype x head dim x pairing (in > out), for long sequences, a decode step of 64
    sequences, and a single token."""
    out = []
    for dname, dtype in DTYPES.items():
        for D in HEAD_DIMS:
            for pname, (il, ol) in PAIRINGS.items():
                for B, T in ((4, 4096), (64, 1), (1, 1)):
                    q = torch.empty(B, T, 32, D, dtype=dtype, device=META)
                    k = torch.empty(B, T, 8, D, dtype=dtype, device=META)
                    out.append(_rope_variant(f"rope {dname} D={D} {pname} B={B} T={T}", q, k, il, ol))
    return out


def _fused_variants(label: str, x, ws, D: int, il: bool, configs: int | None = None) -> list[Variant]:
    """Variants of the fused projection of x ``[N, hidden]`` by ``ws`` (each ``[H * D, hidden]`` or
    None): every config the pruning keeps for them (or the first ``configs``)."""
    from ..triton import fused_projection as mod

    heads = tuple(0 if w is None else w.shape[0] // D for w in ws)
    packed = torch.empty(x.shape[0], sum(heads), D, dtype=x.dtype, device=META)
    phases = torch.empty(D // 2, dtype=torch.int64, device=META)
    pos = torch.empty(x.shape[0], dtype=torch.int64, device=META)
    ss = torch.empty(0, 0, dtype=torch.float32, device=META)
    tuner, calls = _recorded(mod, "qkv_rope_projection_kernel", mod.qkv_rope_projection_triton, x, ws,
                             (None, None, None), (None, None), 1e-6, packed, ss, heads, phases, pos, il)
    args, kwargs = calls[0]
    named = dict(zip(tuner.arg_names, args))
    out = []
    for cfg in mod.prune_configs(tuner.configs, named, **kwargs)[:configs]:
        tiles = dict(cfg.kwargs, warps=cfg.num_warps, stages=cfg.num_stages)
        name = f"{label} M{cfg.kwargs['BLOCK_M']} K{cfg.kwargs['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages}"
        out.append(Variant("fused", name, args, dict(kwargs, **cfg.all_kwargs()), tiles))
    return out


def fused_variants() -> list[Variant]:
    """Each dtype x head dim x pairing x every config the pruning keeps, for 16384 and 32 tokens."""
    out = []
    hidden = 4096
    for dname, dtype in DTYPES.items():
        for D in HEAD_DIMS:
            heads = (4096 // D, 1024 // D, 1024 // D)
            for il in (False, True):
                for N in (16384, 32):
                    x = torch.empty(N, hidden, dtype=dtype, device=META)
                    ws = tuple(torch.empty(h * D, hidden, dtype=dtype, device=META) for h in heads)
                    label = f"fused {dname} D={D} {'gptj' if il else 'neox'} N={N}"
                    out += _fused_variants(label, x, ws, D, il)
    return out


def _histogram_variant(label: str, n_pos: int, start: int, bins: int, positions=None, weights=None
                       ) -> Variant:
    from ..triton import histogram as mod

    phases = torch.empty(64, dtype=torch.int64, device=META)
    dtype = torch.float64 if weights is not None and weights.is_floating_point() else torch.int64
    res = torch.empty(64, bins, dtype=dtype, device=META)
    _, calls = _recorded(mod, "histogram_kernel", mod.histogram_triton, phases, positions, n_pos, start, bins,
                         weights, res)
    args, kwargs = calls[0]
    tiles = {x: kwargs[x] for x in ("BLOCK", "BLOCK_BINS") if x in kwargs}
    return Variant("histogram", label, args, kwargs, tiles)


def histogram_variants() -> list[Variant]:
    """Ranges and position tensors, with and without weights, for 360 bins and for 2**24 bins."""
    out = []
    n_pos = 1 << 20
    for bins in (360, 1 << 24):
        for label, pdt, wdt in [("range", None, None), ("positions", torch.int64, None),
                                ("positions +float weights", torch.int64, torch.float64),
                                ("range +int weights", None, torch.int64)]:
            pos = torch.empty(n_pos, dtype=pdt, device=META) if pdt else None
            w = torch.empty(n_pos, dtype=wdt, device=META) if wdt else None
            out.append(_histogram_variant(f"histogram bins={bins} {label}", n_pos, 0, bins, pos, w))
    return out


# ---------------------------------------------------------------------------------------------
# what else a caller can produce: Triton compiles one kernel per argument specialization (an int
# argument is a constexpr when it is 1, else int32 or, from 2**31 on, int64; a pointer is 16-byte
# aligned or not), and the interpreter never compiles any of them
# ---------------------------------------------------------------------------------------------

BIG = 1 << 31  # the first stride Triton passes as int64


def _strided(shape, strides, dtype=torch.bfloat16, offset=0):
    """A meta tensor with these strides, ``offset`` elements into its storage."""
    return torch.empty(0, dtype=dtype, device=META).as_strided(shape, strides, offset)


def _rope_layouts(B: int, T: int, H: int, D: int) -> dict:
    """``[B, T, H, D]`` tensors of each stride class."""
    dense = (T * H * D, H * D, D, 1)
    return {
        "int32": _strided((B, T, H, D), dense),
        "int64": _strided((B, T, H, D), (BIG, H * D, D, 1)),  # sequences 2**31 elements apart
        "int64 tokens": _strided((B, T, H, D), (T * H * D, BIG, D, 1)),
        "dim stride 2": _strided((B, T, H, D), tuple(2 * s for s in dense)),
        "heads apart": _strided((B, T, H, D), (T * H * D, D, T * D, 1)),  # HF's [B, H, T, D] transposed
        "unaligned": _strided((B, T, H, D), dense, offset=1),
    }


def rope_specializations() -> list[Variant]:
    """q, k, their outputs and the positions, each in every stride class beside the others dense; every
    stride int64; k absent beside an int64 q (a sequence past 2**31 elements: the first GPU run's
    CompilationError); a decode step of int64 sequences; positions broadcast over sequences, int32."""
    B, T, Hq, Hk, D = 2, 64, 8, 2, 128
    qs, ks = _rope_layouts(B, T, Hq, D), _rope_layouts(B, T, Hk, D)
    dense_pos = torch.empty(B, T, dtype=torch.int64, device=META)
    cases = {f"q {c}": dict(q=qs[c]) for c in qs if c != "int32"}
    cases |= {f"k {c}": dict(k=ks[c]) for c in ks if c != "int32"}
    cases |= {f"outputs {c}": dict(out_q=qs[c], out_k=ks[c]) for c in ("int64", "dim stride 2", "unaligned")}
    cases |= {
        "every stride int64": dict(q=qs["int64"], k=ks["int64"], out_q=qs["int64"], out_k=ks["int64"],
                                   positions=_strided((B, T), (BIG, 1), torch.int64)),
        "q int64 k absent": dict(q=qs["int64"], k=_strided((B, T, 0, D), (0, 0, D, 1))),
        "positions int64 strides": dict(positions=_strided((B, T), (BIG, BIG // 2), torch.int64)),
        "positions broadcast int32": dict(positions=_strided((B, T), (0, 1), torch.int32)),
        "decode int64": dict(q=_strided((64, 1, Hq, D), (BIG, Hq * D, D, 1)),
                             k=_strided((64, 1, Hk, D), (BIG, Hk * D, D, 1))),
    }
    out = []
    for name, case in cases.items():
        q, k = case.get("q", qs["int32"]), case.get("k", ks["int32"])
        for pname in ("neox", "gptj>neox"):
            il, ol = PAIRINGS[pname]
            out_q = case.get("out_q", torch.empty_like(q)) if q.shape[0] == B else None
            out_k = case.get("out_k", torch.empty_like(k)) if k.shape[0] == B else None
            pos = case.get("positions", dense_pos if q.shape[0] == B else None)
            out.append(_rope_variant(f"rope specialization: {name} {pname}", q, k, il, ol, out_q, out_k, pos))
    return out


def fused_specializations() -> list[Variant]:
    """The projection's operands in each stride class (the first config each): x past 2**31 elements,
    x's columns apart, x unaligned, a transposed weight beside dense ones, a weight or x with int64
    strides (copied by the launch code), no v."""
    N, hidden, D = 64, 4096, 128
    x = torch.empty(N, hidden, dtype=torch.bfloat16, device=META)
    ws = [torch.empty(h * D, hidden, dtype=torch.bfloat16, device=META) for h in (8, 2, 2)]
    cases = {
        "x past 2**31 elements": dict(x=_strided((BIG // hidden + 64, hidden), (hidden, 1))),
        "x columns apart": dict(x=_strided((N, hidden), (1, N))),
        "x int64 rows": dict(x=_strided((N, hidden), (BIG, 1))),
        "x unaligned": dict(x=_strided((N, hidden), (hidden, 1), offset=1)),
        "w_k transposed": dict(ws=[ws[0], _strided(ws[1].shape, (1, ws[1].shape[0])), ws[2]]),
        "w_q int64 rows": dict(ws=[_strided(ws[0].shape, (BIG, 1)), ws[1], ws[2]]),
        "no w_v": dict(ws=[ws[0], ws[1], None]),
    }
    out = []
    for name, case in cases.items():
        operands = case.get("x", x), tuple(case.get("ws", ws))
        out += _fused_variants(f"fused specialization: {name}", *operands, D, False, configs=1)
    return out


def histogram_specializations() -> list[Variant]:
    """2**32 positions from a start past 2**31 (int64 count and start); 2**31 + 1 position tensor."""
    big_pos = torch.empty(BIG + 1, dtype=torch.int64, device=META)
    return [_histogram_variant("histogram specialization: range past 2**31", 1 << 32, BIG + 5, 360),
            _histogram_variant("histogram specialization: positions past 2**31", BIG + 1, 0, 360, big_pos),
            _histogram_variant("histogram specialization: weights past 2**31", BIG + 1, 0, 360, big_pos,
                               torch.empty(BIG + 1, dtype=torch.float64, device=META))]


def variants(kinds=("rope", "fused", "histogram")) -> list[Variant]:
    makers = {"rope": (rope_variants, rope_specializations), "fused": (fused_variants, fused_specializations),
              "histogram": (histogram_variants, histogram_specializations)}
    out = []
    for kind in kinds:
        launches, specializations = makers[kind]
        out += launches() + [dataclasses.replace(v, specialization=True) for v in specializations()]
    return out


# ---------------------------------------------------------------------------------------------
# compiling and reading the compiled code
# ---------------------------------------------------------------------------------------------


def _kernel_fn(kind: str):
    from ..triton import fused_projection, histogram, rope

    return {"rope": rope.rope_kernel, "fused": fused_projection.qkv_rope_projection_kernel.fn,
            "histogram": histogram.histogram_kernel}[kind]


def _compile(v: Variant, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = _kernel_fn(v.kernel)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*v.args, **v.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, options, bound, specialization, options)
    compile_options = {k: v.kwargs[k] for k in ("num_warps", "num_stages", "maxnreg") if k in v.kwargs}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    with contextlib.redirect_stdout(io.StringIO()):  # Triton prints the whole PTX when ptxas fails
        return triton.compile(source, target=target, options=compile_options)


def _ptxas_report(ptx: str, arch: int, fp_fusion: bool) -> dict:
    from triton.backends.nvidia import compiler as nv

    ptxas = nv.get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [ptxas, "-v", *([] if fp_fusion else ["--fmad=false"]), "--regAllocOptLevel=2",
               f"--gpu-name={nv.sm_arch_from_capability(arch)}", src, "-o", os.path.join(d, "kernel.o")]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr

    def grab(pattern: str) -> int:
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    return {"regs": grab(r"Used (\d+) registers"), "spill_stores": grab(r"(\d+) bytes spill stores"),
            "spill_loads": grab(r"(\d+) bytes spill loads"), "stack": grab(r"(\d+) bytes stack frame")}


def occupancy(regs: int, warps: int, shared: int, arch: int) -> tuple[float, int]:
    """(theoretical occupancy, resident CTAs per SM) from registers, warps and shared memory."""
    lim = SM_LIMITS[arch]
    threads = 32 * warps
    per_warp = -(-regs * 32 // 256) * 256  # allocation granule: 256 registers per warp
    by_regs = lim["regs"] // (per_warp * warps) if regs else lim["ctas"]
    smem = -(-(shared + 1024) // 128) * 128
    by_smem = lim["smem"] // smem if shared <= lim["smem_per_cta"] else 0
    ctas = min(by_regs, by_smem, lim["threads"] // threads, lim["ctas"])
    return ctas * threads / lim["threads"], ctas


def ptx_features(ptx: str) -> dict:
    body = "\n".join(line for line in ptx.splitlines() if not line.lstrip().startswith("//"))
    return {name: len(re.findall(pattern, body)) for name, pattern in _PTX_PATTERNS.items()}


def measure(v: Variant, arch: int) -> dict:
    row = {"kernel": v.kernel, "name": v.name, "arch": f"sm_{arch}", "tiles": v.tiles,
           "specialization": v.specialization}
    try:
        compiled = _compile(v, arch)
    except Exception as err:  # noqa: BLE001 - reported as a failed variant
        while err.__cause__ is not None:  # Triton nests the root cause in each calling frame's error
            err = err.__cause__
        return row | {"ok": False, "error": f"{type(err).__name__}: {str(err).strip()[:2000]}"}
    meta = compiled.metadata
    ptx = compiled.asm["ptx"]
    report = _ptxas_report(ptx, arch, meta.enable_fp_fusion)
    occ, ctas = occupancy(report["regs"], meta.num_warps, meta.shared, arch)
    if "load_bytes" in v.tiles:  # a RoPE program's loads of one head block, on every resident program
        report["bytes_in_flight_per_sm"] = v.tiles["load_bytes"] * ctas
    return row | report | {"ok": True, "shared": meta.shared, "warps": meta.num_warps,
                           "stages": meta.num_stages, "ctas_per_sm": ctas, "occupancy": round(occ, 4),
                           "ptx": ptx_features(ptx)}


def _measure_job(job):
    kinds, index, arch = job
    return measure(variants(kinds)[index], arch)


def compile_all(kinds=("rope", "fused", "histogram"), archs=ARCHS, jobs: int = 1) -> list[dict]:
    """Every variant for every arch (in ``jobs`` processes)."""
    count = len(variants(kinds))
    work = [(tuple(kinds), i, arch) for arch in archs for i in range(count)]
    if jobs <= 1:
        return [_measure_job(w) for w in work]
    with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_measure_job, work, chunksize=4))


# ---------------------------------------------------------------------------------------------
# budgets
# ---------------------------------------------------------------------------------------------


def budget_violations(row: dict) -> list[str]:
    """What a compiled variant breaks of the project's budgets (an empty list when none)."""
    if not row["ok"]:
        return [f"does not compile: {row['error'][:300]}"]
    bad = []
    p = row["ptx"]
    if row["spill_stores"] or row["spill_loads"] or row["stack"] or p["local"]:
        bad.append(f"spills {row['spill_stores']}/{row['spill_loads']} B, stack {row['stack']} B")
    if p["divrem64"]:
        bad.append(f"{p['divrem64']} 64-bit div/rem")
    if row.get("specialization"):  # odd strides and alignments: no vector or occupancy budget
        return bad
    if row["kernel"] != "histogram" and (p["payne_hanek"] or p["f64"]):
        bad.append("sin/cos with large-argument (float64) range reduction")
    if row["kernel"] == "rope":
        if row["occupancy"] < ROPE_MIN_OCCUPANCY:
            bad.append(f"occupancy {row['occupancy']:.0%} < {ROPE_MIN_OCCUPANCY:.0%}")
        if not p["ld.global.v"] or not p["st.global.v"] or p["ld.global.narrow"] or p["st.global.narrow"]:
            bad.append(f"global access not all 16-byte vectors "
                       f"(vector ld/st {p['ld.global.v']}/{p['st.global.v']}, "
                       f"narrow ld/st {p['ld.global.narrow']}/{p['st.global.narrow']})")
        t = row["tiles"]
        per_block = -(-t["BLOCK_T"] * t["BLOCK_H"] * t["BLOCK_P"] // (32 * t["warps"]))
        if not 0 < p["cvt.f32.s64"] <= per_block:
            bad.append(f"{p['cvt.f32.s64']} angle evaluations per thread, more than the {per_block} pairs it "
                       f"rotates per head block")
    if (row["kernel"] == "fused" and row["arch"] == "sm_90" and row["tiles"]["BLOCK_M"] >= 64
            and not p["wgmma"]):
        bad.append("no wgmma although BLOCK_M >= 64")
    return bad


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------


def markdown_table(rows: list[dict]) -> str:
    lines = ["| variant | arch | regs | spills (B) | smem (KB) | warps | occupancy | tensor cores | "
             "global ld/st (16 B vectors / narrow) | budget |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['name']} | {r['arch']} | — | — | — | — | — | — | — | FAILS TO COMPILE |")
            continue
        p = r["ptx"]
        tc = "wgmma" if p["wgmma"] else "mma.sync" if p["mma.sync"] else "—"
        bad = budget_violations(r)
        lines.append(
            f"| {r['name']} | {r['arch']} | {r['regs']} | {r['spill_stores'] + r['spill_loads']} | "
            f"{r['shared'] / 1024:.0f} | {r['warps']} | {r['occupancy']:.0%} | {tc} | "
            f"{p['ld.global.v']}/{p['ld.global.narrow']} · {p['st.global.v']}/{p['st.global.narrow']} | "
            f"{'ok' if not bad else '; '.join(bad)} |")
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    """One line per kernel and arch: the worst figures over its variants."""
    lines = ["| kernel | arch | variants | registers (max) | spills | occupancy (min) | "
             "loads in flight per SM (min, KB) | budget violations |", "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        kernel = f"{r['kernel']} (specializations)" if r.get("specialization") else r["kernel"]
        groups.setdefault((kernel, r["arch"]), []).append(r)
    for (kernel, arch), group in groups.items():
        ok = [r for r in group if r["ok"]]
        spills = sum(r["spill_stores"] + r["spill_loads"] for r in ok)
        violations = sum(1 for r in group if budget_violations(r))
        in_flight = [r["bytes_in_flight_per_sm"] / 1024 for r in ok if "bytes_in_flight_per_sm" in r]
        lines.append(
            f"| {kernel} | {arch} | {len(group)} | {max((r['regs'] for r in ok), default=0)} | {spills} B | "
            f"{min((r['occupancy'] for r in ok), default=0):.0%} | "
            f"{f'{min(in_flight):.0f}' if in_flight else '—'} | {violations} |")
    return "\n".join(lines)


def _environment(arch: str) -> dict:
    import datetime

    import triton

    from .. import __version__
    from ..provenance import source_commit

    return {"arch": arch, "triton": triton.__version__, "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "dprope_kernels": __version__,
            "commit": source_commit(),
            "note": "static figures from ptxas -v on Triton's PTX, compiled without a GPU; occupancy is "
                    "theoretical (per-SM register, shared-memory, thread and CTA limits)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dprope_kernels.commands.aot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=list(SM_LIMITS))
    parser.add_argument("--kernels", default="rope,fused,histogram")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json",
                        help="write the rows of each arch here; '{arch}' in the path becomes sm80 / sm90")
    parser.add_argument("--markdown", help="write the per-variant table here ('-': stdout)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: this report compiles for real GPU targets")
    rows = compile_all(tuple(args.kernels.split(",")), tuple(args.arch), args.jobs)
    if args.json:
        for arch in sorted({r["arch"] for r in rows}):
            report = {"environment": _environment(arch), "rows": [r for r in rows if r["arch"] == arch]}
            files.write_json(args.json.replace("{arch}", arch.replace("_", "")), report)
    table = markdown_table(rows)
    if args.markdown == "-":
        print(table)
    elif args.markdown:
        files.write_text(args.markdown, table + "\n")
    print(summary_table(rows))
    failed = [r for r in rows if budget_violations(r)]
    for r in failed:
        print(f"{r['arch']} {r['name']}: {'; '.join(budget_violations(r))}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
