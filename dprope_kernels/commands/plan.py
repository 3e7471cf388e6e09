"""``dprope plan``: plan a DPRoPE extension and print the disturbance table (the main job)."""

from __future__ import annotations

import os
import sys
import time

from .. import files
from ..errors import InvalidValue
from .planning import add_length_flags, add_plan_flags, lengths, plan_options, positive_int

DEFAULTS = {"head_dim": 128, "rope_theta": 10000.0, "original_max_position": 4096, "factor": 4.0}


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="plan a DPRoPE extension and print the disturbance table",
                       description="Plan a DPRoPE extension (default: LLaMA-2, head_dim 128, rope_theta "
                       "10000, 4096 -> 16384) and print the total disturbance per strategy and the per-pair "
                       "choices.")
    p.add_argument("--config", metavar="PATH", help="a local Hugging Face config.json or model directory: "
                   "rotary dims, rope_theta and the pre-training length come from it; a config recording a "
                   "DPRoPE plan (rope_type 'dprope', or a dprope export) rebuilds that plan")
    p.add_argument("--layer-type", metavar="NAME", help="with --config: the layer type to plan for, for "
                   "models with rope parameters per layer type (Gemma 3: full_attention, sliding_attention)")
    p.add_argument("--head-dim", type=positive_int,
                   help="rotary dims per head (default 128; not with --config)")
    p.add_argument("--rope-theta", type=float, help="RoPE base (default 10000; not with --config)")
    add_length_flags(p, original_help="pre-training length L (default 4096, or the config's)")
    add_plan_flags(p)
    p.add_argument("--device", default=None, help="histogram on this device (e.g. cuda)")
    p.add_argument("--pairs", action="store_true", help="also print every pair's disturbances")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--plot", metavar="FILE", help="draw angle distributions and per-pair disturbances")
    p.add_argument("--plot-pairs", default="0,16,32,48", help="pairs to draw (default 0,16,32,48)")


def _plot_pairs(args) -> list[int] | None:
    """The pairs ``--plot`` draws, after checking (before any planning) that it can write the figure."""
    if not args.plot:
        return None
    folder = os.path.dirname(os.path.abspath(args.plot))
    if not os.path.isdir(folder):
        raise InvalidValue(f"--plot {args.plot}: " + (f"{folder} is not a folder" if os.path.exists(folder)
                                                     else f"the folder {folder} does not exist"))
    files.check_writable(folder, "--plot")
    try:
        pairs = [int(x) for x in args.plot_pairs.split(",") if x.strip()]
    except ValueError:
        raise InvalidValue(f"--plot-pairs must be pair numbers separated by commas, "
                           f"got {args.plot_pairs!r}") from None
    from .figures import pyplot

    pyplot()  # no matplotlib: an error saying how to get it
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    suffix = os.path.splitext(args.plot)[1].lstrip(".").lower() or "png"
    if suffix not in kinds:
        raise InvalidValue(f"--plot {args.plot}: matplotlib writes {', '.join(sorted(kinds))}, "
                           f"not {suffix!r}")
    return pairs


def make_plan(args):
    """The plan the arguments ask for: from ``--config`` (the one config reader) or from the numbers."""
    if args.config:
        given = [flag for flag, value in (("--head-dim", args.head_dim), ("--rope-theta", args.rope_theta))
                 if value is not None]
        if given:
            raise InvalidValue(f"{' and '.join(given)} come from --config; "
                               f"drop {'them' if len(given) > 1 else 'it'}")
        from ..hf_config import load_config, plan_for_config

        path, config = load_config(args.config)
        return plan_for_config(config, args.layer_type, where=path, device=args.device, **lengths(args),
                               **plan_options(args))
    if args.layer_type is not None:
        raise InvalidValue("--layer-type chooses among the layer types of a --config; give --config too")
    from ..planner import plan_dprope

    settings = dict(DEFAULTS, **{k: v for k, v in (("head_dim", args.head_dim),
                                                   ("rope_theta", args.rope_theta))
                                 if v is not None}, **lengths(args))
    if "target_max_position" in settings:
        settings.pop("factor")
    return plan_dprope(**settings, device=args.device, **plan_options(args))


def run(args) -> int:
    pairs = _plot_pairs(args)
    start = time.perf_counter()
    plan = make_plan(args)
    elapsed = time.perf_counter() - start
    if pairs is not None:
        bad = [p for p in pairs if not 0 <= p < plan.head_dim // 2]
        if bad:
            raise InvalidValue(f"plot pairs must be in [0, {plan.head_dim // 2}), got {bad}")
    if args.json:
        print(files.dumps(dict(plan.to_dict(), planning_seconds=elapsed), indent=1))
    else:
        print(plan.format_table(per_pair=args.pairs))
        print(f"\nplanned in {elapsed * 1e3:.1f} ms")
    if args.plot:
        from .figures import plot_plan

        plot_plan(plan, args.plot, pairs=pairs)
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0
