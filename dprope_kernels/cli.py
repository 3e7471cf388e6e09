"""Command line: ``dprope plan`` (the main job) and ``dprope info``."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _read_hf_config(path: str) -> dict:
    """Rope settings from a local Hugging Face ``config.json``; ConfigError names what is missing or wrong."""
    from .hf_config import ConfigError, rope_settings

    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object (a model config), got a {type(config).__name__}")
    settings = rope_settings(config, where=path)
    return {"head_dim": settings.rotary_dim, "rope_theta": settings.rope_theta,
            "original_max_position": settings.original_max_position}


def _plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="plan a DPRoPE extension and print the disturbance table")
    p.add_argument("--config", metavar="PATH", help="read head_dim, rope_theta and the original "
                   "length from a local Hugging Face config.json (flags below override it)")
    p.add_argument("--head-dim", type=int, help="rotary dims per head (default 128)")
    p.add_argument("--rope-theta", type=float, help="RoPE base (default 10000)")
    p.add_argument("--original", type=int, dest="original_max_position",
                   help="pre-training length L (default 4096)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--target", type=int, dest="target_max_position", help="target length L'")
    length.add_argument("--factor", type=float, help="L' / L (default 4)")
    p.add_argument("--bins", type=int, default=360, help="histogram bins per turn (default 360)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=float, help="eq. 9 threshold t (default 0)")
    rule.add_argument("--n-hat", type=int, dest="num_interpolated_dims",
                      help="interpolate exactly this many dims (the paper's n_hat)")
    p.add_argument("--precision", choices=["exact", "reference"], default="exact")
    p.add_argument("--direction", choices=["forward", "reverse"], default="forward",
                   help="KL(P_L||P_L') (forward, Table 3) or the reverse")
    p.add_argument("--candidate", action="append", default=[], dest="extra_candidates",
                   help="extra per-pair candidate strategy (ntk, yarn, llama3); repeatable")
    p.add_argument("--device", default=None, help="histogram on this device (e.g. cuda)")
    p.add_argument("--pairs", action="store_true", help="also print every pair's disturbances")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--plot", metavar="FILE", help="draw angle distributions and disturbances")
    p.add_argument("--plot-pairs", default="0,16,32,48", help="pairs to draw (default 0,16,32,48)")


def _run_plan(args) -> int:
    from .planner import plan_dprope

    settings = {"head_dim": 128, "rope_theta": 10000.0, "original_max_position": 4096}
    if args.config:
        settings.update(_read_hf_config(args.config))
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.target_max_position is None and args.factor is None:
        args.factor = 4.0
    start = time.perf_counter()
    plan = plan_dprope(
        **settings,
        target_max_position=args.target_max_position,
        factor=args.factor,
        bins=args.bins,
        threshold=args.threshold,
        num_interpolated_dims=args.num_interpolated_dims,
        precision=args.precision,
        extra_candidates=args.extra_candidates,
        direction=args.direction,
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

        pairs = [int(x) for x in args.plot_pairs.split(",") if x.strip()]
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
        return _run_info(args)
    except (ValueError, TypeError, ImportError, OSError) as err:
        print(f"dprope {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
