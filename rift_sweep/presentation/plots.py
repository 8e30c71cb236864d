"""The pictures logged to MLflow: MRC per module, and every evaluated model's change against the AT model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from rift_sweep.core.mrc import MRCResult  # noqa: E402
from rift_sweep.procedure.records import Front, Model, Versus  # noqa: E402


def mrc_bar_chart(results: Sequence[MRCResult], chosen: Sequence[str], path: Path) -> Path:
    """Bars of MRC per module (log scale, lowest first), the module(s) chosen for fine-tuning highlighted."""
    names = [r.module for r in results]
    values = [max(r.mrc, 1e-6) for r in results]  # log scale: an MRC of 0 is drawn at the floor
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


def front_chart(front: Front, path: Path) -> Path:
    """What a user decides with: every evaluated model's change against the AT model (clean points gained, robust
    points kept), on validation (left: the front with paired 95 % intervals, screened models hollow, the rule's
    tolerance band, the recommended model) and on test for the models evaluated there (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=False)
    for ax, split in zip(axes, ("val", "test")):
        models = [m for m in front.models if _versus(m, split) is not None]
        ax.axhspan(-front.tolerance, ax.get_ylim()[1] if models else 1, color="tab:green", alpha=0.08)
        ax.axhline(-front.tolerance, color="tab:green", lw=0.8, ls="--", label=f"AT rob − {front.tolerance} (the rule)")
        ax.axhline(0, color="black", lw=0.6)
        ax.axvline(0, color="black", lw=0.6)
        ax.plot([0], [0], "k*", markersize=12, label="AT model")
        others = [m for m in models if m.key not in front.on_front]
        ax.scatter(
            [_versus(m, split).std.points for m in others],
            [_versus(m, split).rob.points for m in others],
            s=10,
            color="tab:gray",
            alpha=0.5,
            label=f"other models ({len(others)})",
        )
        for screened in (False, True):
            shown = [m for m in models if m.key in front.on_front and _screened(m, split) == screened]
            _change_bars(
                ax,
                shown,
                split=split,
                color="tab:red",
                marker="o",
                hollow=screened,
                label=_front_label(screened, len(shown)),
            )
        best = front.recommended
        if best is not None and _versus(best, split) is not None:
            _change_bars(ax, [best], split=split, color="tab:blue", marker="D", size=9, label="recommended")
        ax.set_xlabel("clean accuracy − AT's (points)")
        ax.set_ylabel("robust accuracy − AT's (points)")
        ax.set_title(f"{'validation: every evaluated model' if split == 'val' else 'test: the front as evaluated'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("RiFT sweep: change against the AT model on the same images (paired 95 % intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _versus(model: Model, split: str) -> Versus | None:
    return model.val_versus_at if split == "val" else model.test_versus_at


def _screened(model: Model, split: str) -> bool:
    return split == "val" and model.val.screened


def _front_label(screened: bool, count: int) -> str | None:
    if not count:
        return None
    return f"front, robustness on a screened subset ({count})" if screened else f"Pareto front ({count})"


def _change_bars(ax, models, split, color, marker, *, size=6, hollow=False, label=None) -> None:
    if not models:
        return
    changes = [_versus(m, split) for m in models]

    def errors(parts):  # (below, above) each estimate
        return [[c.points - c.low for c in parts], [c.high - c.points for c in parts]]

    ax.errorbar(
        [c.std.points for c in changes],
        [c.rob.points for c in changes],
        xerr=errors([c.std for c in changes]),
        yerr=errors([c.rob for c in changes]),
        fmt=marker,
        color=color,
        markerfacecolor="white" if hollow else color,
        markersize=size,
        capsize=2,
        lw=0.8,
        label=label,
        zorder=3,
    )
