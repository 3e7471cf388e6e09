"""Figures: a plan's angle distributions and per-pair disturbances, and ``dprope compare``'s perplexity
curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import files
from ..errors import InvalidValue, require
from ..planner import RopePlan, angle_counts

BASELINE_STYLES = {"ntk": ":", "yarn": "-.", "llama3": (0, (5, 2))}


def pyplot():
    matplotlib = require("matplotlib", "plotting", "pip install 'dprope_kernels[plot]' (or pip install "
                         "matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path) -> None:
    """``fig`` to ``path`` (format from its suffix, PNG by default), written whole or not at all."""
    plt = pyplot()
    suffix = Path(path).suffix.lstrip(".").lower() or "png"
    try:
        with files.writing(path) as tmp:
            fig.savefig(tmp, format=suffix, dpi=110)
    finally:
        plt.close(fig)


def _settings(plan: RopePlan) -> str:
    rule = (f"n_hat {plan.num_interpolated_dims}" if plan.num_interpolated_dims is not None
            else f"threshold {plan.threshold:g}")
    return (f"head_dim {plan.head_dim}, rope_theta {plan.rope_theta:g}, {plan.original_max_position} -> "
            f"{plan.target_max_position} (x{plan.factor:g}), {plan.bins} bins, {plan.precision} angles, "
            f"{plan.selection} selection, {rule}")


def _why(plan: RopePlan, pair: int) -> str:
    """The choice of ``pair`` in words, naming the robust rule where it, not the disturbances, decided."""
    if plan.selection == "robust" and not bool(plan.resolved[pair]):
        return (f"extrapolation: {float(plan.turns[pair]):.1f} turns in L > {plan.resolution_turns:.2f}, "
                "unresolved by the histogram (robust rule)")
    return plan.strategy[pair]


def plot_plan(plan: RopePlan, path: str, pairs: Sequence[int] = (0, 16, 32, 48)) -> None:
    """Write a figure to ``path``: one panel per pair in ``pairs`` with the pre-trained, interpolated
    and extrapolated angle distributions, and a panel of every strategy's per-pair disturbance with
    the robust rule's resolution cutoff marked."""
    n_pairs = plan.head_dim // 2
    bad = [p for p in pairs if not 0 <= p < n_pairs]
    if bad:
        raise InvalidValue(f"plot pairs must be in [0, {n_pairs}), got {bad}")
    plt = pyplot()
    fig, axes = plt.subplots(len(pairs) + 1, 1, figsize=(11, 2.4 * (len(pairs) + 1) + 0.6))
    axes = np.atleast_1d(axes)
    degrees = np.arange(plan.bins) * 360.0 / plan.bins
    index = list(pairs)

    def dist(table, length):
        return angle_counts(table[index], length, bins=plan.bins, precision=plan.precision) / length

    curves = {f"pre-trained, [0, {plan.original_max_position})": dist(plan.base_inv_freq,
                                                                      plan.original_max_position),
              f"interpolated, [0, {plan.target_max_position})": dist(plan.tables["interpolation"],
                                                                     plan.target_max_position),
              f"extrapolated, [0, {plan.target_max_position})": dist(plan.tables["extrapolation"],
                                                                     plan.target_max_position)}
    for row, (ax, pair) in enumerate(zip(axes, pairs)):
        for label, values in curves.items():
            ax.step(degrees, values[row], where="post", label=label, lw=1.0)
        d_i = float(plan.pair_disturbance["interpolation"][pair]) * 1e3
        d_e = float(plan.pair_disturbance["extrapolation"][pair]) * 1e3
        ax.set_title(f"pair {pair}: D_interp {d_i:.2f}e-3, D_extrap {d_e:.2f}e-3 -> {_why(plan, pair)}",
                     fontsize=9)
        ax.set_xlim(0, 360)
        ax.set_ylabel("probability")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-2].set_xlabel("rotary angle (degrees)")
    _plot_disturbances(axes[-1], plan)
    fig.suptitle(f"DPRoPE plan: {_settings(plan)}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))  # room for the suptitle
    save(fig, path)


def _plot_disturbances(ax, plan: RopePlan) -> None:
    x = np.arange(plan.head_dim // 2)
    for name in ("extrapolation", "interpolation", "dprope"):
        ax.semilogy(x, plan.pair_disturbance[name].numpy() + 1e-9, marker=".",
                    lw=1.0 if name != "dprope" else 1.8,
                    label=name if name != "dprope" else "DPRoPE (the plan)")
    for name, style in BASELINE_STYLES.items():
        if name in plan.pair_disturbance:
            ax.semilogy(x, plan.pair_disturbance[name].numpy() + 1e-9, ls=style, lw=0.9, label=name)
    unresolved = np.flatnonzero(~plan.resolved.numpy())
    if plan.selection == "robust" and unresolved.size:
        ax.axvspan(unresolved.min() - 0.5, unresolved.max() + 0.5, color="0.85", zorder=0,
                   label=f"> {plan.resolution_turns:.2f} turns in L: unresolved, kept extrapolated")
    ax.set_xlabel("frequency pair i")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"per-pair disturbance KL(P_L || P_L'), "
                 f"{plan.original_max_position} -> {plan.target_max_position}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_curves(summary: dict, path, bucket: int, title: str) -> None:
    """``dprope compare``'s per-position perplexity, one line per table, pooled over documents."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 5))
    for name, row in summary["tables"].items():
        curve = row.get("curve")
        if not curve:
            continue
        xs = [(i + 0.5) * bucket for i, v in enumerate(curve) if v is not None]
        ys = [v for v in curve if v is not None]
        past = row["ppl_past"]
        ax.plot(xs, ys, lw=1.3, label=f"{name} ({'—' if past is None else f'{past:.1f}'})",
                ls="--" if name.startswith("dprope") else "-")
    ax.axvline(summary["original"], color="k", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel(f"position (buckets of {bucket} tokens); dotted: the original window "
                  f"L={summary['original']}")
    ax.set_ylabel("perplexity (pooled over documents)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title=f"table (ppl on [{summary['original']}, {summary['target']}))",
              title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, path)
