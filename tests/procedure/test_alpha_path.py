"""The α path: screening spends the rest of validation only on points that can still matter, and keeps the answers."""

from __future__ import annotations

import dataclasses
import math

import pytest

from rift_sweep.config import load_config
from rift_sweep.core.robustness.attacks import AttackCost
from rift_sweep.procedure.experiment import load_experiment
from rift_sweep.procedure.paper import at_point
from rift_sweep.procedure.steps import alpha_by_rule, alpha_path, finetune

from conftest import write_digits_config

GRID = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, digits_checkpoint):
    """One fine-tune's α path measured twice: without screening, and screened on a quarter of validation."""
    folder = tmp_path_factory.mktemp("alpha")
    overrides = {"alpha": {"grid": GRID, "screen": 0.25}, "ood": {"enabled": False}, "attack": {"steps": 10}}
    config = load_config(write_digits_config(folder, digits_checkpoint, **overrides))
    exp = load_experiment(config, "cpu")
    best = finetune(exp, "fc2", config.finetune).best_state
    at = at_point(exp)
    unscreened = dataclasses.replace(
        exp, config=dataclasses.replace(config, alpha=dataclasses.replace(config.alpha, screen=1.0))
    )
    costs = {}
    for name, e in (("full", unscreened), ("screened", exp)):
        e.attack_cost = costs[name] = AttackCost()
    return (
        exp,
        best,
        at,
        alpha_path(unscreened, best, at, progress=False),
        alpha_path(exp, best, at, progress=False),
        costs,
    )


def std(path):
    return [p.scores.std.value for p in path]


def test_screening_keeps_the_rule_and_every_fully_measured_point(paths):
    exp, _, at, full, screened, costs = paths
    n = len(exp.splits.val)
    assert std(screened) == std(full)  # clean accuracy is always on all of val
    assert alpha_by_rule(screened, at, exp.config.alpha) == alpha_by_rule(full, at, exp.config.alpha)
    part = [p for p in screened if p.scores.screened]
    assert part, "no point was screened: the test would not exercise screening"
    assert costs["screened"].gradient_evals < costs["full"].gradient_evals
    for ours, theirs in zip(screened, full):
        if not ours.scores.screened:
            assert abs(ours.scores.rob.value - theirs.scores.rob.value) <= 100 / n + 1e-9  # ≤ 1 float-rounding flip
        else:
            assert ours.scores.rob.images == math.ceil(0.25 * n) == ours.examples.measured.sum()
            assert ours.scores.rob.half_width > theirs.scores.rob.half_width


def test_a_screened_point_has_a_fully_measured_point_that_dominates_it_within_resolution(paths):
    _, _, at, _, screened, _ = paths
    whole = [p.scores for p in screened if not p.scores.screened]
    for point in (p.scores for p in screened if p.scores.screened):
        # a point in full with higher clean accuracy meets the rule, so this one is never the rule's pick
        floor = at.scores.rob.value - 0.1
        assert any(w.std.value > point.std.value and w.rob.value >= floor for w in whole)
        assert any(w.std.value >= point.std.value for w in whole)


def test_known_points_are_kept_and_not_measured_again(paths):
    exp, best, at, _, screened, _ = paths
    known = {p.alpha: p for p in screened[1:4]}
    exp.attack_cost = cost = AttackCost()
    again = alpha_path(exp, best, at, progress=False, known=known)
    assert [p for p in again if p.alpha in known] == list(known.values())
    assert std(again) == std(screened)
    assert 0 < cost.gradient_evals


def test_without_screening_each_point_is_final_as_soon_as_it_is_measured(paths):
    """Progress and a resume go point by point: a kill loses at most the point being measured."""
    exp, best, at, full, _, _ = paths
    unscreened = dataclasses.replace(
        exp, config=dataclasses.replace(exp.config, alpha=dataclasses.replace(exp.config.alpha, screen=1.0))
    )
    unscreened.attack_cost = cost = AttackCost()
    spent = []
    again = alpha_path(unscreened, best, at, progress=False, on_point=lambda point: spent.append(cost.gradient_evals))
    assert len(spent) == len(GRID) - 1 and all(a < b for a, b in zip(spent, spent[1:]))
    assert [p.scores.rob for p in again] == [p.scores.rob for p in full]


def test_a_point_asked_in_full_is_never_left_screened(paths):
    exp, best, at, full, screened, _ = paths
    n = len(exp.splits.val)
    alpha = next(p.alpha for p in screened if p.scores.screened)  # a point screening settles on its own
    again = alpha_path(exp, best, at, progress=False, in_full=[alpha])
    [mine] = [p.scores for p in again if p.alpha == alpha]
    [theirs] = [p.scores for p in full if p.alpha == alpha]
    assert not mine.screened and abs(mine.rob.value - theirs.rob.value) <= 100 / n + 1e-9


def test_a_screened_point_is_compared_with_the_at_model_on_the_screen_only(paths):
    _, _, at, _, screened, _ = paths
    point = next(p for p in screened if p.scores.screened)
    versus = point.examples.versus(at.examples)
    screen = point.examples.measured
    expected = 100 * (point.examples.robust[screen].mean() - at.examples.robust[screen].mean())
    assert versus.rob.points == pytest.approx(expected)
    assert versus.rob.low <= versus.rob.points <= versus.rob.high and 0 <= versus.rob.p <= 1


def test_the_paired_rule_accepts_only_points_whose_paired_lower_bound_keeps_the_tolerance(paths):
    exp, _, at, full, _, _ = paths
    paired = dataclasses.replace(exp.config.alpha, rule="paired")
    chosen = alpha_by_rule(full, at, paired)
    lower = {p.alpha: p.examples.versus(at.examples).rob.low for p in full if p.alpha > 0}
    tolerated = [p for p in full if p.alpha == 0 or lower[p.alpha] >= -paired.tolerance - 1e-9]
    best = max(tolerated, key=lambda p: (p.scores.std.value, p.scores.rob.value, -p.alpha))
    assert chosen == best.alpha  # the most accurate of the points whose paired lower bound stays within tolerance
    assert any(lower[a] < -paired.tolerance for a in lower)  # the rule refuses something here: it can fail
