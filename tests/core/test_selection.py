import itertools

import numpy as np
import pytest

from rift_sweep.core.selection import hypervolume_2d, paper_rule, pareto_mask


def path(*rows):
    """(α, std, rob) rows as the rule takes them: (std, rob, α)."""
    return [(s, r, a) for a, s, r in rows]


def picked_alpha(rows, **kwargs):
    chosen = paper_rule(rows, **kwargs)
    return None if chosen is None else rows[chosen][2]


def test_alpha_rule_takes_largest_std_gain_within_tolerance():
    rows = path((0.0, 80.0, 50.0), (0.5, 82.0, 49.95), (0.8, 84.0, 49.5), (1.0, 85.0, 45.0))
    assert picked_alpha(rows, at_rob_acc=50.0, tolerance=0.1) == 0.5
    assert picked_alpha(rows, at_rob_acc=50.0, tolerance=0.5) == 0.8
    assert picked_alpha(rows, at_rob_acc=50.0, tolerance=10.0) == 1.0


def test_alpha_rule_ties_prefer_higher_robustness_then_smaller_alpha():
    rows = path((0.6, 83.0, 50.0), (0.7, 83.0, 50.2), (0.9, 83.0, 50.2))
    assert picked_alpha(rows, at_rob_acc=50.0) == 0.7


def test_alpha_rule_none_when_nothing_qualifies():
    rows = path((0.5, 82.0, 49.0), (1.0, 85.0, 45.0))
    assert picked_alpha(rows, at_rob_acc=50.0, tolerance=0.1) is None
    assert picked_alpha([], at_rob_acc=50.0) is None


def test_alpha_rule_boundary_is_inclusive_and_tolerance_checked():
    rows = path((0.4, 81.0, 49.9))
    assert picked_alpha(rows, at_rob_acc=50.0, tolerance=0.1) == 0.4
    # 738 and 739 of 1000 images: 73.9 − 0.1 is 73.80000000000001 in floats, and 73.8 still keeps.
    assert picked_alpha(path((0.4, 80.2, 738 * 100 / 1000)), at_rob_acc=739 * 100 / 1000, tolerance=0.1) == 0.4
    with pytest.raises(ValueError, match="tolerance"):
        paper_rule(rows, at_rob_acc=50.0, tolerance=-1)


def brute_force_front(points):
    keep = []
    for i, p in enumerate(points):
        dominated = any(
            all(q[k] >= p[k] for k in range(len(p))) and any(q[k] > p[k] for k in range(len(p)))
            for j, q in enumerate(points)
            if j != i
        )
        keep.append(not dominated)
    return np.array(keep)


def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    for n, k in itertools.product((1, 5, 40), (2, 3)):
        pts = rng.integers(0, 6, size=(n, k)).astype(float)  # small integers force ties and duplicates
        assert (pareto_mask(pts) == brute_force_front(pts.tolist())).all()


def test_hypervolume_2d():
    assert hypervolume_2d([[2, 1], [1, 2]]) == pytest.approx(3.0)
    assert hypervolume_2d([[2, 1], [1, 2], [0.5, 0.5]]) == pytest.approx(3.0)  # dominated point adds nothing
    assert hypervolume_2d([[3, 3]], reference=(1, 1)) == pytest.approx(4.0)
    assert hypervolume_2d([]) == 0.0
