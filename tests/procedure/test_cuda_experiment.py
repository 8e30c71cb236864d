"""An Experiment loaded onto a CUDA device evaluates as the plain CPU model does (within float noise).

Each test runs on the CPU too; the CUDA variants run where there is one (bench/gpu_check.py runs `pytest -m gpu`).
The reference is computed without the Experiment: the digits model (contiguous, on the CPU) through the core.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rift_sweep.core.robustness.attacks import attack_split
from rift_sweep.core.robustness.evaluate import evaluate_examples, ood_accuracy
from rift_sweep.procedure.experiment import load_experiment, mrc_source

from helpers import requires

DEVICES = ["cpu", pytest.param("cuda", marks=[requires("cuda"), pytest.mark.gpu])]


def flips_allowed(device: str, amp: bool) -> int:
    """Examples whose robustness may differ from the CPU reference: float rounding on the CPU (channels-last vs
    contiguous), TF32 convolutions on CUDA, and bf16 forward passes in the attack with amp (CUDA only)."""
    if torch.device(device).type != "cuda":
        return 1
    return 6 if amp else 3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", [False, True])
def test_the_experiment_on_the_device_evaluates_validation_as_the_cpu_model_does(
    digits_config, digits_model, device, amp
):
    config = digits_config(attack={"amp": amp}, ood={"corruptions": ["gaussian_noise", "contrast"], "severities": [3]})
    exp = load_experiment(config, device=device)
    assert exp.device.type == torch.device(device).type
    assert next(exp.model.parameters()).device.type == exp.device.type
    scores = exp.evaluate(exp.at_state, "val")

    val = exp.splits.val
    reference = evaluate_examples(
        digits_model, val, pgd=config.attack, batch_size=config.eval_batch_size, seed=config.seed
    )
    found = exp.examples(exp.at_state, "val")
    on_cuda = torch.device(device).type == "cuda"
    assert int((found.clean != reference.clean).sum()) <= (1 if on_cuda else 0)
    assert int((found.robust != reference.robust).sum()) <= flips_allowed(device, amp)
    assert 0 < reference.robust.sum() < reference.clean.sum()  # the comparison means something
    # Two calls on CUDA may differ by a flip (cuDNN's backward passes need not sum in the same order).
    one_example = 100 / len(val) if on_cuda else 0.0
    assert scores.std.value == pytest.approx(100 * found.clean.mean(), abs=one_example + 1e-9)
    assert scores.rob.value == pytest.approx(100 * found.robust.mean(), abs=one_example + 1e-9)
    assert scores.rob.low <= scores.rob.value <= scores.rob.high

    ood_mean, per_corruption = ood_accuracy(digits_model, exp.ood("val"), batch_size=config.eval_batch_size)
    assert set(per_corruption) == {"gaussian_noise", "contrast"}
    assert scores.ood == pytest.approx(ood_mean, abs=100 * 2 / len(exp.ood("val").sets["contrast"].y))


@pytest.mark.parametrize("device", DEVICES)
def test_the_adversarial_set_for_mrc_built_on_the_device_matches_the_cpu_one(digits_config, digits_model, device):
    config = digits_config(ood={"enabled": False})
    exp = load_experiment(config, device=device)
    found = exp.adversarial_val
    source = mrc_source(config, exp.splits.val)
    reference = attack_split(
        config.attack, digits_model, source, batch_size=256, generator=torch.Generator().manual_seed(config.seed)
    )
    assert found.x.device.type == "cpu" and found.x.dtype == torch.float32  # shipped to the MRC actors from the CPU
    assert torch.equal(found.y, reference.y)
    clean = source.x.float() / 255
    assert (found.x - clean).abs().max() <= config.attack.eps + 1e-6  # inside the ε-ball around each image
    # The same random starts (drawn on a CPU generator); a gradient sign may differ where it is near zero.
    same = np.isclose(found.x.numpy(), reference.x.numpy(), atol=1e-5).mean()
    assert same >= (0.98 if torch.device(device).type == "cuda" else 0.999)


@pytest.mark.parametrize("device", DEVICES)
def test_a_worker_builds_the_shipped_experiment_on_its_device(digits_config, device):
    """What Ray workers do: the driver's CPU experiment, shipped (ExperimentData), rebuilt on the worker's device."""
    config = digits_config(ood={"corruptions": ["contrast"], "severities": [3]})
    driver = load_experiment(config, device="cpu")
    worker = driver.portable("val").experiment(config, torch.device(device))
    assert next(worker.model.parameters()).device.type == torch.device(device).type
    assert worker.ood("val") is driver.ood("val")  # built once, by the driver
    on_worker, on_driver = worker.examples(worker.at_state, "val"), driver.examples(driver.at_state, "val")
    assert int((on_worker.robust != on_driver.robust).sum()) <= flips_allowed(device, amp=False)
