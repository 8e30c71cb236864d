"""The sweep's configuration: YAML (search_spaces/*.yaml) validated into typed, frozen dataclasses.

Every error names the field (e.g. `search.space.lr.low`) and what is allowed. Sections reuse the core's
own settings classes (PGD, MRCSettings, FinetuneSettings, ATSettings), so each setting has one home.
Relative paths in `data.root`, `model.checkpoint` and `ood.root` are resolved against the config file's
folder; `output_dir` against the working directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from rift_sweep.adversarial_training import ATSettings
from rift_sweep.attacks import PGD
from rift_sweep.finetune import FinetuneSettings
from rift_sweep.mrc import MRCSettings


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field and the fix."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str
    root: str | None = None  # None: the dataset's default folder
    download: bool = False
    val_size: int | float = 0.1  # carved from the training set: a count, or a fraction in (0, 1)
    split_seed: int = 0  # the carve; must match the AT checkpoint's, or validation overlaps its training data
    train_subset: int | None = None
    val_subset: int | None = None
    test_subset: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    name: str
    checkpoint: str | None = None  # the adversarially trained weights RiFT starts from


@dataclass(frozen=True)
class AttackConfig(PGD):
    """PGD used for every robust accuracy; `test_runs` = the paper's worst-of-N runs on the test split."""

    test_runs: int = 3
    amp: bool = False  # autocast the attack's forward passes on CUDA

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.test_runs < 1:
            raise ValueError(f"test_runs must be >= 1 (paper: 3); got {self.test_runs}")


@dataclass(frozen=True)
class OODConfig:
    enabled: bool = True
    root: str | None = None  # a real CIFAR-10-C / CIFAR-100-C / Tiny-ImageNet-C folder; else generated
    corruptions: tuple[str, ...] | None = None  # None: every corruption we implement
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    per_corruption: int | None = 1000  # examples evaluated per corruption (all severities mixed)


@dataclass(frozen=True)
class MRCConfig(MRCSettings):
    examples: int | None = 2000  # validation examples in the fixed adversarial set (None: all)


@dataclass(frozen=True)
class ModuleChoice:
    """Which modules MRC scores and which one is fine-tuned."""

    include: tuple[str, ...] = ()  # fnmatch patterns on module names
    exclude: tuple[str, ...] = ()
    choice: Literal["lowest", "named", "top_k"] = "lowest"
    name: str | None = None  # for choice "named"
    top_k: int = 1  # for choice "top_k": the sweep searches among the k lowest-MRC modules

    def __post_init__(self) -> None:
        if self.choice == "named" and not self.name:
            raise ValueError("choice 'named' needs `name`, e.g. name: layer2.1.conv2")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1; got {self.top_k}")


@dataclass(frozen=True)
class AlphaConfig:
    grid: tuple[float, ...] = tuple(i / 10 for i in range(11))  # the α path evaluated per fine-tune
    tolerance: float = 0.1  # percentage points of robust accuracy the paper's rule may give up

    def __post_init__(self) -> None:
        if not self.grid:
            raise ValueError("grid must hold at least one α in [0, 1]")
        bad = [a for a in self.grid if not 0 <= a <= 1]
        if bad:
            raise ValueError(f"grid values must lie in [0, 1]; got {bad}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0; got {self.tolerance}")


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high}); swap them or fix the range")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0; got {self.low}")


SEARCHABLE = ("lr", "epochs", "alpha")


@dataclass(frozen=True)
class SearchConfig:
    space: dict[str, Range] = field(default_factory=lambda: {
        "lr": Range(1e-4, 1e-1, log=True), "epochs": Range(1, 10), "alpha": Range(0.0, 1.0)})
    num_samples: int = 16
    max_concurrent: int = 2
    sampler: Literal["tpe", "nsga2"] = "tpe"
    seed: int = 0
    objectives: tuple[Literal["std_acc", "rob_acc", "ood_acc"], ...] = ("std_acc", "rob_acc")

    def __post_init__(self) -> None:
        if not self.space:
            raise ValueError(f"space is empty; give at least one of {list(SEARCHABLE)}, e.g. lr: {{low: 1.0e-4, high: 0.1, log: true}}")
        unknown = sorted(set(self.space) - set(SEARCHABLE))
        if unknown:
            raise ValueError(f"space has unknown parameter(s) {unknown}; searchable: {list(SEARCHABLE)}")
        alpha = self.space.get("alpha")
        if alpha is not None and not (0 <= alpha.low and alpha.high <= 1):
            raise ValueError(f"space.alpha must lie within [0, 1]; got [{alpha.low}, {alpha.high}]")
        epochs = self.space.get("epochs")
        if epochs is not None and (epochs.low < 1 or epochs.low != int(epochs.low) or epochs.high != int(epochs.high)):
            raise ValueError(f"space.epochs needs whole numbers >= 1; got [{epochs.low}, {epochs.high}]")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1; got {self.num_samples}")
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1; got {self.max_concurrent}")
        if len(set(self.objectives)) != len(self.objectives) or not {"std_acc", "rob_acc"} <= set(self.objectives):
            raise ValueError(f"objectives must include std_acc and rob_acc once each (ood_acc optional); got {list(self.objectives)}")


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None  # None: sqlite:///<output_dir>/mlflow.db
    experiment: str | None = None  # None: "<dataset>-<model>"


@dataclass(frozen=True)
class SweepConfig:
    name: str
    data: DataConfig
    model: ModelConfig
    attack: AttackConfig = AttackConfig()
    ood: OODConfig = OODConfig()
    mrc: MRCConfig = MRCConfig()
    modules: ModuleChoice = ModuleChoice()
    finetune: FinetuneSettings = FinetuneSettings()
    alpha: AlphaConfig = AlphaConfig()
    search: SearchConfig = SearchConfig()
    adversarial_training: ATSettings = ATSettings()
    tracking: TrackingConfig = TrackingConfig()
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_batch_size: int = 256
    output_dir: str | None = None  # None: runs/<name>; made absolute at load (Tune runs trials in other folders)
    source: str | None = None  # the YAML file this came from (filled in by load_config)

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)


def load_config(path: str | Path, overrides: dict | None = None) -> SweepConfig:
    """Read and validate a YAML config; `overrides` are merged into the YAML mapping first (nested dicts)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; the shipped ones are in search_spaces/")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (name, data, model, ...); got {type(raw).__name__}")
    raw = _merge(raw, overrides or {})
    raw["source"] = str(path.resolve())
    config = build(SweepConfig, raw, "config")
    return _resolve_paths(config, path.resolve().parent)


def build(cls: type, raw: object, where: str):
    """Build dataclass `cls` from a YAML mapping, checking every field's name and type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping with fields {_field_names(cls)}; got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {_field_names(cls)}")
    missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required field(s) {missing}")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in raw.items()}
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _coerce(value: object, hint: object, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(" / ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}; got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping; got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is bool and isinstance(value, bool) or hint is str and isinstance(value, str):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{where} must be {getattr(hint, '__name__', hint)}; got {value!r}")


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _resolve_paths(config: SweepConfig, folder: Path) -> SweepConfig:
    def resolve(p: str | None) -> str | None:
        return None if p is None else str((folder / Path(p).expanduser()).resolve())

    return dataclasses.replace(
        config,
        output_dir=str(Path(config.output_dir or f"runs/{config.name}").expanduser().resolve()),
        data=dataclasses.replace(config.data, root=resolve(config.data.root)),
        model=dataclasses.replace(config.model, checkpoint=resolve(config.model.checkpoint)),
        ood=dataclasses.replace(config.ood, root=resolve(config.ood.root)),
    )
