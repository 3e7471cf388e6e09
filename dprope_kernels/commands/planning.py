"""The planning flags, built once and shared by ``dprope plan``, ``export``, ``compare`` and
``examples/train.py``.

Standard library only (every command's parser is built on each ``dprope`` call).
"""

from __future__ import annotations

import argparse
import math

PLAN_OPTIONS = ("bins", "threshold", "num_interpolated_dims", "precision", "selection", "direction",
                "extra_candidates", "attention_factor", "ramp")
LENGTHS = ("target_max_position", "factor", "original_max_position")
MAX_LENGTH = 1 << 62  # positions stay below 2**63 (the planner's and the kernels' bound)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value <= MAX_LENGTH:
        raise argparse.ArgumentTypeError(f"must be a positive integer up to 2**62, got {value}")
    return value


def extension_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 1):
        raise argparse.ArgumentTypeError(f"must be a finite number > 1 (L' / L), got {text}")
    return value


def threshold_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("must be a number (inf interpolates nothing), got nan")
    return value


def attention_factor(text: str):
    if text in ("yarn", "none"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, 'yarn' or 'none', got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, 'yarn' or 'none', got {text}")
    return value


def ramp_width(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 1):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1 (1: the hard cutoff), got {text}")
    return value


def add_length_flags(parser: argparse.ArgumentParser, *, required: bool = False,
                     original_help: str = "") -> None:
    """``--target`` | ``--factor`` and ``--original`` (the pre-training length)."""
    length = parser.add_mutually_exclusive_group(required=required)
    length.add_argument("--target", "--target-length", type=positive_int, dest="target_max_position",
                        metavar="L'", help="target length L'")
    length.add_argument("--factor", type=extension_factor, help="L' / L (> 1)")
    parser.add_argument("--original", "--original-length", type=positive_int, dest="original_max_position",
                        metavar="L", help=original_help or "pre-training length L (default: the model's)")


def add_plan_flags(parser: argparse.ArgumentParser) -> None:
    """How the DPRoPE plan chooses: bins, the rule (threshold or n_hat), precision, selection, direction,
    extra candidates. Unset flags leave :func:`~dprope_kernels.plan_dprope`'s defaults."""
    group = parser.add_argument_group("planning", "how DPRoPE chooses per pair (defaults: plan_dprope's)")
    group.add_argument("--bins", type=positive_int, help="histogram bins per turn (default 360)")
    rule = group.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=threshold_value, help="eq. 9 threshold t (default 0)")
    rule.add_argument("--n-hat", type=int, dest="num_interpolated_dims",
                      help="interpolate exactly this many dims (the paper's n_hat)")
    group.add_argument("--precision", choices=["exact", "reference"], help="angle arithmetic (default exact)")
    group.add_argument("--selection", choices=["paper", "robust"],
                       help="paper: every pair by its disturbances; robust (default): pairs the histogram "
                            "cannot resolve (> sqrt(L / bins) turns within L) stay extrapolated")
    group.add_argument("--direction", choices=["forward", "reverse"],
                       help="KL(P_L||P_L') (forward, Table 3, the default) or the reverse")
    group.add_argument("--candidate", action="append", default=[], dest="extra_candidates",
                       help="extra per-pair candidate strategy (ntk, yarn, llama3); repeatable")
    group.add_argument("--ramp", type=ramp_width, metavar="W",
                       help="the robust cutoff made soft: pairs within a factor sqrt(W) of it blend their "
                            "choice with extrapolation, linearly in log(turns) (1: the hard cutoff; default: "
                            "the planner's, 4)")
    group.add_argument("--attention-factor", type=attention_factor, metavar="M",
                       help="the factor on cos and sin served with the table: a number, 'yarn' "
                            "(0.1 ln(s) + 1) or 'none' (1); default: the planner's (see dprope plan's "
                            "output)")


def plan_options(args) -> dict:
    """The plan options given on the command line (unset ones left out)."""
    return {key: getattr(args, key) for key in PLAN_OPTIONS if getattr(args, key, None) not in (None, [])}


def lengths(args) -> dict:
    """``target_max_position`` / ``factor`` / ``original_max_position`` as given (unset ones left out)."""
    return {key: getattr(args, key) for key in LENGTHS if getattr(args, key, None) is not None}
