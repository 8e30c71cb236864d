"""The α path: screening spends the rest of validation only on points that can still matter, and keeps the answers."""

from __future__ import annotations

import dataclasses
import math

import pytest

from rift_sweep.config import load_config
from rift_sweep.core.attacks import AttackCost
from rift_sweep.names import ROB_IMAGES
from rift_sweep.procedure.experiment import load_experiment
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
    at_val = exp.evaluate(exp.at_state, "val")
    unscreened = dataclasses.replace(
        exp, config=dataclasses.replace(config, alpha=dataclasses.replace(config.alpha, screen=1.0))
    )
    costs = {}
    for name, e in (("full", unscreened), ("screened", exp)):
        e.attack_cost = costs[name] = AttackCost()
    return (
        exp,
        best,
        at_val,
        alpha_path(unscreened, best, at_val, progress=False),
        alpha_path(exp, best, at_val, progress=False),
        costs,
    )


def test_screening_keeps_the_rule_and_every_fully_measured_point(paths):
    exp, _, at_val, full, screened, costs = paths
    n, tolerance = len(exp.splits.val), exp.config.alpha.tolerance
    assert [r["std_acc"] for r in screened] == [r["std_acc"] for r in full]  # clean accuracy is always on all of val
    assert alpha_by_rule(screened, at_val, tolerance) == alpha_by_rule(full, at_val, tolerance)
    part = [r for r in screened if r[ROB_IMAGES] < n]
    assert part, "no point was screened: the test would not exercise screening"
    assert costs["screened"].gradient_evals < costs["full"].gradient_evals
    for ours, theirs in zip(screened, full):
        if ours[ROB_IMAGES] == n:
            assert (
                abs(ours["rob_acc"] - theirs["rob_acc"]) <= 100 / n + 1e-9
            )  # the same starts: ≤ 1 float-rounding flip
        else:
            assert ours[ROB_IMAGES] == math.ceil(0.25 * n)
            assert ours["rob_acc_high"] - ours["rob_acc_low"] > theirs["rob_acc_high"] - theirs["rob_acc_low"]


def test_a_screened_point_has_a_fully_measured_point_that_dominates_it_within_resolution(paths):
    exp, _, at_val, _, screened, _ = paths
    n = len(exp.splits.val)
    whole = [r for r in screened if r[ROB_IMAGES] == n]
    for row in (r for r in screened if r[ROB_IMAGES] < n):
        # a point in full with higher clean accuracy meets the rule, so this one is never the rule's pick
        assert any(w["std_acc"] > row["std_acc"] and w["rob_acc"] >= at_val["rob_acc"] - 0.1 for w in whole)
        assert any(w["std_acc"] >= row["std_acc"] for w in whole)


def test_known_points_are_kept_and_not_measured_again(paths):
    exp, best, at_val, _, screened, _ = paths
    known = {row["alpha"]: row for row in screened[1:4]}
    exp.attack_cost = cost = AttackCost()
    again = alpha_path(exp, best, at_val, progress=False, known=known)
    assert [r for r in again if r["alpha"] in known] == list(known.values())
    assert [r["std_acc"] for r in again] == [r["std_acc"] for r in screened]
    assert 0 < cost.gradient_evals


def test_without_screening_each_point_is_final_as_soon_as_it_is_measured(paths):
    """Progress and a resume go point by point: a kill loses at most the point being measured."""
    exp, best, at_val, full, _, _ = paths
    unscreened = dataclasses.replace(
        exp, config=dataclasses.replace(exp.config, alpha=dataclasses.replace(exp.config.alpha, screen=1.0))
    )
    unscreened.attack_cost = cost = AttackCost()
    spent = []
    again = alpha_path(unscreened, best, at_val, progress=False, on_point=lambda row: spent.append(cost.gradient_evals))
    assert len(spent) == len(GRID) - 1 and all(a < b for a, b in zip(spent, spent[1:]))
    assert [r["rob_acc"] for r in again] == [r["rob_acc"] for r in full]


def test_a_point_asked_in_full_is_never_left_screened(paths):
    exp, best, at_val, full, screened, _ = paths
    n = len(exp.splits.val)
    alpha = next(r["alpha"] for r in screened if r[ROB_IMAGES] < n)  # a point screening settles on its own
    again = alpha_path(exp, best, at_val, progress=False, in_full=[alpha])
    [mine] = [r for r in again if r["alpha"] == alpha]
    [theirs] = [r for r in full if r["alpha"] == alpha]
    assert mine[ROB_IMAGES] == n and abs(mine["rob_acc"] - theirs["rob_acc"]) <= 100 / n + 1e-9
