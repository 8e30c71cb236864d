"""How sure an accuracy is, and whether two models really differ: Wilson intervals, McNemar, the bootstrap.

Per-example correctness (bool [N], e.g. from evaluate.evaluate_examples) is what goes in; accuracies and
their bounds come out in percent, like every other accuracy in the project. The tests of two models are
paired: both were evaluated on the same images, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (%) of an accuracy of `correct` out of `total`, e.g. 50/100 -> (40.4, 59.6).

    scipy's `binomtest(...).proportion_ci(method="wilson")` computes it (no continuity correction). Unlike the
    normal approximation it stays inside [0, 100] and is not empty at 0 or `total` correct.
    """
    if total < 1 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total >= 1, got {correct} of {total}")
    stats = _scipy_stats()
    interval = stats.binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return 100.0 * float(interval.low), 100.0 * float(interval.high)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """The exact McNemar test of models A and B on the same images: (b01, b10, two-sided p-value).

    b01 counts images A gets wrong and B right, b10 those A gets right and B wrong; images both get right
    or both wrong say nothing about which is better. Under "equally accurate" each discordant image is a
    fair coin, so p is the exact two-sided binomial test of b01 out of b01 + b10 at 1/2 (1.0 when there
    are none). Accepts bool arrays or tensors (anything np.asarray takes), one entry per image.
    """
    a, b = _paired(a_correct, b_correct, bool)
    b01, b10 = int(np.sum(~a & b)), int(np.sum(a & ~b))
    p_value = _scipy_stats().binomtest(b01, b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
    return b01, b10, float(p_value)


def paired_gain_interval(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[float, float]:
    """A 95 % interval (points) for accuracy(A) − accuracy(B) over the population the images were drawn from.

    Paired: only discordant images count. The gain is (#A-only − #B-only) / n; its upper end is the upper end of the
    Wilson 95 % interval of the A-only rate minus the lower end of the B-only rate's, its lower end the other way
    round. Each of the two ends combines two one-sided 97.5 % bounds, so it holds with probability ≥ 95 %
    (Bonferroni): conservative, and more so drawn from a finite set without replacement (a subset of validation).
    """
    a, b = _paired(a_correct, b_correct, bool)
    n = len(a)
    a_only, b_only = wilson_interval(int(np.sum(a & ~b)), n), wilson_interval(int(np.sum(~a & b)), n)
    return a_only[0] - b_only[1], a_only[1] - b_only[0]


def bootstrap_interval(
    values: np.ndarray,
    other: np.ndarray | None = None,
    *,
    statistic: Callable[..., np.ndarray] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval of a statistic over examples, resampling examples with replacement.

    By default the statistic is the accuracy (%) of `values` (bool or 0/1 per example), or, with `other`,
    the paired difference in accuracy points, accuracy(values) − accuracy(other): both arrays are resampled
    with the same example indices, so the interval accounts for the two models being tested on the same
    images. A custom `statistic(values[, other], axis)` must reduce along `axis` (scipy's vectorised form).
    Seeded: the same arguments give the same interval. Uses scipy.stats.bootstrap(method="percentile"). For bench/
    (sweep.py); the sweep's own intervals are Wilson (`wilson_interval`) and paired (`paired_gain_interval`).
    """
    samples = (np.asarray(values, dtype=float),) if other is None else _paired(values, other, float)
    if len(samples[0]) < 1:
        raise ValueError("cannot bootstrap over zero examples; pass at least one")
    result = _scipy_stats().bootstrap(
        samples,
        statistic or _accuracy_points,
        n_resamples=n_resamples,
        vectorized=True,
        paired=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _accuracy_points(values: np.ndarray, other: np.ndarray | None = None, axis: int = -1) -> np.ndarray:
    """Accuracy (%) of `values`, or the difference of accuracies (points) when `other` is given."""
    accuracy = 100.0 * np.mean(values, axis=axis)
    return accuracy if other is None else accuracy - 100.0 * np.mean(other, axis=axis)


def _paired(a: np.ndarray, b: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Both results as 1-D arrays of `dtype`, checked to cover the same number of images."""
    a, b = np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-D results on the same images, got shapes {a.shape} and {b.shape}")
    return a, b


def _scipy_stats():
    """scipy.stats, imported on first use: it takes a second, and commands that only read results need none of it."""
    from scipy import stats

    return stats
