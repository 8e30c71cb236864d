"""Step 2 of RiFT: fine-tune one module on clean data, everything else frozen.

Paper / reference defaults: SGD momentum 0.9, lr 0.001, weight decay 5e-4, batch 128, 10 epochs,
lr ×0.1 from epoch epochs//2 on; the epoch with the best validation accuracy is kept.
BatchNorm: "frozen" keeps θ_AT's running statistics (the paper's reading: only the module changes);
"adapt" trains in train() mode as the reference code does, so BN statistics of the whole network move.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from rift_sweep.core.data.datasets import Split, iterate_batches
from rift_sweep.core.models.architectures import only_trainable
from rift_sweep.core.models.checkpoints import StateDict, cpu_copy
from rift_sweep.core.mrc import get_module
from rift_sweep.core.robustness.evaluate import accuracy


@dataclass(frozen=True)
class FinetuneSettings:
    lr: float = 0.001
    epochs: int = 10
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    bn: Literal["frozen", "adapt"] = "frozen"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0 (paper: 0.001); got {self.lr}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 (paper: 10); got {self.epochs}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1) (paper: 0.9); got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0 (paper: 5e-4); got {self.weight_decay}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (paper: 128); got {self.batch_size}")
        if self.bn not in ("frozen", "adapt"):
            raise ValueError(f"bn must be 'frozen' (paper) or 'adapt' (reference code); got {self.bn!r}")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based `epoch`: ×0.1 from epochs//2 on (never from the very first epoch)."""
        drop_at = self.epochs // 2
        return self.lr * (0.1 if 0 < drop_at <= epoch else 1.0)


@dataclass
class FinetuneState:
    """Everything needed to carry on after `epochs_done` epochs (saved in trial checkpoints): only the entries
    fine-tuning changes (`tuned_keys`), now and at the best epoch, and the optimizer's momentum for the one weight —
    a few MB even for WRN-34-10, whose whole state is 180 MB."""

    epochs_done: int = 0
    model_state: StateDict | None = None  # the tuned entries after `epochs_done` epochs
    optimizer_state: dict | None = None
    val_acc: list[float] = field(default_factory=list)
    best_epoch: int = 0  # 1-based; 0 = none yet
    best_state: StateDict | None = None  # the tuned entries at the best epoch


@dataclass(frozen=True)
class FinetuneResult:
    best_state: StateDict  # the tuned entries (`tuned_keys`) at the best epoch, on CPU; every other entry is θ_AT's
    best_epoch: int
    val_acc: list[float]  # validation standard accuracy after each epoch
    seconds: float


EVERY_LAYER = "*"  # fine-tune every parameter (the paper's ablation "all layers"), not one module's weight


def tuned_parameters(model: nn.Module, modules: str | Sequence[str]) -> dict[str, nn.Parameter]:
    """The parameters fine-tuning trains, by state key: each named module's weight (RiFT: one module), or every
    parameter for EVERY_LAYER."""
    if modules == EVERY_LAYER:
        return dict(model.named_parameters())
    names = [modules] if isinstance(modules, str) else list(modules)
    return {f"{name}.weight": get_module(model, name).weight for name in names}


def tuned_keys(model: nn.Module, modules: str | Sequence[str], bn: str) -> list[str]:
    """The state entries fine-tuning changes: the trained parameters; with bn "adapt" also every BatchNorm
    statistic."""
    keys = list(tuned_parameters(model, modules))
    if bn == "adapt":
        keys += [
            f"{name}.{buffer}" if name else buffer
            for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for buffer, value in module.named_buffers(recurse=False)
            if value is not None
        ]
    return keys


def finetune_module(
    model: nn.Module,
    module_name: str | Sequence[str],
    train: Split,
    val: Split,
    settings: FinetuneSettings = FinetuneSettings(),
    *,
    augment: str = "none",
    crop_padding: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    resume: FinetuneState | None = None,
    on_epoch: Callable[[FinetuneState], None] | None = None,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune `module_name`'s weight of `model` (on `device`, holding θ_AT) on clean `train` data; several
    modules' weights together for a list of names, every parameter for EVERY_LAYER (the paper's ablations).

    The model ends holding the best epoch's weights. `on_epoch` receives the state after every epoch
    (e.g. to checkpoint a trial); `resume` continues from such a state, reproducing the same run.
    """
    start = time.perf_counter()
    weights = list(tuned_parameters(model, module_name).values())
    optimizer = torch.optim.SGD(weights, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    keys = tuned_keys(model, module_name, settings.bn)
    state = resume or FinetuneState()
    if resume is not None:
        model.load_state_dict(resume.model_state, strict=False)  # the model holds θ_AT everywhere else
        optimizer.load_state_dict(resume.optimizer_state)
    epochs = range(state.epochs_done, settings.epochs)
    with only_trainable(model, *weights):
        for epoch in tqdm(epochs, desc=f"fine-tune {module_name}", disable=None if progress else True, leave=False):
            _train_one_epoch(
                model,
                optimizer,
                train=train,
                settings=settings,
                epoch=epoch,
                augment=augment,
                crop_padding=crop_padding,
                seed=seed,
                device=device,
            )
            state.val_acc.append(accuracy(model, val, batch_size=256, device=device))
            tuned = cpu_copy({k: v for k, v in model.state_dict().items() if k in keys})
            if state.best_epoch == 0 or state.val_acc[-1] > state.val_acc[state.best_epoch - 1]:
                state.best_epoch, state.best_state = epoch + 1, tuned
            state.epochs_done = epoch + 1
            state.model_state = tuned
            state.optimizer_state = copy.deepcopy(optimizer.state_dict())
            if on_epoch is not None:
                on_epoch(state)
    model.load_state_dict(state.best_state, strict=False)
    return FinetuneResult(state.best_state, state.best_epoch, list(state.val_acc), time.perf_counter() - start)


def _train_one_epoch(model, optimizer, train, settings, epoch, augment, crop_padding, seed, device) -> None:
    # A generator per (seed, epoch) makes a resumed run draw the same batches as an uninterrupted one.
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    for group in optimizer.param_groups:
        group["lr"] = settings.lr_at(epoch)
    model.train(settings.bn == "adapt")
    batches = iterate_batches(
        train,
        settings.batch_size,
        shuffle=True,
        augment=augment,
        crop_padding=crop_padding,
        generator=generator,
        device=device,
    )
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
