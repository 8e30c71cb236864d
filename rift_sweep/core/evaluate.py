"""Metrics, in one place: clean, adversarial (PGD) and out-of-distribution accuracy, and the robust loss.

Every function runs the model in eval() and restores each submodule's own mode afterwards. Data is a
data.Split (uint8 images, scaled by 1/255 batch by batch), an attacks.AdversarialSet (float images in
[0, 1]), or an (x, y) pair of either kind. Accuracies are percentages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rift_sweep.core.attacks import PGD, LabelledImages, check_model_device, eval_mode, image_batches

if TYPE_CHECKING:
    from rift_sweep.core.corruptions import OODSet

Labelled = LabelledImages | tuple[Tensor, Tensor]


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
) -> float:
    """Top-1 accuracy (%) under the PGD attack; with runs > 1 the paper's "worst of N runs".

    Run i draws its random starts from a CPU generator seeded seed + i; each run's accuracy is computed
    on the whole split and the minimum is reported. `amp` speeds up the attack on CUDA only; the final
    predictions on the adversarial examples are always made in fp32.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be >= 1 (the paper reports the worst of 3), got {runs}")
    x, y = _images_and_labels(split)
    _check_nonempty(y)
    check_model_device(model, device)
    accuracies = []
    for run in range(runs):
        generator = torch.Generator().manual_seed(seed + run)
        correct = sum(
            _count_correct(model, pgd.perturb(model, xb, yb, generator=generator, amp=amp), yb)
            for xb, yb in image_batches(x, y, batch_size, device)
        )
        accuracies.append(100.0 * correct / len(y))
    return min(accuracies)


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


def evaluate(
    model: nn.Module,
    split: Labelled,
    *,
    pgd: PGD | None = None,
    ood: OODSet | None = None,
    runs: int = 1,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    amp: bool = False,
) -> dict[str, float]:
    """All metrics of one model: "std_acc"; "rob_acc" when `pgd` is given; "ood_acc" and "ood/<corruption>"
    for every corruption type when `ood` is given."""
    metrics = {"std_acc": accuracy(model, split, batch_size=batch_size, device=device)}
    if pgd is not None:
        metrics["rob_acc"] = robust_accuracy(
            model, split, pgd, runs=runs, batch_size=batch_size, device=device, seed=seed, amp=amp
        )
    if ood is not None:
        mean, per_corruption = ood_accuracy(model, ood, batch_size=batch_size, device=device)
        metrics["ood_acc"] = mean
        metrics.update({f"ood/{name}": acc for name, acc in per_corruption.items()})
    return metrics


def _count_correct(model: nn.Module, x: Tensor, y: Tensor) -> int:
    with eval_mode(model), torch.inference_mode():
        return int((model(x).argmax(dim=1) == y).sum())


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

