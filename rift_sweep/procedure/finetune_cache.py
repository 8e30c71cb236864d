"""Fine-tunes cached under a key of everything they (and their α path) depend on: a trial that asks for a
fine-tune already made reuses it, and the front and `export` read the weights back from here.

While a fine-tune's α path is being evaluated, its progress is kept beside it (`<key>.partial.pt`: the fine-tuned
weights and the α points done), so a trial killed mid-path carries on from its last point, whenever the kill came.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from rift_sweep.config import SweepConfig
from rift_sweep.core.errors import InputError
from rift_sweep.core.files import atomic_write, content_key
from rift_sweep.core.finetune import FinetuneSettings
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.models import StateDict
from rift_sweep.procedure.experiment import cache_dir


def finetune_key(config: SweepConfig, checkpoint_sha256: str, module: str, settings: FinetuneSettings) -> str:
    return content_key(
        {
            "checkpoint": checkpoint_sha256,
            "model": dataclasses.asdict(config.model),
            "module": module,
            "finetune": dataclasses.asdict(settings),
            "seed": config.seed,
            "data": dataclasses.asdict(config.data),
            "attack": dataclasses.asdict(config.attack),
            "ood": dataclasses.asdict(config.ood),
            "alpha_grid": list(config.alpha.grid),
        }
    )


def finetune_path(config: SweepConfig, key: str) -> Path:
    return cache_dir(config, "finetune") / f"{key}.pt"


def partial_path(config: SweepConfig, key: str) -> Path:
    return cache_dir(config, "finetune") / f"{key}.partial.pt"


def load_finetune(config: SweepConfig, key: str) -> dict | None:
    """{best_state, best_epoch, val_acc, alpha_path, finetune_seconds, eval_seconds, module}, or None.
    best_state holds the entries fine-tuning changed (core.finetune.tuned_keys); older caches hold whole states."""
    return _read(finetune_path(config, key))


def spec_state(config: SweepConfig, at_state: StateDict, spec: dict | None) -> StateDict:
    """θ_AT (spec None) or θ_AT interpolated towards the cached fine-tune `spec["finetune_key"]` at spec["alpha"]."""
    if spec is None:
        return at_state
    cached = load_finetune(config, spec["finetune_key"])
    if cached is None:
        raise InputError(
            f"the fine-tune {spec['finetune_key']} is not in the cache under {config.output_path}; "
            f"was the output folder moved or cleaned?"
        )
    return interpolate_state(at_state, cached["best_state"], spec["alpha"])


def save_finetune(config: SweepConfig, key: str, entry: dict) -> None:
    _write(finetune_path(config, key), entry)


def load_partial(config: SweepConfig, key: str) -> dict | None:
    """{finetune: FinetuneState fields, path: [α rows done]} of an unfinished α path, or None."""
    return _read(partial_path(config, key))


def save_partial(config: SweepConfig, key: str, progress: dict) -> None:
    _write(partial_path(config, key), progress)


def _read(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def _write(path: Path, entry: dict) -> None:
    with atomic_write(path) as tmp:
        torch.save(entry, tmp)
