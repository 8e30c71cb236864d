"""AutoAttack through pyautoattack (fra31's code) on the digits model: stronger than PGD, counted per example."""

from __future__ import annotations

import numpy as np
import pytest

from rift_sweep.core.data.datasets import Split
from rift_sweep.core.robustness.attacks import PGD
from rift_sweep.core.robustness.autoattack import autoattack_examples
from rift_sweep.core.robustness.evaluate import evaluate_examples


def test_autoattack_breaks_at_least_what_pgd_breaks(digits, fresh_digits_model):
    model = fresh_digits_model
    images = Split(digits.test.x[:24], digits.test.y[:24])
    robust = autoattack_examples(model, images, eps=0.1, batch_size=12)
    pgd = evaluate_examples(model, images, pgd=PGD(eps=0.1, step_size=0.025, steps=5))
    assert robust.dtype == np.bool_ and robust.shape == (24,)
    assert not (robust & ~pgd.clean).any()  # misclassified clean: never robust
    assert 0 < robust.sum() <= pgd.robust.sum()  # the standard ensemble is at least as strong as PGD-5
    # the weights stayed out of it: no gradient computed for them (FAB back-propagates), none left behind
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_the_config_names_autoattack_as_the_final_attack(digits_config):
    assert digits_config(attack={"final": "autoattack"}).attack.final == "autoattack"
    with pytest.raises(ValueError, match="final must be 'pgd' or 'autoattack'"):
        digits_config(attack={"final": "apgd"})
