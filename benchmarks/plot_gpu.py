"""A figure of a GPU run: per op, ours beside the peers, as a fraction of the hardware limit.

    python benchmarks/plot_gpu.py benchmarks/results/h200-2026-12-04/measured.json \
        benchmarks/results/h200-2026-12-04/ops.png

The JSON holds ``device``, ``date``, ``commit`` and ``ops``: ``{op title: {provider: fraction}}``.
The PNG is written to a temporary name and renamed once complete (dprope_kernels.files).
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dprope_kernels import files  # noqa: E402


def plot(data: dict, out: str) -> None:
    ops = data["ops"]
    fig, axes = plt.subplots(len(ops), 1, figsize=(8, 1.2 + 0.42 * sum(len(v) for v in ops.values())),
                             gridspec_kw={"height_ratios": [len(v) for v in ops.values()]})
    for ax, (title, rows) in zip(axes, ops.items()):
        names = list(rows)[::-1]
        values = [rows[n] for n in names]
        colors = ["tab:blue" if n.startswith("ours") else "tab:gray" for n in names]  # ours, then the peers
        ax.barh(names, values, color=colors)
        for y, v in enumerate(values):
            ax.text(v + 0.01, y, f"{v:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, 1.1)
        ax.axvline(1.0, color="black", lw=0.6)
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
    fig.suptitle(f"{data['device']}, {data['date']}, commit {data['commit']} (measured; blue: ours)",
                 fontsize=10)
    fig.tight_layout()
    with files.writing(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the run's JSON (device, date, commit, ops)")
    parser.add_argument("out", help="the PNG to write")
    args = parser.parse_args()
    with open(args.data) as f:
        plot(json.load(f), args.out)


if __name__ == "__main__":
    main()
