"""Intervals and paired tests, checked against values worked out by hand or in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rift_sweep.core.robustness.statistics import bootstrap_interval, mcnemar, paired_gain_interval, wilson_interval

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_by_formula(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n), in percent."""
    p, n = correct / total, total
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100 * (centre - spread) / (1 + z * z / n), 100 * (centre + spread) / (1 + z * z / n)


def test_wilson_interval_matches_known_values():
    assert wilson_interval(50, 100) == pytest.approx((40.383, 59.617), abs=1e-3)
    for correct, total in [(81, 263), (9, 10), (612, 1000), (1, 10_000)]:
        assert wilson_interval(correct, total) == pytest.approx(wilson_by_formula(correct, total), abs=1e-9)
    low, high = wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(wilson_by_formula(0, 10)[1], abs=1e-9)
    assert wilson_interval(10, 10)[1] == 100
    assert wilson_interval(50, 100, confidence=0.99) == pytest.approx(
        wilson_by_formula(50, 100, 2.5758293035489), abs=1e-6
    )


def test_wilson_interval_rejects_impossible_counts():
    for correct, total in [(1, 0), (-1, 10), (11, 10)]:
        with pytest.raises(ValueError, match="correct <= total"):
            wilson_interval(correct, total)


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_pairs():
    a = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1, 0], dtype=bool)
    b = np.array([1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0], dtype=bool)
    # A wrong, B right: 1 image; A right, B wrong: 5. Two-sided: 2·P(X <= 1), X ~ Bin(6, 1/2) = 2·7/64.
    assert mcnemar(a, b) == (1, 5, pytest.approx(14 / 64, abs=1e-12))
    assert mcnemar(b, a) == (5, 1, pytest.approx(14 / 64, abs=1e-12))
    assert mcnemar(torch.from_numpy(a), torch.from_numpy(b))[2] == pytest.approx(14 / 64, abs=1e-12)
    # 0 against 10 discordant pairs: 2 / 2^10.
    assert mcnemar(np.zeros(10, bool), np.ones(10, bool)) == (10, 0, pytest.approx(2 / 1024, abs=1e-12))
    assert mcnemar(a, a) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="same images"):
        mcnemar(a, b[:-1])


def test_bootstrap_is_seeded_and_covers_the_accuracy():
    rng = np.random.default_rng(0)
    correct = rng.random(400) < 0.7
    accuracy = 100 * correct.mean()
    low, high = bootstrap_interval(correct, n_resamples=2000, seed=1)
    assert low < accuracy < high
    assert bootstrap_interval(correct, n_resamples=2000, seed=1) == (low, high)
    assert bootstrap_interval(correct, n_resamples=2000, seed=2) != (low, high)
    # Close to Wilson's for an accuracy (both about ±4.5 points here).
    assert (low, high) == pytest.approx(wilson_interval(int(correct.sum()), len(correct)), abs=1.0)


def test_paired_bootstrap_resamples_both_models_on_the_same_images():
    rng = np.random.default_rng(0)
    a = rng.random(500) < 0.8
    b = a & (rng.random(500) < 0.95)  # B is A with a few more mistakes: a small, consistent difference
    difference = 100 * (a.mean() - b.mean())
    low, high = bootstrap_interval(a, b, n_resamples=2000, seed=0)
    assert 0 < low < difference < high
    # Unpaired, the spread of each accuracy (about ±3.5 points) would swamp a difference this small.
    assert high - low < 4
    assert bootstrap_interval(a, a, n_resamples=200) == (0.0, 0.0)


def test_bootstrap_takes_a_custom_statistic():
    values = np.arange(101, dtype=float)
    low, high = bootstrap_interval(values, statistic=lambda v, axis: np.median(v, axis=axis), seed=0)
    assert low < 50 < high
    with pytest.raises(ValueError, match="zero examples"):
        bootstrap_interval(np.array([], dtype=bool))


def test_the_paired_gain_interval_counts_only_the_discordant_images():
    a = np.zeros(200, dtype=bool)
    a[:100] = True
    b = a.copy()
    assert paired_gain_interval(a, b)[1] == pytest.approx(
        wilson_interval(0, 200)[1]
    )  # no disagreement: small, not zero
    b[:6] = False  # A right where B is wrong on 6 images
    assert paired_gain_interval(a, b)[1] == pytest.approx(wilson_interval(6, 200)[1])
    assert paired_gain_interval(b, a)[1] == pytest.approx(wilson_interval(0, 200)[1] - wilson_interval(6, 200)[0])
    assert paired_gain_interval(b, a)[1] < 3.0 < paired_gain_interval(a, b)[1]
    low, high = paired_gain_interval(a, b)
    assert (low, high) == pytest.approx(tuple(-end for end in reversed(paired_gain_interval(b, a))))  # antisymmetric
    assert low < 3.0 < high  # the observed gain (6 of 200 images) lies inside
    with pytest.raises(ValueError, match="same images"):
        paired_gain_interval(a, b[:-1])


def test_the_paired_gain_interval_covers_the_population_gain():
    """Subsets of a known population: the interval holds the population's gain at least 95 % of the time."""
    rng = np.random.default_rng(0)
    population_a = rng.random(4000) < 0.62
    population_b = population_a ^ (rng.random(4000) < 0.03)  # 3 % of images flip between the two models
    gain = 100 * (population_a.mean() - population_b.mean())
    draws = [rng.choice(4000, size=250, replace=False) for _ in range(400)]
    intervals = [paired_gain_interval(population_a[d], population_b[d]) for d in draws]
    covered = np.mean([low <= gain <= high for low, high in intervals])
    assert covered >= 0.95
