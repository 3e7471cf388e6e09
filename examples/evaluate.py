"""Evaluate a (DPRoPE-extended) local causal LM: perplexity at several lengths and passkey retrieval.

    python examples/evaluate.py --model out/final --data pg19-test.jsonl --lengths 4096,8192,16384

Perplexity: the data's tokens cut into non-overlapping windows of each length (at most
``--max-windows`` per length), loss over every predicted token. Passkey (Mohtashami & Jaggi):
a 5-digit key hidden at a random depth in filler text of the given length; greedy decoding must
reproduce it. Results are printed and written as JSON to ``--output``, which is checked to be
writable before the model loads (if writing it still fails, the JSON goes to stdout, not lost).
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import torch
from text_data import DataError, data_file_problems, load_tokenizer, read_texts, token_blocks

import dprope_kernels as dk
from dprope_kernels import files
from dprope_kernels.backends import BACKENDS
from dprope_kernels.errors import FileProblem

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _lengths(text: str) -> list[int]:
    """``"4096,8192"`` -> [4096, 8192]; a window needs 2 tokens for one predicted token."""
    lengths = []
    for item in text.split(","):
        if not item.strip():
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item; expected lengths like 4096,8192")
        try:
            lengths.append(_int_at_least(2)(item.strip()))
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    return lengths


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local model directory (config + weights)")
    p.add_argument("--data", nargs="+", help=".txt / .jsonl files for perplexity")
    p.add_argument("--lengths", type=_lengths, default="4096", help="comma-separated context lengths")
    p.add_argument("--max-windows", type=_int_at_least(1), default=16)
    p.add_argument("--passkey-trials", type=_int_at_least(0), default=10,
                   help="per length; 0 skips passkey retrieval")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS, "none"],
                   help="dprope kernel backend, or 'none' to run HF's rotary op")
    p.add_argument("--dtype", choices=["bf16", "fp32"],
                   default="bf16" if torch.cuda.is_available() else "fp32")
    p.add_argument("--byte-tokenizer", action="store_true")
    p.add_argument("--output", help="JSON file for the results")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    check_paths(p, args)
    if not args.data and args.passkey_trials == 0:
        p.error("nothing to evaluate: give --data for perplexity or --passkey-trials above 0")
    return args


def check_paths(p: argparse.ArgumentParser, args) -> None:
    """Refuse missing inputs and an unwritable --output before the model loads."""
    model = Path(args.model)
    if not model.is_dir():
        p.error(f"--model {args.model}: no such directory")
    if not (model / "config.json").is_file():
        p.error(f"--model {args.model}: no config.json in it")
    problems = data_file_problems(args.data or [])
    if problems:
        p.error(f"--data: {'; '.join(problems)}")
    if args.output:
        output = Path(args.output)
        if output.is_dir():
            p.error(f"--output {args.output}: is a directory, expected a file name")
        if not output.parent.is_dir():
            p.error(f"--output {args.output}: no such directory {output.parent}")
        try:
            files.check_writable(output)
        except FileProblem as err:
            p.error(str(err))


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, device) -> float:
    total, count = 0.0, 0
    for block in blocks:
        ids = block[None].to(device)
        loss = model(input_ids=ids, labels=ids).loss
        total += float(loss) * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return math.exp(total / count)


def passkey_prompt(tokenizer, length: int, key: str, depth: float) -> list[int]:
    intro = "There is important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    question = "What is the pass key? The pass key is"
    budget = length - len(tokenizer.encode(intro + needle + question))
    filler = tokenizer.encode(
        FILLER * (budget // max(1, len(tokenizer.encode(FILLER))) + 1))[: max(0, budget)]
    cut = int(len(filler) * depth)
    return (tokenizer.encode(intro) + filler[:cut] + tokenizer.encode(needle) + filler[cut:]
            + tokenizer.encode(question))


@torch.no_grad()
def passkey_accuracy(model, tokenizer, length: int, trials: int, rng: random.Random, device) -> float:
    hits = 0
    for _ in range(trials):
        key = str(rng.randint(10000, 99999))
        ids = torch.tensor([passkey_prompt(tokenizer, length, key, rng.random())], device=device)
        new = len(tokenizer.encode(" " + key)) + 1
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False)
        hits += key in tokenizer.decode(out[0, ids.shape[1]:].tolist())
    return hits / trials


def windows(args, tokenizer) -> dict[int, torch.Tensor]:
    """``{length: [n, length] token blocks}`` of --data (at most --max-windows each); a length the data
    cannot fill once is refused before the model loads."""
    if not args.data:
        return {}
    texts = read_texts(args.data)
    out = {}
    for length in args.lengths:
        try:
            out[length] = token_blocks(texts, tokenizer, length)[: args.max_windows]
        except DataError as err:
            raise DataError(f"--lengths {length}: {err}; give shorter lengths or more data") from None
    return out


def load_model(args, device):
    """The model with the package's kernels applied (``--backend none``: transformers' own op)."""
    from transformers import AutoModelForCausalLM

    dk.register_dprope_rope_type()  # a model fine-tuned by train.py has rope_type "dprope"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model).to(device, dtype).eval()
    if args.backend != "none":
        dk.apply_dprope_kernels(model, backend=args.backend)
    return model


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = load_tokenizer(args.model, args.byte_tokenizer)
        blocks = windows(args, tokenizer)
        model = load_model(args, device)
    except (DataError, ValueError, TypeError) as err:  # the patch refuses a model it cannot serve exactly
        raise SystemExit(f"evaluate.py: error: {str(err).strip().splitlines()[0]}") from None
    rng = random.Random(args.seed)
    rope = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_scaling", None) or {}
    results = {"model": args.model, "rope": dict(rope), "lengths": {}}
    for length in args.lengths:
        row = {}
        if length in blocks:
            row["perplexity"] = perplexity(model, blocks[length], device)
            row["windows"] = blocks[length].shape[0]
        if args.passkey_trials:
            row["passkey_accuracy"] = passkey_accuracy(model, tokenizer, length, args.passkey_trials, rng,
                                                       device)
        results["lengths"][length] = row
        print(f"length {length}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    if args.output:
        try:
            files.write_json(args.output, results)
        except FileProblem as err:  # checked before the model loaded, but a disk can fill up
            print(files.dumps(results, indent=1))
            raise SystemExit(f"evaluate.py: error: {err}; the results are above, on stdout") from None
    return results


if __name__ == "__main__":
    main()
