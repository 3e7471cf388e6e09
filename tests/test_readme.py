"""The README's recipes run as written, and its list of served and refused families is the tested one."""

import json
import re
from pathlib import Path

import pytest
import torch

import dprope_kernels as dk

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def recipe(name: str) -> dict:
    match = re.search(rf"<!-- recipe: {name} -->\s*```python\n(.*?)```", README, re.S)
    assert match, f"README has no recipe {name!r}"
    namespace: dict = {}
    exec(compile(match.group(1), f"README recipe {name}", "exec"), namespace)
    return namespace


def test_hf_recipe():
    pytest.importorskip("transformers")
    ns = recipe("hf")
    assert ns["out"].shape == (2, 4, 10, 64)
    hidden, positions = torch.randn(1, 6, 256), torch.arange(6)[None] + 5000
    q = ns["q_proj"](hidden).view(1, 6, 4, 64)
    want, _ = dk.apply_rope(q, None, ns["rope"].phases, positions, backend="torch")
    got, _ = ns["rope"](q, None, positions)
    torch.testing.assert_close(got, want)


def test_megatron_recipe():
    ns = recipe("megatron")
    q, positions, plan = ns["q"], ns["positions"], ns["plan"]
    assert ns["q_rot"].shape == q.shape == (16, 2, 8, 64)
    for i, p in enumerate(positions.tolist()):  # each token rotated at its global position
        want, _ = dk.apply_rope(q[i:i + 1].transpose(0, 1).contiguous(), None, plan.inv_freq, p, backend="torch")
        torch.testing.assert_close(ns["q_rot"][i], want[:, 0])


def test_varlen_recipe():
    ns = recipe("varlen")
    start = 0
    for n in (5, 17, 3):  # each document rotated from position 0
        want, _ = dk.apply_rope(ns["qkv"].view(-1, 3, 4, 64)[start:start + n, 0][None].contiguous(), None,
                                ns["plan"].inv_freq)
        torch.testing.assert_close(ns["q"][start:start + n], want[0])
        start += n


def test_readme_lists_the_tested_families():
    from test_model_families import MAJOR, REFUSED, SERVED

    if MAJOR < 5:
        pytest.skip("the README lists the transformers 5 results (4.x refuses PhiMoE, whose rotary takes seq_len)")
    served = README.split("**Served and equal**")[1].split("**Refused")[0]
    assert f"({len(SERVED)} cases)" in served
    names = {"deepseek_v3": "DeepSeek-V3", "gemma3_text": "Gemma 3", "qwen2_moe": "Qwen2-MoE", "qwen3_moe": "Qwen3-MoE",
             "granitemoe": "GraniteMoE", "olmoe": "OLMoE", "phimoe": "PhiMoE", "hunyuan_v1_dense": "Hunyuan-dense",
             "exaone4": "EXAONE 4", "smollm3": "SmolLM3", "seed_oss": "Seed-OSS", "ernie4_5": "Ernie 4.5",
             "gpt_neox": "GPT-NeoX", "starcoder2": "StarCoder2", "diffllama": "DiffLlama", "jetmoe": "JetMoE",
             "bitnet": "BitNet", "stablelm": "StableLM", "glm4": "GLM-4", "gemma2": "Gemma 2", "phi3": "Phi-3",
             "olmo2": "OLMo2", "cohere2": "Cohere2"}
    for case in {c.split(":")[0] for c in SERVED}:
        name = names.get(case, case.capitalize())
        assert name.lower() in served.lower(), f"{name} is served in the tests but not listed in the README"
    refused = README.split("**Refused, with the reason**")[1].split("- **Fused")[0]
    for case, words in {"gpt_oss": "GPT-OSS", "deepseek_v2": "DeepSeek-V2", "gptj": "GPT-J", "llama:yarn": "YaRN",
                        "llama:dynamic": "dynamic NTK", "phi3:longrope": "LongRoPE"}.items():
        assert case in REFUSED and words in refused


def test_every_python_block_runs_in_order():
    """The README's python blocks, pasted one after another into one interpreter, run as written."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Qwen3Config"):
        pytest.skip(f"the README's fused block builds a Qwen3 attention; transformers {transformers.__version__} "
                    "has no Qwen3 (4.51+)")
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 7
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README python block {i + 1}", "exec"), namespace)


@pytest.mark.slow
def test_the_tiny_cpu_run_runs(tmp_path):
    """The README's copy-paste CPU run of the examples, with runs/ in a temporary folder."""
    import shlex
    import subprocess
    import sys

    pytest.importorskip("transformers")
    block = re.search(r"<!-- run: tiny -->\s*```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0] for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert len(commands) == 3
    root = Path(__file__).resolve().parents[1]
    for command in commands:
        argv = [a.replace("runs/tiny", str(tmp_path / "runs/tiny")) for a in shlex.split(command)]
        assert argv[0] == "python"
        result = subprocess.run([sys.executable, str(root / argv[1]), *argv[2:]], capture_output=True, text=True,
                                cwd=root, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "runs/tiny/run/final/config.json").exists()
    assert set(json.loads((tmp_path / "runs/tiny/eval.json").read_text())["lengths"]) == {"256", "1024"}
