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


def pareto_chart(
    points: Sequence[tuple[float, float]],
    on_front: Sequence[bool],
    at_point: tuple[float, float] | None,
    path: Path,
    *,
    title: str = "validation accuracy of every trial",
) -> Path:
    """Every trial as (std_acc, rob_acc), the non-dominated ones joined, the AT model marked."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=18, color="tab:gray", alpha=0.6, label="trials")
    front = sorted(p for p, keep in zip(points, on_front) if keep)
    if front:
        # A staircase: between two front points only the lower one's robustness is attained.
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            "o-",
            drawstyle="steps-pre",
            color="tab:red",
            label="Pareto front",
        )
    if at_point is not None:
        ax.scatter([at_point[0]], [at_point[1]], marker="*", s=180, color="black", label="AT model", zorder=3)
    ax.set_xlabel("standard accuracy (%)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
