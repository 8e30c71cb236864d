"""`train-at`: PGD adversarial training of the configured model, saved as a checkpoint that records its split."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from rift_sweep.config import SweepConfig
from rift_sweep.core.adversarial_training import ATEpoch, ATResult, adversarial_train
from rift_sweep.core.files import check_writable
from rift_sweep.core.models.architectures import on_device
from rift_sweep.core.models.checkpoints import save_checkpoint
from rift_sweep.procedure.experiment import build_architecture, load_data, resolve_device, split_identity


def train_at_checkpoint(config: SweepConfig, out: Path, on_epoch: Callable[[ATEpoch], None] | None = None) -> ATResult:
    """Train, keep the epoch with the best validation robust accuracy, write it to `out` (checked first). The initial
    weights come from `config.seed` too, so a run is repeatable. `on_epoch`: see adversarial_train."""
    check_writable(out)
    splits = load_data(config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = on_device(build_architecture(config, splits.info), device)
    start = time.perf_counter()
    result = adversarial_train(
        model,
        splits.train,
        val=splits.val,
        settings=config.adversarial_training,
        attack=config.attack,
        augment=splits.info.augment,
        crop_padding=splits.info.crop_padding,
        seed=config.seed,
        device=device,
        on_epoch=on_epoch,
    )
    best = result.best
    attack = config.attack
    save_checkpoint(
        out,
        model,
        split=split_identity(config),
        model=config.model.label,
        epochs=config.adversarial_training.epochs,
        best_epoch=result.best_epoch,
        val_std_acc=best.std_acc,
        val_rob_acc=best.rob_acc,
        attack={"eps": attack.eps, "step_size": attack.step_size, "steps": attack.steps},
        train_examples=len(splits.train),
        seconds=round(time.perf_counter() - start, 1),
    )
    return result
