"""Metrics, in one place: clean, adversarial (PGD, early stop) and out-of-distribution accuracy, the robust loss,
and per-example correctness for intervals and paired tests (core.robustness.statistics).

Every function runs the model in eval() and restores each submodule's own mode afterwards. Data is a
data.Split (uint8 images, scaled by 1/255 batch by batch), an attacks.AdversarialSet (float images in
[0, 1]), or an (x, y) pair of either kind. Accuracies are percentages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rift_sweep.core.robustness.attacks import (
    PGD,
    AttackCost,
    LabelledImages,
    check_model_device,
    eval_mode,
    image_batches,
)

if TYPE_CHECKING:
    from rift_sweep.core.data.corruptions import OODSet

Labelled = LabelledImages | tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Correct:
    """Per-example correctness (bool [N], in the split's order): clean, and against the attack when one ran."""

    clean: np.ndarray
    robust: np.ndarray | None = None


def accuracy(
    model: nn.Module, split_or_xy: Labelled, *, batch_size: int = 256, device: torch.device | str = "cpu"
) -> float:
    """Clean top-1 accuracy (%) of the model on a split, an adversarial set or an (x, y) pair."""
    x, y = _images_and_labels(split_or_xy)
    return loss_and_accuracy(model, x, y, batch_size=batch_size, device=device)[1]


def loss_and_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int, device: torch.device | str
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) over a whole image set (float in [0, 1], or uint8)."""
    _check_nonempty(y)
    check_model_device(model, device)
    loss_sum, correct = 0.0, 0
    with eval_mode(model), torch.inference_mode():
        for xb, yb in image_batches(x, y, batch_size, device):
            logits = model(xb).float()
            # Summed in Python floats: float64 on every device (MPS has none), exact counts.
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == yb).sum())
    return loss_sum / len(y), 100.0 * correct / len(y)


def robust_accuracy(
    model: nn.Module,
    split: Labelled,
    pgd: PGD,
    *,
    runs: int = 1,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    amp: bool = False,
    cost: AttackCost | None = None,
) -> float:
    """Top-1 accuracy (%) under the PGD attack with early stopping; with runs > 1 the paper's "worst of N runs".

    The percentage of `robust_examples`: an example counts only if it is classified correctly clean, at every
    PGD iterate (random start included) and in every run.
    """
    return _percent(
        robust_examples(
            model, split, pgd, runs=runs, batch_size=batch_size, device=device, seed=seed, amp=amp, cost=cost
        )
    )


def robust_examples(
    model: nn.Module,
    split: Labelled,
    pgd: PGD,
    *,
    runs: int = 1,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    amp: bool = False,
    cost: AttackCost | None = None,
    among: Tensor | None = None,
) -> Tensor:
    """Bool [N] on the CPU: which examples withstand the attack in every one of `runs` runs.

    Within a run, `PGD.robust_correct` decides (AutoAttack's early stop): an example is broken if it is
    misclassified clean or at any iterate of any restart, and broken examples get no further passes. Run i
    draws its random starts from a CPU generator seeded seed + i, batch by batch over the whole split, so
    its starts do not depend on what earlier runs broke; examples broken by an earlier run are skipped.

    Worst of N runs, per example: an example is robust only if it survives every run. This is the standard,
    stronger count, and it can be lower than the minimum over runs of each run's accuracy (what this function
    reported before) whenever different runs break different examples; the two agree only when one run breaks
    every example any run breaks. `amp` speeds up the attack on CUDA only; the clean check and the judgement
    of the last iterate are always made in fp32. `cost`, when given, is incremented by the passes spent.
    `among` (bool [N]) attacks only those examples and reports the others False; each attacked example gets the
    starts it gets without `among`, so two calls on complementary masks add up to one call on the whole split.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be >= 1 (the paper reports the worst of 3), got {runs}")
    x, y = _images_and_labels(split)
    _check_nonempty(y)
    check_model_device(model, device)
    robust = torch.ones(len(y), dtype=torch.bool) if among is None else _mask(among, len(y)).clone()
    for run in range(runs):
        generator = torch.Generator().manual_seed(seed + run)
        done = 0
        for xb, yb in image_batches(x, y, batch_size, device):
            rows = slice(done, done + len(yb))
            skip = ~robust[rows] if run or among is not None else None
            robust[rows] = pgd.robust_correct(model, xb, yb, generator=generator, amp=amp, cost=cost, skip=skip).cpu()
            done += len(yb)
    return robust


def ood_accuracy(
    model: nn.Module, ood: OODSet, *, batch_size: int = 256, device: torch.device | str = "cpu"
) -> tuple[float, dict[str, float]]:
    """Mean accuracy (%) over the corruption types (unweighted, as the paper reports), and each type's accuracy."""
    if not ood.sets:
        raise ValueError("the OOD set holds no corruptions; build it with at least one corruption type")
    per_corruption = {
        name: accuracy(model, split, batch_size=batch_size, device=device) for name, split in ood.sets.items()
    }
    return sum(per_corruption.values()) / len(per_corruption), per_corruption


def evaluate_examples(
    model: nn.Module,
    split: Labelled,
    *,
    pgd: PGD | None = None,
    runs: int = 1,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    amp: bool = False,
    cost: AttackCost | None = None,
    among: Tensor | None = None,
) -> Correct:
    """Per-example correctness, in the split's order, for intervals and paired tests (see core.robustness.statistics): robust
    only when `pgd` is given, as `robust_examples` counts it (same arguments, same result; False outside `among`)."""
    x, y = _images_and_labels(split)
    clean = _clean_correct(model, x, y, batch_size=batch_size, device=device).numpy()
    robust = None
    if pgd is not None:
        robust = robust_examples(
            model,
            split,
            pgd,
            runs=runs,
            batch_size=batch_size,
            device=device,
            seed=seed,
            amp=amp,
            cost=cost,
            among=among,
        ).numpy()
    return Correct(clean, robust)


def _clean_correct(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int, device: torch.device | str) -> Tensor:
    """Bool [N] on the CPU: the model's clean top-1 prediction is right."""
    _check_nonempty(y)
    check_model_device(model, device)
    with eval_mode(model), torch.inference_mode():
        return torch.cat([(model(xb).argmax(dim=1) == yb).cpu() for xb, yb in image_batches(x, y, batch_size, device)])


def _mask(among: Tensor, n: int) -> Tensor:
    among = torch.as_tensor(among)
    if among.dtype != torch.bool or among.shape != (n,):
        raise ValueError(f"among must be a bool mask [{n}] over the split, got {among.dtype} {tuple(among.shape)}")
    return among.cpu()


def _percent(correct: Tensor | np.ndarray) -> float:
    return 100.0 * int(correct.sum()) / len(correct)


def _images_and_labels(data: Labelled) -> tuple[Tensor, Tensor]:
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"expected an (x, y) pair, got a tuple of {len(data)} items")
        return data
    if not (hasattr(data, "x") and hasattr(data, "y")):
        raise ValueError(f"expected a Split, an AdversarialSet or an (x, y) pair, got {type(data).__name__}")
    return data.x, data.y


def _check_nonempty(y: Tensor) -> None:
    if len(y) == 0:
        raise ValueError("cannot evaluate on an empty set; pass at least one example")
