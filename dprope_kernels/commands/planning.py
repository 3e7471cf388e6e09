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
ATTENTION_RULES = ("yarn", "entropy", "none")  # the planner's rule names (tests/test_cli.py holds them equal)
MAX_LENGTH = 1 << 62  # positions stay below 2**63 (the planner's and the kernels' bound)


def _parsed(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def integer_in(low: int, high: int = MAX_LENGTH, requirement: str = ""):
    """An argparse type: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        value = _parsed(text, int)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {requirement or f'in [{low}, {high}]'}, got {value}")
        return value

    return parse


def number_where(accept, requirement: str):
    """An argparse type: a finite number that ``accept`` takes (``requirement`` says which, for the error)."""

    def parse(text: str) -> float:
        value = _parsed(text, float)
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


positive_int = integer_in(1, requirement="a positive integer up to 2**62")
extension_factor = number_where(lambda v: v > 1, "a finite number > 1 (L' / L)")
ramp_width = number_where(lambda v: v >= 1, "a finite number >= 1 (1: the hard cutoff)")
positive_number = number_where(lambda v: v > 0, "a finite number > 0")


def threshold_value(text: str) -> float:
    value = _parsed(text, float)
    if math.isnan(value):
        raise argparse.ArgumentTypeError("must be a number (inf interpolates nothing), got nan")
    return value


def attention_factor(text: str):
    if text in ATTENTION_RULES:
        return text
    try:
        return positive_number(text)
    except argparse.ArgumentTypeError:
        rules = ", ".join(repr(rule) for rule in ATTENTION_RULES)
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 or one of {rules}, "
                                         f"got {text!r}") from None


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
                            "(0.1 ln(s) + 1), 'entropy' (sqrt(1 + ln(s) / ln(L))) or 'none' (1); default: "
                            "the planner's (see dprope plan's output)")


def plan_options(args) -> dict:
    """The plan options given on the command line (unset ones left out)."""
    return {key: getattr(args, key) for key in PLAN_OPTIONS if getattr(args, key, None) not in (None, [])}


def lengths(args) -> dict:
    """``target_max_position`` / ``factor`` / ``original_max_position`` as given (unset ones left out)."""
    return {key: getattr(args, key) for key in LENGTHS if getattr(args, key, None) is not None}
