"""``dprope export``: a model directory / config.json, or a GGUF file, that other engines load natively.

Standard library only at import (the CLI builds every subcommand's parser); torch and gguf load when it runs.
"""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a config / GGUF file that transformers, vLLM, SGLang and llama.cpp load natively",
        description="Model directory or config.json in, directory out: config.json becomes rope_type 'longrope' "
        "with the plan's per-pair divisors (attention_factor 1.0; original_max_position_embeddings = the target "
        "length, so engines do not rescale cos/sin) plus a 'dprope' block; other files are copied. With --gguf: "
        "copy a llama-architecture GGUF file adding rope_freqs.weight = the divisors and the target context "
        "length. A config with rope_type 'dprope' (what examples/train.py saves) exports its recorded plan; "
        "otherwise give --target or --factor.")
    p.add_argument("source", help="model directory or config.json (with --gguf: the input .gguf file)")
    p.add_argument("output", help="output directory (with --gguf: the output .gguf file)")
    p.add_argument("--gguf", action="store_true", help="source and output are GGUF files (llama.cpp)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--target", type=int, dest="target_max_position", help="target length L'")
    length.add_argument("--factor", type=float, help="L' / L")
    p.add_argument("--original", type=int, dest="original_max_position",
                   help="pre-training length L (default: the config's max_position_embeddings / the GGUF "
                   "file's context_length)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=float, help="eq. 9 threshold t (default 0)")
    rule.add_argument("--n-hat", type=int, dest="num_interpolated_dims",
                      help="interpolate exactly this many dims (the paper's n_hat)")
    p.add_argument("--bins", type=int, help="histogram bins per turn (default 360)")
    p.add_argument("--precision", choices=["exact", "reference"], help="angle precision (default exact)")
    p.add_argument("--json", action="store_true", help="print the written config (or GGUF plan) as JSON")


_PLAN_OPTIONS = ("threshold", "num_interpolated_dims", "bins", "precision")


def run(args) -> int:
    from .export import export_gguf, export_model_dir

    options = {key: getattr(args, key) for key in _PLAN_OPTIONS if getattr(args, key) is not None}
    lengths = {key: getattr(args, key) for key in ("target_max_position", "factor", "original_max_position")
               if getattr(args, key) is not None}
    if args.gguf:
        if not lengths.keys() & {"target_max_position", "factor"}:
            raise ValueError("--gguf needs --target or --factor")
        plan = export_gguf(args.source, args.output, **lengths, **options)
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
    config = export_model_dir(args.source, args.output, **lengths, **options)
    if args.json:
        print(json.dumps(config, indent=1))
    else:
        block = config["dprope"]
        print(f"wrote {args.output}: rope_type longrope, {len(block['interpolated_pairs'])} of "
              f"{len(config['rope_scaling']['short_factor'])} pairs divided by {block['factor']:g}, "
              f"{block['original_max_position_embeddings']} -> {block['target_max_position_embeddings']} positions")
    return 0
