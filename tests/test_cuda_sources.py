"""The CUDA sources, checked without a GPU.

- Every .cu compiles with the build's own -gencode flags (SASS for sm_80/sm_90, PTX for the newest)
  and ptxas reports no stack frame and no spills for any kernel on either arch.
- The compiled code has what the design promises: tensor cores with ldmatrix and cp.async in the
  fused projection, no 64-bit division and no large-argument sin/cos in any kernel.
- The op schemas in bindings.cpp, the C++ declarations in dprope.h and the Python call sites agree:
  the Python launch code runs against a CPU stand-in registered from the very same schema strings.
"""

import os
import re
import runpy
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
pytestmark = pytest.mark.slow  # nvcc compiles every kernel for two GPU targets

NVCC = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                               if os.environ.get("CUDA_HOME") else None)
GENCODE = runpy.run_path(str(REPO / "setup.py"), run_name="setup")["gencode_flags"]("80;90")
SOURCES = sorted(p.name for p in CSRC.glob("*.cu"))


def include_flags(tmp_path: Path) -> list[str]:
    flags = ([f"-I{p}" for p in cpp_extension.include_paths()]
             + [f"-I{sysconfig.get_paths()['include']}", f"-I{CSRC}"])
    torch_include = Path(cpp_extension.include_paths()[0])
    if not (torch_include / "c10/cuda/impl/cuda_cmake_macros.h").exists():
        # CPU wheels omit this generated one-line header; CUDA builds of torch ship it
        shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        flags.append(f"-I{tmp_path / 'shim'}")
    return flags


def nvcc(tmp_path: Path, source: str, *extra: str) -> subprocess.CompletedProcess:
    if NVCC is None:
        if os.environ.get("CI"):
            raise RuntimeError("nvcc is required in CI to compile-check csrc/")
        pytest.skip("nvcc not found")
    cmd = [NVCC, "-std=c++20", *cpp_extension.COMMON_NVCC_FLAGS, *include_flags(tmp_path), *extra,
           str(CSRC / source)]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(scope="module", params=SOURCES)
def compiled(request, tmp_path_factory):
    """(source, ptxas log, object file) for the build's gencode flags."""
    tmp = tmp_path_factory.mktemp(request.param.replace(".", "_"))
    obj = tmp / "out.o"
    result = nvcc(tmp, request.param, "-c", *GENCODE, "-Xptxas", "-v", "-o", str(obj))
    assert result.returncode == 0, result.stderr[-4000:]
    return request.param, result.stderr, obj


def kernel_resources(log: str) -> list[tuple[str, str, int, int, int]]:
    """(kernel, arch, stack bytes, spill store bytes, spill load bytes) per compiled entry function."""
    rows, current = [], None
    for line in log.splitlines():
        entry = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if entry:
            current = entry.groups()
            continue
        usage = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if usage and current:
            rows.append((*current, *map(int, usage.groups())))
            current = None
    return rows


def test_setup_builds_sass_for_each_arch_and_ptx_for_the_newest():
    assert GENCODE == ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
                       "-gencode", "arch=compute_90,code=compute_90"]


def test_every_kernel_compiles_without_stack_frame_or_spills(compiled):
    source, log, obj = compiled
    assert obj.stat().st_size > 0
    rows = kernel_resources(log)
    assert {arch for _, arch, *_ in rows} == {"sm_80", "sm_90"}, f"{source}: no kernels reported"
    bad = [r for r in rows if r[2] or r[3] or r[4]]
    assert not bad, f"{source}: kernels with a stack frame or spills: {bad[:3]}"


def _cuobjdump():
    try:
        from triton.backends.nvidia import compiler as nv
    except ImportError:
        return None
    tool = Path(nv.get_ptxas(90).path).with_name("cuobjdump")
    return tool if tool.exists() else None


def test_fused_projection_uses_tensor_cores_ldmatrix_and_cp_async(compiled):
    source, _, obj = compiled
    tool = _cuobjdump()
    if source != "fused_projection.cu" or tool is None:
        pytest.skip("SASS features are checked for fused_projection.cu, with Triton's bundled cuobjdump")
    sass = subprocess.run([str(tool), "-sass", str(obj)], capture_output=True, text=True, check=True).stdout
    for instruction in ("HMMA.16816.F32.BF16", "LDSM", "LDGSTS"):
        assert instruction in sass, f"no {instruction} in the fused projection's sm_80/sm_90 code"


@pytest.mark.parametrize("source", SOURCES)
def test_no_64_bit_division_and_no_large_argument_trig_in_the_ptx(source, tmp_path):
    result = nvcc(tmp_path, source, "-ptx", "-arch=sm_90", "-o", str(tmp_path / "out.ptx"))
    assert result.returncode == 0, result.stderr[-4000:]
    ptx = (tmp_path / "out.ptx").read_text()
    body = "\n".join(line for line in ptx.splitlines() if not line.lstrip().startswith("//"))
    assert not re.search(r"\b(?:div|rem)\.[su]64", body), f"{source}: 64-bit division in a kernel"
    assert "__cudart_i2opi_f" not in body and not re.search(r"\b(?:sin|cos)\.approx", body)


def test_binding_file_compiles(tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    cmd = [cxx, "-fsyntax-only", "-std=c++20", *include_flags(tmp_path), str(CSRC / "bindings.cpp")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


# ---------------------------------------------------------------------------------------------
# schemas, declarations and call sites agree
# ---------------------------------------------------------------------------------------------


def schemas() -> dict[str, str]:
    text = (CSRC / "bindings.cpp").read_text()
    defs = re.findall(r'm\.def\(((?:\s*"[^"]*")+)\s*\)', text)
    out = {}
    for d in defs:
        schema = "".join(re.findall(r'"([^"]*)"', d))
        out[schema.split("(")[0]] = schema
    return out


def schema_names(schema: str) -> list[str]:
    args = schema[schema.index("(") + 1: schema.rindex(") ->")]
    return [a.strip().split()[-1] for a in args.split(",")]


def test_schemas_name_the_parameters_the_cuda_functions_declare():
    header = (CSRC / "dprope.h").read_text()
    for op, schema in schemas().items():
        decl = re.search(rf"void {op}_cuda\(([^;]*)\);", header)
        assert decl, f"dprope.h declares no {op}_cuda"
        names = [re.split(r"[\s&*]+", p.strip())[-1] for p in decl.group(1).split(",")]
        assert names == schema_names(schema), f"{op}: schema {schema_names(schema)} vs declaration {names}"


@pytest.fixture(scope="module")
def schema_stand_in():
    """torch.ops.dprope_C from bindings.cpp's schemas, with CPU kernels that run the torch reference."""
    from dprope_kernels.ops.fused_projection import qkv_rope_projection_torch
    from dprope_kernels.ops.histogram import histogram_torch
    from dprope_kernels.ops.rope import rope_torch

    if hasattr(torch.ops, "dprope_C") and hasattr(torch.ops.dprope_C, "rope"):
        pytest.skip("the real CUDA extension is loaded")
    lib = torch.library.Library("dprope_C", "DEF")
    for schema in schemas().values():
        lib.define(schema)

    def rope(q, k, out_q, out_k, phases, positions, in_interleaved, out_interleaved, conjugate, scale):
        rope_torch(q, out_q, phases, positions, in_interleaved, out_interleaved, conjugate, scale)
        rope_torch(k, out_k, phases, positions, in_interleaved, out_interleaved, conjugate, scale)

    def qkv(x, w_q, w_k, w_v, b_q, b_k, b_v, n_q, n_k, norm_eps, out, n_q_heads, n_k_heads, phases, positions,
            interleaved, scale):
        heads = (n_q_heads, n_k_heads, out.shape[1] - n_q_heads - n_k_heads)
        qkv_rope_projection_torch(x, (w_q, w_k, w_v), (b_q, b_k, b_v), (n_q, n_k), norm_eps, out,
                                  torch.empty(0, 0), heads, phases, positions, interleaved, scale)

    def histogram(phases, positions, weights, out, n_pos, start, bins):
        histogram_torch(phases, positions, n_pos, start, bins, weights, out)

    lib.impl("rope", rope, "CPU")
    lib.impl("histogram", histogram, "CPU")
    lib.impl("qkv_rope_projection", qkv, "CPU")
    yield torch.ops.dprope_C


def test_python_calls_match_the_schemas(schema_stand_in, monkeypatch):
    from dprope_kernels import cuda
    from dprope_kernels.ops import fused_projection, histogram, rope

    monkeypatch.setattr(cuda, "extension", lambda: schema_stand_in)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 5, 3, 16, generator=g), torch.randn(2, 5, 1, 16, generator=g)
    phases = torch.arange(1, 9, dtype=torch.int64) * (1 << 58)
    positions = torch.randint(0, 10**6, (2, 5), generator=g)
    for il, ol, scale in ((False, False, 1.0), (True, False, 1.0), (False, False, 1.07)):
        outs = [torch.empty_like(t) for t in (q, k, q, k)]
        rope._launch("cuda", q, k, outs[0], outs[1], phases, positions, il, ol, True, scale)
        rope._launch("torch", q, k, outs[2], outs[3], phases, positions, il, ol, True, scale)
        assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
    x = torch.randn(7, 12, generator=g)
    ws = (torch.randn(32, 12, generator=g), torch.randn(16, 12, generator=g),
          torch.randn(16, 12, generator=g))
    bs = (torch.randn(32, generator=g), None, torch.randn(16, generator=g))
    norms = (torch.rand(16, generator=g), torch.rand(16, generator=g))
    pos = torch.randint(0, 10**6, (7,), generator=g)
    got, want = torch.empty(7, 4, 16), torch.empty(7, 4, 16)
    no_ss = torch.empty(0, 0)
    for scale in (1.0, 0.5):
        for backend, out in (("cuda", got), ("torch", want)):
            fused_projection._launch(backend, x, ws, bs, norms, 1e-5, out, no_ss, (2, 1, 1), phases, pos,
                                     True, scale)
        assert torch.equal(got, want)
    weights = torch.rand(50, dtype=torch.float64, generator=g)
    counts = [torch.zeros(8, 90, dtype=torch.float64) for _ in range(2)]
    for backend, out in zip(("cuda", "torch"), counts):
        histogram._launch(backend, phases, torch.arange(50) * 7, 50, 0, 90, weights, out)
    assert torch.equal(counts[0], counts[1]) and counts[0].sum() > 0


def test_the_rope_schemas_take_the_attention_factor_last_as_a_float():
    """The Python launchers pass ``scale`` as the last argument of both rotating ops."""
    ops = schemas()
    for op in ("rope", "qkv_rope_projection"):
        args = ops[op][ops[op].index("(") + 1: ops[op].rindex(") ->")].split(",")
        assert args[-1].split() == ["float", "scale"], f"{op}: {ops[op]}"


def test_the_schema_stand_in_accepts_the_attention_factor_and_applies_it(schema_stand_in):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 2, 16, generator=g, dtype=torch.float64)
    phases = torch.arange(1, 9, dtype=torch.int64) * (1 << 58)
    positions = torch.arange(4).reshape(1, 4) * 1000
    no_k = q[:, :, :0]
    plain, scaled = torch.empty_like(q), torch.empty_like(q)
    schema_stand_in.rope(q, no_k, plain, torch.empty_like(no_k), phases, positions, False, False, False, 1.0)
    schema_stand_in.rope(q, no_k, scaled, torch.empty_like(no_k), phases, positions, False, False, False, 0.5)
    torch.testing.assert_close(scaled, 0.5 * plain, rtol=1e-15, atol=0)
    with pytest.raises(RuntimeError):  # the schema's old arity is refused
        schema_stand_in.rope(q, no_k, plain, torch.empty_like(no_k), phases, positions, False, False, False)
