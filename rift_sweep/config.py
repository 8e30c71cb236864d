"""The sweep's configuration: YAML (search_spaces/*.yaml) validated into typed, frozen dataclasses.

A file may build on bases (`defaults: [base.yaml, ...]`, paths relative to it; later ones win, the file itself
last), and any field may be overridden from the command line (`--set attack.eps=0.03`, the value read as YAML).
Every error names the field (e.g. `search.space.lr.low`) and what is allowed; rules that span sections are
checked here too. Sections reuse the core's own settings classes (PGD, MRCSettings, FinetuneSettings,
ATSettings), so each setting has one home. Relative paths in `data.root`, `model.checkpoint` and `ood.root` are
resolved against the folder of the file that sets them; `output_dir` against the working directory.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from rift_sweep.core.adversarial_training import ATSettings
from rift_sweep.core.data.datasets import DATASETS
from rift_sweep.core.errors import InputError
from rift_sweep.core.finetune import FinetuneSettings
from rift_sweep.core.models.architectures import MODELS
from rift_sweep.core.models.robustbench import robustbench_entry
from rift_sweep.core.mrc import MRCSettings
from rift_sweep.core.robustness.attacks import PGD
from rift_sweep.core.robustness.autoattack import autoattack_available
from rift_sweep.names import OBJECTIVES, OOD_ACC, RESOLVED_CONFIG, ROB_ACC, STD_ACC

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # safe in folder names and MLflow filters
PATH_FIELDS = (("data", "root"), ("model", "checkpoint"), ("ood", "root"))


class ConfigError(InputError):
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

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset {self.dataset!r} is unknown; known: {', '.join(DATASETS)}")
        size = self.val_size
        if (isinstance(size, float) and not 0 < size < 1) or (isinstance(size, int) and size < 1):
            raise ValueError(f"val_size must be a count >= 1 or a fraction in (0, 1); got {size}")
        for name in ("train_subset", "val_subset", "test_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or null (all); got {getattr(self, name)}")


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean or any(s <= 0 for s in self.std):
            raise ValueError(f"normalization needs mean and std of equal length with std > 0; got {self}")


@dataclass(frozen=True)
class ModelConfig:
    """The AT model, in one of three forms: a built-in `name`; the user's own class or factory (`target`,
    called with `kwargs`); or a RobustBench entry (`robustbench`, architecture and normalisation from our table).

    normalization: what the checkpoint was trained on — "none" (raw [0, 1] input, most public robust
    checkpoints), "dataset" (the dataset's mean/std) or {mean: [...], std: [...]}. Default: "dataset" for a
    built-in name, "none" for a target, the table's for a RobustBench entry.
    """

    name: str | None = None
    target: str | None = None  # "./nets.py:WideResNet" (relative to the config file) or "my_pkg.nets:WideResNet"
    kwargs: dict[str, typing.Any] = field(default_factory=dict)
    robustbench: str | None = None  # e.g. Carmon2019Unlabeled, for data.dataset's leaderboard
    normalization: Literal["none", "dataset"] | Normalization | None = None
    checkpoint: str | None = None  # the adversarially trained weights RiFT starts from

    def __post_init__(self) -> None:
        forms = [f for f in ("name", "target", "robustbench") if getattr(self, f) is not None]
        if len(forms) != 1:
            raise ValueError(
                f"give exactly one of name (built-in), target (your class) or robustbench (an entry); "
                f"got {forms or 'none'}"
            )
        if self.name is not None and self.name not in MODELS:
            raise ValueError(
                f"name {self.name!r} is not a built-in model; built-in: {', '.join(sorted(MODELS))}; "
                f"for your own class set target: FILE.py:Class"
            )
        if self.kwargs and self.target is None:
            raise ValueError("kwargs go with target (your own class); built-in and RobustBench models take none")
        if self.target is not None and ":" not in self.target:
            raise ValueError(f"target {self.target!r} must be FILE.py:Name or package.module:Name")

    @property
    def label(self) -> str:
        """A short name for runs and experiments: the built-in name, the class name or the entry."""
        return self.name or self.robustbench or self.target.rpartition(":")[2]


@dataclass(frozen=True)
class AttackConfig(PGD):
    """PGD used for every robust accuracy; `test_runs` = the paper's worst-of-N runs on the test split."""

    test_runs: int = 3
    amp: bool = False  # autocast the attack's forward passes on CUDA
    final: str = "pgd"  # "autoattack": also AutoAttack (standard) on test for the recommended and the AT model

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.test_runs < 1:
            raise ValueError(f"test_runs must be >= 1 (paper: 3); got {self.test_runs}")
        if self.final not in ("pgd", "autoattack"):
            raise ValueError(f"final must be 'pgd' or 'autoattack'; got {self.final!r}")
        if self.final == "autoattack" and not autoattack_available():
            raise ValueError("final: autoattack needs pyautoattack; pip install 'rift-sweep[autoattack]'")


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
    # The α values that exist: each fine-tune's path evaluates every one, and a searched α is one of them.
    grid: tuple[float, ...] = tuple(i / 10 for i in range(11))
    searched: bool = True  # α is a search dimension over `grid`; false: each trial reports the rule's α of its path
    tolerance: float = 0.1  # accuracy points of robust accuracy the rule may give up (0.1: a tenth of a point)
    screen: float = 0.25  # fraction of validation that first measures each α point's robustness; 1: no screening
    # Which models keep robustness: "paper", validation rob_acc >= AT's - tolerance (point estimates); "paired", the
    # lower end of the paired 95 % interval of the change against the AT model on the same images >= -tolerance.
    rule: Literal["paper", "paired"] = "paper"

    def __post_init__(self) -> None:
        if not self.grid:
            raise ValueError("grid must hold at least one α in [0, 1]")
        bad = [a for a in self.grid if not 0 <= a <= 1]
        if bad:
            raise ValueError(f"grid values must lie in [0, 1]; got {bad}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0; got {self.tolerance}")
        if not 0 < self.screen <= 1:
            raise ValueError(f"screen must lie in (0, 1] (1 turns screening off); got {self.screen}")


def _on_lattice(value: float, low: float, step: float) -> bool:
    """Whether `value` is low + k * step for a whole k (up to float rounding: 0.6 is 0 + 3 * 0.2)."""
    steps = (value - low) / step
    return math.isclose(steps, round(steps), abs_tol=1e-9)


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None  # a lattice low, low + step, ..., high (Optuna's step); None: continuous

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high}); swap them or fix the range")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0; got {self.low}")
        if self.step is not None:
            if self.log or self.step <= 0:
                raise ValueError(f"step must be > 0 on a linear range (Optuna has no log lattice); got {self.step}")
            if not _on_lattice(self.high, self.low, self.step):
                raise ValueError(
                    f"high - low ({self.high - self.low:g}) must be a whole number of steps ({self.step:g})"
                )


SEARCHABLE = ("lr", "epochs")  # ranges of search.space; α's values are alpha.grid (alpha.searched)
ALPHA_IN_SPACE = (
    "search.space.alpha is gone: the α values are alpha.grid, searched when alpha.searched is true (the default); "
    "delete search.space.alpha (a finer alpha.grid replaces a step or a continuous range)"
)


@dataclass(frozen=True)
class SearchConfig:
    space: dict[str, Range] = field(
        default_factory=lambda: {
            "lr": Range(1e-4, 1e-1, log=True),
            "epochs": Range(1, 10),
        }
    )
    num_samples: int = 16
    max_concurrent: int = 2  # trials at once, at most; on GPUs also at most GPUs x trials_per_gpu
    trials_per_gpu: int = 1  # trials sharing one GPU (each gets 1/n of it and of its node's CPUs); README: why 1
    sampler: Literal["tpe", "gp", "nsga2"] = "tpe"  # README "How the sweep spends compute": why TPE
    seed: int = 0
    start_from_paper: bool = True  # the first trial is the paper's (finetune.lr, finetune.epochs): the sweep's
    # results then contain the paper's, and every further trial can only add to them
    objectives: tuple[str, ...] = (STD_ACC, ROB_ACC)  # of names.OBJECTIVES

    def __post_init__(self) -> None:
        if "alpha" in self.space:
            raise ValueError(ALPHA_IN_SPACE)
        unknown = sorted(set(self.space) - set(SEARCHABLE))
        if unknown:
            raise ValueError(
                f"space has unknown parameter(s) {unknown}; searchable: {list(SEARCHABLE)} (α: alpha.grid)"
            )
        epochs = self.space.get("epochs")
        if epochs is not None and (
            epochs.low < 1 or any(v != int(v) for v in (epochs.low, epochs.high, epochs.step or 1))
        ):
            raise ValueError(f"space.epochs needs whole numbers >= 1; got [{epochs.low}, {epochs.high}]")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1; got {self.num_samples}")
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1; got {self.max_concurrent}")
        if self.trials_per_gpu < 1:
            raise ValueError(f"trials_per_gpu must be >= 1 (trials sharing one GPU); got {self.trials_per_gpu}")
        if len(set(self.objectives)) != len(self.objectives) or not {STD_ACC, ROB_ACC} <= set(self.objectives) <= set(
            OBJECTIVES
        ):
            raise ValueError(
                f"objectives must include {STD_ACC} and {ROB_ACC} once each ({OOD_ACC} optional; nothing else); got "
                f"{list(self.objectives)}"
            )


@dataclass(frozen=True)
class FrontConfig:
    """What the front's test evaluation covers: the AT model, the recommended model and at most `test_models` other
    models of the front (spread evenly along it by validation clean accuracy when it is longer)."""

    test_models: int = 6

    def __post_init__(self) -> None:
        if self.test_models < 0:
            raise ValueError(f"test_models must be >= 0; got {self.test_models}")


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
    front: FrontConfig = FrontConfig()
    adversarial_training: ATSettings = ATSettings()
    tracking: TrackingConfig = TrackingConfig()
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_batch_size: int = 256
    output_dir: str | None = None  # None: runs/<name>; made absolute at load (Tune runs trials in other folders)
    source: str | None = None  # the YAML file this came from (filled in by load_config)

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(
                f"name {self.name!r} may hold only letters, digits, '.', '_' and '-' (it names a folder "
                f"and MLflow runs), e.g. cifar10-resnet18"
            )
        if self.model.robustbench is not None:
            robustbench_entry(
                self.model.robustbench, self.data.dataset
            )  # an unknown entry fails here, naming close ones
        if self.search.start_from_paper:
            for name, value in (("lr", self.finetune.lr), ("epochs", self.finetune.epochs)):
                rng = self.search.space.get(name)
                if rng is not None and not rng.low <= value <= rng.high:
                    raise ValueError(
                        f"search.start_from_paper: the paper's finetune.{name} = {value} lies outside "
                        f"search.space.{name} [{rng.low}, {rng.high}]; widen the space or set "
                        f"search.start_from_paper: false"
                    )
        if not self.search.space and not self.alpha.searched:
            raise ValueError(
                "nothing to search: search.space is empty and alpha.searched is false; give a range, e.g. "
                "search.space.lr: {low: 1.0e-4, high: 0.1, log: true}, or search α (alpha.searched: true)"
            )
        if OOD_ACC in self.search.objectives and not self.ood.enabled:
            raise ValueError("search.objectives holds ood_acc but ood.enabled is false: enable ood or drop ood_acc")

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)


def load_config(path: str | Path, overrides: dict | None = None, assignments: list[str] = ()) -> SweepConfig:
    """Read a YAML config with its bases, apply `overrides` (a nested mapping) and `assignments` ("a.b=value",
    the value read as YAML), and validate the result."""
    path = Path(path)
    raw = read_with_bases(path, ())
    raw = _merge(_merge(raw, overrides or {}), parse_assignments(assignments))
    search = raw.get("search")
    space = search.get("space") if isinstance(search, dict) else None
    if isinstance(space, dict) and "alpha" in space:  # the old form, refused before its range is checked
        raise ConfigError(f"{path}: {ALPHA_IN_SPACE}")
    raw["source"] = str(path.resolve())
    return _resolve_paths(build(SweepConfig, raw, ""))


def read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict:
    """The file's mapping merged over its `defaults` (recursively); relative paths made absolute per file."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: its defaults include it again ({' -> '.join(p.name for p in (*seen, path))})")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; the shipped ones are in search_spaces/")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (name, data, model, ...); got {type(raw).__name__}")
    bases = raw.pop("defaults", [])
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: defaults must be a list of YAML files, e.g. defaults: [_cifar_paper.yaml]")
    _absolute_paths(raw, path.parent)
    merged: dict = {}
    for base in bases:
        merged = _merge(merged, read_with_bases(path.parent / base, (*seen, path)))
    return _merge(merged, raw)


def parse_assignments(assignments: list[str]) -> dict:
    """["attack.eps=0.03", "search.num_samples=32"] -> {"attack": {"eps": 0.03}, "search": {"num_samples": 32}}."""
    out: dict = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key or not all(NAME_PATTERN.fullmatch(part) for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: write FIELD.PATH=VALUE, e.g. --set attack.eps=0.03")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is set to a value and used as a section")
        node[leaf] = value
    return out


def save_resolved_config(config: SweepConfig) -> Path:
    """Write the resolved config (bases merged, overrides applied, paths absolute) into the sweep's folder, so
    `report --sweep NAME` and `--resume` need nothing else. `load_config` reads it back to an equal config."""
    raw = _plain(dataclasses.asdict(config))
    raw.pop("source")
    path = config.output_path / RESOLVED_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def build(cls: type, raw: object, where: str):
    """Build dataclass `cls` from a YAML mapping, checking every field's name and type. `where`: the section's path as
    written in YAML (e.g. `search.space.lr`; "" for the whole config), which every error names."""
    section = where or "the config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{section} must be a mapping with fields {_field_names(cls)}; got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{section}: unknown field(s) {unknown}; allowed: {_field_names(cls)}")
    missing = [
        n
        for n, f in fields.items()
        if n not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{section}: missing required field(s) {missing}")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(value, hints[name], f"{where}.{name}".lstrip(".")) for name, value in raw.items()}
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(_named(cls, where, str(exc))) from exc


def _coerce(value: object, hint: object, where: str):
    if hint is typing.Any:  # plain YAML data (safe_load builds no objects), e.g. model.kwargs
        return value
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


def _named(cls: type, where: str, message: str) -> str:
    """A settings class's complaint with its field named as in YAML: "PGD.eps must be ..." in section `attack` reads
    "attack.eps must be ..."; a message about the section as a whole is prefixed with it."""
    for base in cls.__mro__:
        message = message.replace(f"{base.__name__}.", "")
    field_name = message.split(" ", 1)[0]
    if field_name in _field_names(cls):
        return f"{where}.{message}".lstrip(".")
    return f"{where}: {message}" if where else message


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def _absolute_paths(raw: dict, folder: Path) -> None:
    """Relative paths in a file are relative to that file's folder: resolve them before merging files."""
    for section, key in PATH_FIELDS:
        value = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str):
            raw[section][key] = str((folder / Path(value).expanduser()).resolve())
    model = raw.get("model")
    target = model.get("target") if isinstance(model, dict) else None
    if isinstance(target, str) and ".py:" in target:  # a file of the user's: relative to this file too
        file, _, name = target.rpartition(":")
        model["target"] = f"{(folder / Path(file).expanduser()).resolve()}:{name}"


def _resolve_paths(config: SweepConfig) -> SweepConfig:
    """Command-line paths (already absolute or relative to the working directory) and the output folder."""

    def resolve(p: str | None) -> str | None:
        return None if p is None else str(Path(p).expanduser().resolve())

    return dataclasses.replace(
        config,
        output_dir=str(Path(config.output_dir or f"runs/{config.name}").expanduser().resolve()),
        data=dataclasses.replace(config.data, root=resolve(config.data.root)),
        model=dataclasses.replace(config.model, checkpoint=resolve(config.model.checkpoint)),
        ood=dataclasses.replace(config.ood, root=resolve(config.ood.root)),
    )
