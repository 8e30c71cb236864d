"""AutoAttack (Croce & Hein, ICML 2020), the robust accuracy reviewers in this field ask for, through
`pyautoattack` (fra31's code, packaged on PyPI; an optional dependency: pip install 'rift-sweep[autoattack]').

The standard version runs APGD-CE, APGD-T, FAB-T and Square, each on the examples still standing; an example
counts as robust only if all four fail. It costs far more than PGD-10 (hundreds of passes per example), so the
sweep runs it once, on the test split, for the recommended model and the AT model (`attack.final: autoattack`).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import nn

from rift_sweep.core.models.architectures import only_trainable
from rift_sweep.core.robustness.attacks import LabelledImages, check_model_device, eval_mode, image_batches

PACKAGE = "pyautoattack"


def autoattack_available() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


def autoattack_examples(
    model: nn.Module,
    split: LabelledImages,
    *,
    eps: float,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> np.ndarray:
    """Bool [N], in the split's order: the example is classified correctly clean and under every attack of
    AutoAttack's standard version (ℓ∞, radius `eps` on images in [0, 1])."""
    from pyautoattack import AutoAttack  # optional: imported only when asked for

    check_model_device(model, device)
    x = torch.cat([xb for xb, _ in image_batches(split.x, split.y, batch_size, "cpu")])
    # Frozen weights: FAB's .backward() would otherwise also compute (and leave behind) every weight's gradient.
    with eval_mode(model), only_trainable(model):
        attack = AutoAttack(model, eps=eps, norm="Linf", version="standard", device=device, seed=seed)
        attack.verbose = False
        _, predicted = attack.run_standard_evaluation(x, split.y, batch_size=batch_size)
    return (predicted.cpu() == split.y).numpy()
