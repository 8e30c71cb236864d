"""Fine-tunes cached under a key of everything they (and their α path) depend on: a trial that asks for a
fine-tune already made reuses it, and the front and `export` read the weights back from here. The AT model's
per-example results on each split are cached beside them (`at_examples`), measured once per sweep.

While a fine-tune's α path is being evaluated, its progress is kept beside it (`<key>.partial.pt`: the fine-tuned
weights and the α points done), so a trial killed mid-path carries on from its last point, whenever the kill came.
Entries are plain tensors and numbers, read back with torch.load(weights_only=True).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from rift_sweep.config import SweepConfig
from rift_sweep.core.errors import InputError
from rift_sweep.core.files import atomic_write, content_key
from rift_sweep.core.finetune import FinetuneSettings, FinetuneState
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.models.checkpoints import StateDict
from rift_sweep.procedure.experiment import cache_dir
from rift_sweep.procedure.records import AlphaPoint

FORMAT = 2  # 2: α points carry per-example correctness (paired comparisons); older entries are not reused


@dataclass(frozen=True)
class CachedFinetune:
    """A finished fine-tune and its α path on validation."""

    best_state: StateDict  # the entries fine-tuning changed (core.finetune.tuned_keys), best epoch
    best_epoch: int
    val_acc: list[float]
    path: list[AlphaPoint]
    finetune_seconds: float
    eval_seconds: float
    points_evaluated: int  # α points this fine-tune's trial measured (the rest came from a resumed partial path)

    def point(self, alpha: float) -> AlphaPoint | None:
        return next((p for p in self.path if p.alpha == alpha), None)


@dataclass(frozen=True)
class PartialFinetune:
    """A fine-tune whose α path was being measured: its state and the points done."""

    state: FinetuneState
    path: list[AlphaPoint]


def finetune_key(config: SweepConfig, checkpoint_sha256: str, module: str, settings: FinetuneSettings) -> str:
    return content_key(
        {
            "format": FORMAT,
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


def load_finetune(config: SweepConfig, key: str) -> CachedFinetune | None:
    plain = _read(finetune_path(config, key))
    if plain is None:
        return None
    if "path" not in plain:
        raise InputError(f"the fine-tune cache {finetune_path(config, key)} was written by an older rift-sweep")
    return CachedFinetune(**{**plain, "path": [AlphaPoint.from_plain(p) for p in plain["path"]]})


def save_finetune(config: SweepConfig, key: str, entry: CachedFinetune) -> None:
    _write(finetune_path(config, key), {**vars(entry), "path": [p.plain() for p in entry.path]})


def load_partial(config: SweepConfig, key: str) -> PartialFinetune | None:
    plain = _read(partial_path(config, key))
    if plain is None:
        return None
    return PartialFinetune(FinetuneState(**plain["state"]), [AlphaPoint.from_plain(p) for p in plain["path"]])


def save_partial(config: SweepConfig, key: str, progress: PartialFinetune) -> None:
    _write(partial_path(config, key), {"state": vars(progress.state), "path": [p.plain() for p in progress.path]})


def at_examples_path(config: SweepConfig, checkpoint_sha256: str, split: str) -> Path:
    """Where the AT model's examples on `split` are kept: keyed by what decides them."""
    key = content_key(
        {
            "format": FORMAT,
            "checkpoint": checkpoint_sha256,
            "split": split,
            "seed": config.seed,
            "data": dataclasses.asdict(config.data),
            "attack": dataclasses.asdict(config.attack),
            "ood": dataclasses.asdict(config.ood),
        }
    )
    return cache_dir(config, "at") / f"{key}.pt"


def load_at(config: SweepConfig, checkpoint_sha256: str, split: str) -> AlphaPoint | None:
    """The AT model (α = 0) on `split`: its scores and per-example correctness, once measured."""
    plain = _read(at_examples_path(config, checkpoint_sha256, split))
    return None if plain is None else AlphaPoint.from_plain(plain)


def save_at(config: SweepConfig, checkpoint_sha256: str, split: str, at: AlphaPoint) -> AlphaPoint:
    _write(at_examples_path(config, checkpoint_sha256, split), at.plain())
    return at


def spec_state(config: SweepConfig, at_state: StateDict, spec: tuple[str, float] | None) -> StateDict:
    """θ_AT (spec None) or θ_AT interpolated towards the cached fine-tune `key` at `alpha`: spec = (key, alpha)."""
    if spec is None:
        return at_state
    key, alpha = spec
    cached = load_finetune(config, key)
    if cached is None:
        raise InputError(
            f"the fine-tune {key} is not in the cache under {config.output_path}; was the output folder moved or "
            f"cleaned?"
        )
    return interpolate_state(at_state, cached.best_state, alpha)


def _read(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def _write(path: Path, entry: dict) -> None:
    with atomic_write(path) as tmp:
        torch.save(entry, tmp)
