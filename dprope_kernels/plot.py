"""Figures for a plan: the paper's Figure 1 for chosen pairs, and the per-pair disturbance."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .planner import RopePlan, angle_counts


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "plotting needs matplotlib: pip install 'dprope_kernels[plot]' (or pip install matplotlib)"
        ) from err
    return plt


def plot_plan(plan: RopePlan, path: str, pairs: Sequence[int] = (0, 16, 32, 48)) -> None:
    """Write a figure to ``path``: one panel per pair in ``pairs`` with the pre-trained,
    interpolated and extrapolated angle distributions, and a panel of per-pair disturbance."""
    n_pairs = plan.head_dim // 2
    bad = [p for p in pairs if not 0 <= p < n_pairs]
    if bad:
        raise ValueError(f"plot pairs must be in [0, {n_pairs}), got {bad}")
    plt = _pyplot()
    fig, axes = plt.subplots(len(pairs) + 1, 1, figsize=(9, 2.4 * (len(pairs) + 1)))
    axes = np.atleast_1d(axes)
    degrees = np.arange(plan.bins) * 360.0 / plan.bins
    index = list(pairs)

    def dist(table, length):
        counts = angle_counts(table[index], length, bins=plan.bins, precision=plan.precision)
        return counts / length

    original = dist(plan.base_inv_freq, plan.original_max_position)
    interp = dist(plan.tables["interpolation"], plan.target_max_position)
    extrap = dist(plan.tables["extrapolation"], plan.target_max_position)
    for row, (ax, pair) in enumerate(zip(axes, pairs)):
        ax.step(degrees, original[row], where="post", label=f"pre-trained (L={plan.original_max_position})", lw=1.2)
        ax.step(degrees, interp[row], where="post", label="interpolated", lw=1.0)
        ax.step(degrees, extrap[row], where="post", label="extrapolated", lw=1.0, alpha=0.8)
        d_i = float(plan.pair_disturbance["interpolation"][pair]) * 1e3
        d_e = float(plan.pair_disturbance["extrapolation"][pair]) * 1e3
        ax.set_title(
            f"pair {pair}: D_interp {d_i:.2f}e-3, D_extrap {d_e:.2f}e-3 -> {plan.strategy[pair]}",
            fontsize=9,
        )
        ax.set_xlim(0, 360)
        ax.set_ylabel("probability")
        ax.legend(fontsize=7, loc="upper right")
    axes[-2].set_xlabel("rotary angle (degrees)")
    ax = axes[-1]
    x = np.arange(n_pairs)
    for name in ("extrapolation", "interpolation", "dprope"):
        ax.semilogy(x, plan.pair_disturbance[name].numpy() + 1e-9, marker=".", lw=0.8, label=name)
    ax.set_xlabel("frequency pair i")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"per-pair disturbance, {plan.original_max_position} -> {plan.target_max_position}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
