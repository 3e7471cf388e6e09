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
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import torch

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


def rope_variants() -> list[Variant]:
    """Each dtype x head dim x pairing (in > out), for long sequences, a decode step of 64
    sequences, and a single token."""
    from ..triton import rope as mod

    out = []
    for dname, dtype in DTYPES.items():
        for D in HEAD_DIMS:
            for pname, (il, ol) in PAIRINGS.items():
                for B, T in ((4, 4096), (64, 1), (1, 1)):
                    q = torch.empty(B, T, 32, D, dtype=dtype, device=META)
                    k = torch.empty(B, T, 8, D, dtype=dtype, device=META)
                    phases = torch.empty(D // 2, dtype=torch.int64, device=META)
                    pos = torch.empty(B, T, dtype=torch.int64, device=META)
                    _, calls = _recorded(mod, "rope_kernel", mod.rope_triton, q, k, torch.empty_like(q),
                                         torch.empty_like(k), phases, pos, il, ol, False)
                    args, kwargs = calls[0]
                    tiles = {x: kwargs[x] for x in ("BLOCK_T", "BLOCK_P")} | {"warps": kwargs["num_warps"]}
                    out.append(Variant("rope", f"rope {dname} D={D} {pname} B={B} T={T}", args, kwargs,
                                       tiles))
    return out


def fused_variants() -> list[Variant]:
    """Each dtype x head dim x pairing x every config the pruning keeps, for 16384 and 32 tokens."""
    from ..triton import fused_projection as mod

    out = []
    hidden = 4096
    for dname, dtype in DTYPES.items():
        for D in HEAD_DIMS:
            heads = (4096 // D, 1024 // D, 1024 // D)
            for il in (False, True):
                for N in (16384, 32):
                    x = torch.empty(N, hidden, dtype=dtype, device=META)
                    ws = tuple(torch.empty(h * D, hidden, dtype=dtype, device=META) for h in heads)
                    packed = torch.empty(N, sum(heads), D, dtype=dtype, device=META)
                    phases = torch.empty(D // 2, dtype=torch.int64, device=META)
                    pos = torch.empty(N, dtype=torch.int64, device=META)
                    ss = torch.empty(0, 0, dtype=torch.float32, device=META)
                    tuner, calls = _recorded(mod, "qkv_rope_projection_kernel",
                                             mod.qkv_rope_projection_triton, x, ws, (None, None, None),
                                             (None, None), 1e-6, packed, ss, heads, phases, pos, il)
                    args, kwargs = calls[0]
                    named = dict(zip(tuner.arg_names, args))
                    for cfg in mod.prune_configs(tuner.configs, named, **kwargs):
                        ckw = dict(kwargs, **cfg.all_kwargs())
                        tiles = dict(cfg.kwargs, warps=cfg.num_warps, stages=cfg.num_stages)
                        name = (f"fused {dname} D={D} {'gptj' if il else 'neox'} N={N} "
                                f"M{cfg.kwargs['BLOCK_M']} K{cfg.kwargs['BLOCK_K']} w{cfg.num_warps} "
                                f"s{cfg.num_stages}")
                        out.append(Variant("fused", name, args, ckw, tiles))
    return out


def histogram_variants() -> list[Variant]:
    """Ranges and position tensors, with and without weights, for 360 bins and for 2**24 bins."""
    from ..triton import histogram as mod

    out = []
    phases = torch.empty(64, dtype=torch.int64, device=META)
    cases = [("range", None, None, torch.int64), ("positions", torch.int64, None, torch.int64),
             ("positions +float weights", torch.int64, torch.float64, torch.float64),
             ("range +int weights", None, torch.int64, torch.int64)]
    n_pos = 1 << 20
    for bins in (360, 1 << 24):
        for label, pdt, wdt, odt in cases:
            pos = torch.empty(n_pos, dtype=pdt, device=META) if pdt else None
            w = torch.empty(n_pos, dtype=wdt, device=META) if wdt else None
            res = torch.empty(64, bins, dtype=odt, device=META)
            _, calls = _recorded(mod, "histogram_kernel", mod.histogram_triton, phases, pos, n_pos, 0, bins,
                                 w, res)
            args, kwargs = calls[0]
            tiles = {x: kwargs[x] for x in ("BLOCK", "BLOCK_BINS") if x in kwargs}
            out.append(Variant("histogram", f"histogram bins={bins} {label}", args, kwargs, tiles))
    return out


def variants(kinds=("rope", "fused", "histogram")) -> list[Variant]:
    makers = {"rope": rope_variants, "fused": fused_variants, "histogram": histogram_variants}
    return [v for kind in kinds for v in makers[kind]()]


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
    row = {"kernel": v.kernel, "name": v.name, "arch": f"sm_{arch}", "tiles": v.tiles}
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
        per_thread = max(1, t["BLOCK_T"] * t["BLOCK_P"] // (32 * t["warps"]))
        if p["cvt.f32.s64"] != per_thread:
            bad.append(f"{p['cvt.f32.s64']} angle evaluations per thread, expected {per_thread} (each once)")
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
    lines = ["| kernel | arch | variants | registers (max) | spills | occupancy (min) | budget violations |",
             "|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["arch"]), []).append(r)
    for (kernel, arch), group in groups.items():
        ok = [r for r in group if r["ok"]]
        spills = sum(r["spill_stores"] + r["spill_loads"] for r in ok)
        violations = sum(1 for r in group if budget_violations(r))
        lines.append(
            f"| {kernel} | {arch} | {len(group)} | {max((r['regs'] for r in ok), default=0)} | {spills} B | "
            f"{min((r['occupancy'] for r in ok), default=0):.0%} | {violations} |")
    return "\n".join(lines)


def _environment(arch: str) -> dict:
    import datetime

    import triton

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"arch": arch, "triton": triton.__version__, "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "commit": commit or None,
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
            with open(args.json.replace("{arch}", arch.replace("_", "")), "w") as f:
                json.dump({"environment": _environment(arch), "rows": [r for r in rows if r["arch"] == arch]},
                          f, indent=1)
    table = markdown_table(rows)
    if args.markdown == "-":
        print(table)
    elif args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    print(summary_table(rows))
    failed = [r for r in rows if budget_violations(r)]
    for r in failed:
        print(f"{r['arch']} {r['name']}: {'; '.join(budget_violations(r))}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
