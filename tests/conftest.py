"""Test setup: Triton runs in its interpreter when there is no GPU (set before any kernel import)."""

import json
import os
from pathlib import Path

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
_DATA_CANDIDATES = [
    Path(os.environ.get("DPROPE_SHARED", REPO.parent / "shared")) / "data" / "dprope_llama2_reference.json",
    REPO / "tests" / "data" / "dprope_llama2_reference.json",
]


@pytest.fixture(scope="session")
def reference_data():
    for path in _DATA_CANDIDATES:
        if path.exists():
            return json.loads(path.read_text())
    pytest.fail(f"reference data not found in {[str(p) for p in _DATA_CANDIDATES]}")


requires_cuda = pytest.mark.skipif(not _HAS_CUDA, reason="needs a CUDA GPU")


def rope_config_kwargs(rope: dict, rope_theta: float = 10000.0) -> dict:
    """Config kwargs for rope settings: ``rope_parameters`` in transformers 5, ``rope_scaling`` in 4.x."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return {"rope_parameters": dict(rope, rope_theta=rope_theta)}
    return {"rope_scaling": None if rope.get("rope_type") == "default" else dict(rope), "rope_theta": rope_theta}


def rope_settings(config) -> dict:
    """A config's rope dict, whichever transformers version made it."""
    return getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
