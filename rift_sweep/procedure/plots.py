"""The pictures logged to MLflow: MRC per module, and the (standard, robust) accuracy front."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402


def mrc_bar_chart(rows: Sequence[dict], chosen: Sequence[str], path: Path) -> Path:
    """Bars of MRC per module (log scale, lowest first), the module(s) chosen for fine-tuning highlighted."""
    names = [r["module"] for r in rows]
    values = [max(r["mrc"], 1e-6) for r in rows]  # log scale: an MRC of 0 is drawn at the floor
    colors = ["tab:orange" if n in chosen else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), values, color=colors)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("MRC (robust loss increase)")
    ax.set_title("Module Robust Criticality — orange: fine-tuned")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto_chart(report, path: Path) -> Path:
    """Validation (std_acc, rob_acc) of every α point of every fine-tune (small dots), each trial's own point, the
    trials' front, the AT model with the rule's tolerance line, and the recommended model; Wilson 95 % error bars
    on the front, the AT model and the recommended model."""
    fig, ax = plt.subplots(figsize=(7, 5))
    points = report.points
    ax.scatter(
        [p["std_acc"] for p in points],
        [p["rob_acc"] for p in points],
        s=8,
        color="tab:gray",
        alpha=0.4,
        label=f"α points ({len(points)})",
    )
    trials = report.trials
    ax.scatter(
        [t["std_acc"] for t in trials],
        [t["rob_acc"] for t in trials],
        s=22,
        color="tab:blue",
        alpha=0.7,
        label=f"trials ({len(trials)})",
    )
    front = sorted(report.front, key=lambda t: t["std_acc"])
    if front:
        # A staircase: between two front points only the lower one's robustness is attained.
        ax.plot(
            [t["std_acc"] for t in front],
            [t["rob_acc"] for t in front],
            "-",
            drawstyle="steps-pre",
            color="tab:red",
            label="Pareto front of the trials",
        )
        _error_bars(ax, front, "tab:red", "o")
    at = report.at_val
    _error_bars(ax, [at], "black", "*", size=14, label="AT model")
    ax.axhline(
        at["rob_acc"] - report.tolerance,
        color="black",
        lw=0.8,
        ls="--",
        label=f"AT rob − {report.tolerance} (the rule's floor)",
    )
    if report.recommended is not None:
        _error_bars(ax, [report.recommended], "tab:green", "D", size=9, label="recommended")
    ax.set_xlabel("standard accuracy on validation (%)")
    ax.set_ylabel("robust accuracy on validation (%)")
    ax.set_title("RiFT sweep: every evaluated model (Wilson 95 % error bars)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _error_bars(ax, rows, color, marker, size=6, label=None) -> None:
    def half(row, key):  # (below, above) the estimate; 0 where no interval is known
        return (row[key] - row.get(f"{key}_low", row[key]), row.get(f"{key}_high", row[key]) - row[key])

    x = [r["std_acc"] for r in rows]
    y = [r["rob_acc"] for r in rows]
    xerr = list(zip(*[half(r, "std_acc") for r in rows]))
    yerr = list(zip(*[half(r, "rob_acc") for r in rows]))
    ax.errorbar(
        x, y, xerr=xerr, yerr=yerr, fmt=marker, color=color, markersize=size, capsize=2, lw=0.8, label=label, zorder=3
    )
