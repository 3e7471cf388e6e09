"""Command line: ``dprope plan`` (the main job), ``dprope compare`` (real-model tables), ``dprope info``."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _load_hf_config(path: str) -> tuple[str, dict]:
    """``(the file read, its JSON object)`` of a ``config.json`` or a model directory holding one."""
    import os

    from .hf_config import ConfigError

    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"{os.path.dirname(path)} is a directory without a config.json (give a model "
                              "directory or its config.json)")
    elif not os.path.exists(path):
        raise ConfigError(f"{path}: no such file (give a config.json or a model directory holding one)")
    try:
        with open(path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object (a model config), got a {type(config).__name__}")
    return path, config


def _plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="plan a DPRoPE extension and print the disturbance table")
    p.add_argument("--config", metavar="PATH", help="read head_dim, rope_theta and the original "
                   "length from a local Hugging Face config.json or model directory (flags below override "
                   "it); a config with rope_type 'dprope' rebuilds its recorded plan")
    p.add_argument("--layer-type", metavar="NAME", help="with --config: the layer type to plan for, for models "
                   "with rope parameters per layer type (Gemma 3: full_attention, sliding_attention)")
    p.add_argument("--head-dim", type=int, help="rotary dims per head (default 128)")
    p.add_argument("--rope-theta", type=float, help="RoPE base (default 10000)")
    p.add_argument("--original", type=int, dest="original_max_position",
                   help="pre-training length L (default 4096)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--target", type=int, dest="target_max_position", help="target length L'")
    length.add_argument("--factor", type=float, help="L' / L (default 4)")
    p.add_argument("--bins", type=int, help="histogram bins per turn (default 360)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=float, help="eq. 9 threshold t (default 0)")
    rule.add_argument("--n-hat", type=int, dest="num_interpolated_dims",
                      help="interpolate exactly this many dims (the paper's n_hat)")
    p.add_argument("--precision", choices=["exact", "reference"], help="default exact")
    p.add_argument("--selection", choices=["paper", "robust"],
                   help="paper: every pair by its disturbances; robust: pairs the histogram cannot resolve "
                        "(> sqrt(L / bins) turns within L) stay extrapolated")
    p.add_argument("--direction", choices=["forward", "reverse"],
                   help="KL(P_L||P_L') (forward, Table 3, the default) or the reverse")
    p.add_argument("--candidate", action="append", default=[], dest="extra_candidates",
                   help="extra per-pair candidate strategy (ntk, yarn, llama3); repeatable")
    p.add_argument("--device", default=None, help="histogram on this device (e.g. cuda)")
    p.add_argument("--pairs", action="store_true", help="also print every pair's disturbances")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--plot", metavar="FILE", help="draw angle distributions and disturbances")
    p.add_argument("--plot-pairs", default="0,16,32,48", help="pairs to draw (default 0,16,32,48)")


# the flags that choose a plan (a config recording a dprope plan is rebuilt as recorded, so none of them)
_PLAN_FLAGS = {"head_dim": "--head-dim", "rope_theta": "--rope-theta", "original_max_position": "--original",
               "target_max_position": "--target", "factor": "--factor", "bins": "--bins", "threshold": "--threshold",
               "num_interpolated_dims": "--n-hat", "precision": "--precision", "direction": "--direction",
               "extra_candidates": "--candidate", "selection": "--selection"}


def _plot_pairs(args) -> list[int] | None:
    """The pairs ``--plot`` draws, after checking (before any planning) that it can write the figure."""
    if not args.plot:
        return None
    import os

    folder = os.path.dirname(os.path.abspath(args.plot))
    if not os.path.isdir(folder):
        raise ValueError(f"--plot {args.plot}: " + (f"{folder} is not a folder" if os.path.exists(folder)
                                                     else f"the folder {folder} does not exist"))
    try:
        pairs = [int(x) for x in args.plot_pairs.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--plot-pairs must be pair numbers separated by commas, got {args.plot_pairs!r}") from None
    from .plot import _pyplot

    _pyplot()  # no matplotlib: an ImportError saying how to get it
    return pairs


def _run_plan(args) -> int:
    from .planner import plan_dprope

    pairs = _plot_pairs(args)
    if args.layer_type is not None and not args.config:
        raise ValueError("--layer-type chooses among the layer types of a --config; give --config too")
    settings = {"head_dim": 128, "rope_theta": 10000.0, "original_max_position": 4096}
    recorded = None  # a config's dprope plan, rebuilt as recorded
    if args.config:
        from .hf_config import ROPE_TYPE, plan_from_config, pretrained_rope_settings, rope_type_of

        path, config = _load_hf_config(args.config)
        found = pretrained_rope_settings(config, args.layer_type, where=path)  # refuses an extended rope
        settings.update(head_dim=found.rotary_dim, rope_theta=found.rope_theta,
                        original_max_position=found.original_max_position)
        if rope_type_of(found.parameters) == ROPE_TYPE:
            given = [flag for key, flag in _PLAN_FLAGS.items() if getattr(args, key) not in (None, [])]
            if given:
                raise ValueError(f"{path} records a dprope plan (rope_type {ROPE_TYPE!r}), which is rebuilt as "
                                 f"recorded; drop {', '.join(given)}")
            recorded = (config, found.layer_type)
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if pairs is not None and isinstance(settings["head_dim"], int):
        bad = [p for p in pairs if not 0 <= p < settings["head_dim"] // 2]
        if bad:
            raise ValueError(f"plot pairs must be in [0, {settings['head_dim'] // 2}), got {bad}")
    if args.target_max_position is None and args.factor is None:
        args.factor = 4.0
    start = time.perf_counter()
    if recorded is not None:
        plan = plan_from_config(*recorded)
    else:
        plan = plan_dprope(
            **settings,
            target_max_position=args.target_max_position,
            factor=args.factor,
            bins=360 if args.bins is None else args.bins,
            threshold=args.threshold,
            num_interpolated_dims=args.num_interpolated_dims,
            precision=args.precision or "exact",
            extra_candidates=args.extra_candidates,
            direction=args.direction or "forward",
            selection=args.selection,
            device=args.device,
        )
    elapsed = time.perf_counter() - start
    if args.json:
        out = plan.to_dict()
        out["planning_seconds"] = elapsed
        print(json.dumps(out, indent=1))
    else:
        print(plan.format_table(per_pair=args.pairs))
        print(f"\nplanned in {elapsed * 1e3:.1f} ms")
    if args.plot:
        from .plot import plot_plan

        plot_plan(plan, args.plot, pairs=pairs)
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _run_info(args) -> int:
    from .backends import backend_report

    print(backend_report())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dprope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _plan_parser(sub)
    sub.add_parser("info", help="which kernel backends this machine can run, and why not")
    from .compare import add_parser as _compare_parser  # stdlib only at import; torch loads when it runs

    _compare_parser(sub)
    from .export_cli import add_parser as _export_parser  # stdlib only at import, like compare

    _export_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["plan"]
    args = parser.parse_args(argv)
    try:
        if args.command == "plan":
            return _run_plan(args)
        if args.command == "compare":
            from .compare import run as _run_compare

            return _run_compare(args)
        if args.command == "export":
            from .export_cli import run as _run_export

            return _run_export(args)
        return _run_info(args)
    except (ValueError, TypeError, ImportError, OSError) as err:
        print(f"dprope {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
