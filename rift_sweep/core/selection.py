"""Choosing among evaluated candidates: the paper's α rule, Pareto fronts and their hypervolume."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Accuracies are k·100/n and tolerances a few tenths: 73.9 − 0.1 is 73.80000000000001 in floats, and a model at 73.8
# must keep. Far below one image at any split size (100/n ≥ 1e-5 for n ≤ 10⁷).
_FLOAT_SLACK = 1e-9


def at_least(value: float, floor: float) -> bool:
    """value ≥ floor for percentages, up to float rounding of the floor's arithmetic."""
    return value >= floor - _FLOAT_SLACK


def best_qualifying(points: Sequence[tuple[float, float, float]], qualifying: Sequence[bool]) -> int | None:
    """The index of the largest standard accuracy among the qualifying (std_acc, rob_acc, α) points, or None when none
    qualifies (then the AT model is kept). Ties in std_acc go to the higher rob_acc, then to the smaller α (the point
    closer to the AT model), so the pick is never dominated by another qualifying point."""
    chosen = [i for i, ok in enumerate(qualifying) if ok]
    if not chosen:
        return None
    return max(chosen, key=lambda i: (points[i][0], points[i][1], -points[i][2]))


def paper_rule(points: Sequence[tuple[float, float, float]], at_rob_acc: float, tolerance: float = 0.1) -> int | None:
    """The paper's rule: among `points` (std_acc, rob_acc, α) on validation, the index of the largest standard
    accuracy whose robust accuracy stays ≥ at_rob_acc − tolerance (percentage points); see `best_qualifying`."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 percentage points; got {tolerance}")
    return best_qualifying(points, [at_least(rob, at_rob_acc - tolerance) for _, rob, _ in points])


def pareto_mask(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `points` [N, k], every objective maximised.

    A row is dominated when another is ≥ in every objective and > in at least one. Exact duplicates
    do not dominate each other, so both stay on the front.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D array [N, objectives]; got shape {pts.shape}")
    ge = (pts[:, None, :] >= pts[None, :, :]).all(axis=2)  # ge[j, i]: j is >= i everywhere
    gt = (pts[:, None, :] > pts[None, :, :]).any(axis=2)
    dominated = (ge & gt).any(axis=0)
    return ~dominated


def hypervolume_2d(
    points: Sequence[Sequence[float]] | np.ndarray, reference: tuple[float, float] = (0.0, 0.0)
) -> float:
    """Area dominated by 2-D points (both maximised) and bounded below by `reference`. For bench/sweep.py's comparison
    of samplers; the sweep itself does not use it."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[(pts[:, 0] > reference[0]) & (pts[:, 1] > reference[1])]
    if len(pts) == 0:
        return 0.0
    front = pts[pareto_mask(pts)]
    front = front[np.argsort(-front[:, 0])]  # x descending, so y ascends along the front
    area, prev_y = 0.0, reference[1]
    for x, y in front:
        if y > prev_y:
            area += (x - reference[0]) * (y - prev_y)
            prev_y = y
    return float(area)
