"""The records that cross layers: what one model scored on a split, an α point, the sweep's evaluated models and
the front they form. Plain frozen dataclasses; each kind is made in one place. Their flat form (Tune's reports,
MLflow's metric names, the cache's tensors, the published front's JSON) is written and read only here and in
orchestration.tracking.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from rift_sweep.core.robustness.statistics import mcnemar, paired_gain_interval, wilson_interval
from rift_sweep.names import (
    AA_ACC,
    ALPHA,
    EPOCHS,
    IMAGES,
    LR,
    MODULE,
    OOD_ACC,
    OOD_PER_CORRUPTION_PREFIX,
    ROB_ACC,
    ROB_IMAGES,
    STD_ACC,
    TEST_PREFIX,
    VERSUS_PREFIX,
)


@dataclass(frozen=True)
class Accuracy:
    """An accuracy (%) with its Wilson 95 % interval, and the number of images it rests on."""

    value: float
    low: float
    high: float
    images: int

    @classmethod
    def of(cls, correct: np.ndarray) -> Accuracy:
        right, n = int(np.sum(correct)), len(correct)
        low, high = wilson_interval(right, n)
        return cls(100.0 * right / n, low, high, n)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Examples:
    """Per-example correctness of one model on one split, in the split's order: what intervals and paired tests are
    computed from. `robust` means something only where `measured` (robustness measured on part of the split: a
    screened α point); None: everywhere."""

    clean: np.ndarray  # bool [N]
    robust: np.ndarray  # bool [N]
    measured: np.ndarray | None = None
    autoattack: np.ndarray | None = None

    def scores(self, ood: Mapping[str, float] | None = None) -> Scores:
        """The accuracies; `ood`: OOD accuracy per corruption (their mean is ood)."""
        ood = dict(ood or {})
        return Scores(
            std=Accuracy.of(self.clean),
            rob=Accuracy.of(self.robust if self.measured is None else self.robust[self.measured]),
            ood=float(np.mean(list(ood.values()))) if ood else None,
            ood_corruptions=ood,
            aa=None if self.autoattack is None else Accuracy.of(self.autoattack),
        )

    def versus(self, at: Examples) -> Versus:
        """This model against the AT model on the same images (robustness where both measured it)."""
        both = _both(self.measured, at.measured, len(self.clean))
        return Versus(
            std=Change.between(self.clean, at.clean),
            rob=Change.between(self.robust[both], at.robust[both]),
            aa=None
            if self.autoattack is None or at.autoattack is None
            else Change.between(self.autoattack, at.autoattack),
        )

    def plain(self) -> dict:
        """Tensors only (what torch.load(weights_only=True) reads back): for caches."""
        import torch  # here, not above: the records are read without torch too (`report`)

        return {
            name: torch.from_numpy(np.array(value, dtype=bool))  # a copy: arrays from Ray are read-only
            for name, value in vars(self).items()
            if value is not None
        }

    @classmethod
    def from_plain(cls, plain: Mapping) -> Examples:
        return cls(**{name: value.numpy() for name, value in plain.items()})


def _both(a: np.ndarray | None, b: np.ndarray | None, n: int) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    for measured in (a, b):
        if measured is not None:
            mask &= measured
    return mask


@dataclass(frozen=True)
class Scores:
    """One model's accuracies on one split. `rob.images` < `std.images`: robustness measured on a screened subset."""

    std: Accuracy
    rob: Accuracy
    ood: float | None = None  # mean accuracy over the corruption types
    ood_corruptions: Mapping[str, float] = field(default_factory=dict)
    aa: Accuracy | None = None  # AutoAttack (attack.final: autoattack), test only

    @property
    def screened(self) -> bool:
        return self.rob.images < self.std.images

    def objective(self, name: str) -> float:
        """The value of one search objective (std_acc, rob_acc, ood_acc)."""
        return {STD_ACC: self.std.value, ROB_ACC: self.rob.value, OOD_ACC: self.ood}[name]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The flat form: Tune's reports and MLflow's metrics (std_acc, std_acc_low, ..., rob_images, ood/<c>)."""
        flat = {IMAGES: self.std.images, ROB_IMAGES: self.rob.images}
        for name, accuracy in ((STD_ACC, self.std), (ROB_ACC, self.rob), (AA_ACC, self.aa)):
            if accuracy is not None:
                flat.update({name: accuracy.value, **_bounds(name, accuracy.low, accuracy.high)})
        if self.ood is not None:
            flat[OOD_ACC] = self.ood
        flat.update({OOD_PER_CORRUPTION_PREFIX + k: v for k, v in self.ood_corruptions.items()})
        return {prefix + k: float(v) for k, v in flat.items()}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], prefix: str = "") -> Scores | None:
        """The record back from `metrics` (None when it holds no scores under `prefix`)."""
        flat = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
        if STD_ACC not in flat:
            return None
        images = int(flat.get(IMAGES, 0))

        def accuracy(name: str, n: int) -> Accuracy | None:
            if name not in flat:
                return None
            return Accuracy(flat[name], flat[f"{name}_low"], flat[f"{name}_high"], n)

        return cls(
            std=accuracy(STD_ACC, images),
            rob=accuracy(ROB_ACC, int(flat.get(ROB_IMAGES, images))),
            ood=flat.get(OOD_ACC),
            ood_corruptions={
                k.removeprefix(OOD_PER_CORRUPTION_PREFIX): v
                for k, v in flat.items()
                if k.startswith(OOD_PER_CORRUPTION_PREFIX)
            },
            aa=accuracy(AA_ACC, images),
        )


def _bounds(name: str, low: float, high: float) -> dict[str, float]:
    """An interval's flat form, to 0.01 points: what MLflow's columns show."""
    return {f"{name}_low": round(low, 2), f"{name}_high": round(high, 2)}


@dataclass(frozen=True)
class Change:
    """A model's accuracy minus the AT model's on the same images: points, a paired 95 % interval
    (statistics.paired_gain_interval) and the exact McNemar p-value."""

    points: float
    low: float
    high: float
    p: float

    @classmethod
    def between(cls, model: np.ndarray, at: np.ndarray) -> Change:
        low, high = paired_gain_interval(model, at)
        return cls(100.0 * (np.mean(model) - np.mean(at)), low, high, mcnemar(at, model)[2])


@dataclass(frozen=True)
class Versus:
    """A model against the AT model on the same images: clean, robust (PGD) and, where measured, AutoAttack."""

    std: Change
    rob: Change
    aa: Change | None = None

    def items(self) -> list[tuple[str, Change]]:
        """(name, change) of what was measured: std, rob and, with AutoAttack, aa."""
        return [(name, c) for name, c in (("std", self.std), ("rob", self.rob), ("aa", self.aa)) if c is not None]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The flat form: vs_at_std, vs_at_std_low, vs_at_std_high, vs_at_std_p, ... (MLflow's metrics)."""
        flat = {}
        for name, change in self.items():
            key = f"{prefix}{VERSUS_PREFIX}{name}"
            flat.update({key: change.points, **_bounds(key, change.low, change.high), f"{key}_p": change.p})
        return flat

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], prefix: str = "") -> Versus | None:
        def change(name: str) -> Change | None:
            key = f"{prefix}{VERSUS_PREFIX}{name}"
            if key not in metrics:
                return None
            return Change(metrics[key], metrics[f"{key}_low"], metrics[f"{key}_high"], metrics[f"{key}_p"])

        std, rob = change("std"), change("rob")
        return None if std is None or rob is None else cls(std, rob, change("aa"))


@dataclass(frozen=True)
class AlphaPoint:
    """θ_α of one fine-tune on validation: its scores and per-example correctness (for paired comparisons)."""

    alpha: float
    scores: Scores
    examples: Examples

    def plain(self) -> dict:
        """For the fine-tune cache (torch.save; read back with weights_only=True)."""
        return {"alpha": self.alpha, "metrics": self.scores.metrics(), "examples": self.examples.plain()}

    @classmethod
    def from_plain(cls, plain: Mapping) -> AlphaPoint:
        return cls(plain["alpha"], Scores.from_metrics(plain["metrics"]), Examples.from_plain(plain["examples"]))


@dataclass(frozen=True)
class FineTune:
    """Which fine-tune a model interpolates towards: its cache key and how it was made (by which trial)."""

    key: str
    module: str
    lr: float
    epochs: int
    trial_id: str

    def params(self) -> dict[str, object]:
        """How it was made, under the searched parameters' names (MLflow params, table columns)."""
        return {MODULE: self.module, LR: self.lr, EPOCHS: self.epochs}


NO_FINETUNE = dict.fromkeys((MODULE, LR, EPOCHS))  # FineTune.params() of the AT model's row


@dataclass(frozen=True)
class Trial:
    """A finished Tune trial: the fine-tune it used (made, or reused from the cache) and its own α. Every other α
    point of that fine-tune's path is an evaluated model too."""

    trial_id: str
    run_id: str
    finetune: FineTune
    alpha: float
    reused: bool  # the fine-tune came from the cache (another trial made it)


@dataclass(frozen=True)
class TrialCost:
    """What one trial spent: its run's metrics, named as the fields."""

    finetune_seconds: float  # 0 when the fine-tune was reused
    eval_seconds: float
    trial_seconds: float
    alpha_points_evaluated: int  # α points this trial measured itself
    best_epoch: int  # the fine-tune's epoch kept (best validation clean accuracy)


@dataclass(frozen=True)
class TrialReport:
    """A trial's result, as Tune carries it to the searcher and to MLflow: the fine-tune it used, its own α with its
    scores on all of validation, and the fine-tune's α path (every point reaches the searcher's study)."""

    finetune: FineTune
    alpha: float
    scores: Scores
    path: tuple[tuple[float, Scores], ...]
    reused: bool  # the fine-tune came from the cache
    cost: TrialCost

    def result(self) -> dict:
        """Tune's flat form: the objectives at the top, where Tune and the searcher read them."""
        ft = self.finetune
        return {
            **self.scores.metrics(),
            **asdict(self.cost),
            **ft.params(),
            ALPHA: self.alpha,
            _FINETUNE_KEY: ft.key,
            _TRIAL_ID: ft.trial_id,
            _REUSED: self.reused,
            _PATH: [{ALPHA: alpha, **scores.metrics()} for alpha, scores in self.path],
        }

    @classmethod
    def from_result(cls, result: Mapping) -> TrialReport | None:
        """The record back from Tune's result; None for an interim report (a fine-tuning epoch, an α point)."""
        if _PATH not in result:
            return None
        ft = FineTune(
            key=result[_FINETUNE_KEY],
            module=result[MODULE],
            lr=result[LR],
            epochs=result[EPOCHS],
            trial_id=result[_TRIAL_ID],
        )
        return cls(
            finetune=ft,
            alpha=result[ALPHA],
            scores=Scores.from_metrics(result),
            path=tuple((row[ALPHA], Scores.from_metrics(row)) for row in result[_PATH]),
            reused=result[_REUSED],
            cost=TrialCost(**{f.name: result[f.name] for f in fields(TrialCost)}),
        )


_FINETUNE_KEY, _TRIAL_ID, _REUSED, _PATH = "finetune_key", "trial_id", "finetune_reused", "alpha_path"

AT_KEY = "at"  # the AT model's key among a sweep's models


@dataclass(frozen=True)
class Model:
    """One evaluated model of a sweep: θ_AT (`finetune` None, α 0) or θ_AT interpolated towards a fine-tune at α,
    with its validation scores (every choice is made on these), its paired change against the AT model on
    validation, and its test scores once the front has been evaluated."""

    finetune: FineTune | None
    alpha: float
    val: Scores
    val_versus_at: Versus | None = None
    test: Scores | None = None
    test_versus_at: Versus | None = None
    run_id: str | None = None  # its MLflow run

    @property
    def key(self) -> str:
        """Models that share a fine-tune and an α are one model; α = 0 is the AT model."""
        return AT_KEY if self.finetune is None or self.alpha == 0.0 else f"{self.finetune.key}@{self.alpha!r}"

    @property
    def is_at(self) -> bool:
        return self.key == AT_KEY

    def metrics(self, split: str | None = None) -> dict[str, float]:
        """The flat form (its MLflow run's metrics): validation (split "") or test (TEST_PREFIX); None: both."""
        parts = {"": (self.val, self.val_versus_at), TEST_PREFIX: (self.test, self.test_versus_at)}
        flat = {}
        for prefix, (scores, versus) in parts.items():
            if split in (None, prefix) and scores is not None:
                flat.update({**scores.metrics(prefix), **(versus.metrics(prefix) if versus else {})})
        return flat

    @classmethod
    def from_metrics(
        cls, finetune: FineTune | None, alpha: float, metrics: Mapping[str, float], run_id: str | None
    ) -> Model:
        """The record back from its flat form (`metrics()`)."""
        return cls(
            finetune=finetune,
            alpha=alpha,
            val=Scores.from_metrics(metrics),
            val_versus_at=Versus.from_metrics(metrics),
            test=Scores.from_metrics(metrics, TEST_PREFIX),
            test_versus_at=Versus.from_metrics(metrics, TEST_PREFIX),
            run_id=run_id,
        )


@dataclass(frozen=True)
class Front:
    """What a sweep found: every evaluated model (the AT model first), the keys of those on the Pareto front of the
    objectives (validation), and the recommended model (the paper's rule; None: the AT model stands)."""

    models: list[Model]
    on_front: frozenset[str]
    recommended: Model | None
    objectives: tuple[str, ...]
    tolerance: float

    @property
    def at(self) -> Model:
        return next(m for m in self.models if m.is_at)

    @property
    def front(self) -> list[Model]:
        """The front's models, highest validation clean accuracy first."""
        return sorted((m for m in self.models if m.key in self.on_front), key=lambda m: -m.val.std.value)

    def plain(self) -> dict:
        """JSON's form (the published front's file): each model as its flat metrics, the front and pick as keys."""
        return {
            "models": [
                {
                    "finetune": m.finetune and asdict(m.finetune),
                    "alpha": m.alpha,
                    "metrics": m.metrics(),
                    "run": m.run_id,
                }
                for m in self.models
            ],
            "on_front": sorted(self.on_front),
            "recommended": self.recommended and self.recommended.key,
            "objectives": list(self.objectives),
            "tolerance": self.tolerance,
        }

    @classmethod
    def from_plain(cls, plain: Mapping) -> Front:
        models = [
            Model.from_metrics(
                row["finetune"] and FineTune(**row["finetune"]), row["alpha"], row["metrics"], row["run"]
            )
            for row in plain["models"]
        ]
        return cls(
            models=models,
            on_front=frozenset(plain["on_front"]),
            recommended=next((m for m in models if m.key == plain["recommended"]), None),
            objectives=tuple(plain["objectives"]),
            tolerance=plain["tolerance"],
        )
