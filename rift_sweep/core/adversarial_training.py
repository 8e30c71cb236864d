"""PGD adversarial training (Madry et al., 2018): the AT baseline that RiFT starts from.

Defaults follow the paper's recipe (Bag-of-Tricks): PGD-10 ℓ∞ 8/255 step 2/255, 110 epochs, SGD momentum 0.9,
lr 0.1 ×0.1 at epochs 100 and 105, weight decay 5e-4, batch 128; the checkpoint kept is the epoch with the
best robust accuracy on the validation split. Milestones are fractions of the run so short runs scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from rift_sweep.core.data.datasets import Split, iterate_batches
from rift_sweep.core.models.checkpoints import StateDict, cpu_copy
from rift_sweep.core.robustness.attacks import PGD
from rift_sweep.core.robustness.evaluate import accuracy, robust_accuracy


@dataclass(frozen=True)
class ATSettings:
    epochs: int = 110
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    lr_milestones: tuple[float, ...] = (100 / 110, 105 / 110)  # fractions of `epochs`; lr ×0.1 at each

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 (paper: 110); got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0 (paper: 0.1); got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (paper: 128); got {self.batch_size}")
        if any(not 0 < m <= 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones are fractions of the run in (0, 1]; got {list(self.lr_milestones)}")

    def lr_at(self, epoch: int) -> float:
        drops = sum(epoch >= round(m * self.epochs) for m in self.lr_milestones)
        return self.lr * 0.1**drops


@dataclass(frozen=True)
class ATEpoch:
    """One epoch of adversarial training: its lr and mean training loss, then validation accuracies (%)."""

    epoch: int  # 1-based
    lr: float
    train_loss: float
    std_acc: float
    rob_acc: float
    seconds: float


@dataclass(frozen=True)
class ATResult:
    best_state: StateDict
    best_epoch: int  # 1-based
    history: list[ATEpoch]

    @property
    def best(self) -> ATEpoch:
        return self.history[self.best_epoch - 1]


def adversarial_train(
    model: nn.Module,
    train: Split,
    val: Split,
    settings: ATSettings,
    attack: PGD,
    *,
    augment: str = "none",
    crop_padding: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[ATEpoch], None] | None = None,
) -> ATResult:
    """Train `model` (on `device`) on PGD examples; keep the epoch with the best validation robust accuracy.
    `on_epoch` receives each epoch as soon as it is measured."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    generator = torch.Generator().manual_seed(seed)
    history, best_state, best_epoch = [], None, 0
    for epoch in tqdm(range(settings.epochs), desc="adversarial training", disable=None if progress else True):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = settings.lr_at(epoch)
        train_loss = _train_one_epoch(
            model,
            optimizer,
            train=train,
            settings=settings,
            attack=attack,
            augment=augment,
            crop_padding=crop_padding,
            generator=generator,
            device=device,
        )
        row = ATEpoch(
            epoch=epoch + 1,
            lr=settings.lr_at(epoch),
            train_loss=train_loss,
            std_acc=accuracy(model, val, device=device),
            rob_acc=robust_accuracy(model, val, attack, device=device, seed=seed),
            seconds=time.perf_counter() - start,
        )
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if best_state is None or row.rob_acc > history[best_epoch - 1].rob_acc:
            best_epoch = epoch + 1
            best_state = cpu_copy(model.state_dict())
    model.load_state_dict(best_state)
    return ATResult(best_state, best_epoch, history)


def _train_one_epoch(model, optimizer, train, settings, attack, augment, crop_padding, generator, device) -> float:
    total, count = 0.0, 0
    for x, y in iterate_batches(
        train,
        settings.batch_size,
        shuffle=True,
        augment=augment,
        crop_padding=crop_padding,
        generator=generator,
        device=device,
    ):
        x_adv = attack.perturb(model, x, y, generator=generator)
        model.train()
        loss = nn.functional.cross_entropy(model(x_adv), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(y), count + len(y)
    model.eval()
    return total / max(count, 1)
