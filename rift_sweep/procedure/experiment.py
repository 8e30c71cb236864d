"""Everything a RiFT step needs, built once from a SweepConfig: data splits, the AT model, the fixed
adversarial validation set for MRC, the OOD sets, and evaluation of any state dict on val or test.

Plain PyTorch: used alike by the single-process procedure, the Ray actors and the Tune trials. This is the
one place where the AT model is built and loaded (`load_at_model`) and where caches live (`cache_dir`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.core.data.corruptions import OODSet, load_ood
from rift_sweep.core.data.datasets import (
    DatasetInfo,
    DataSplits,
    Split,
    dataset_info,
    load_splits,
    tiny_imagenet_wnids,
    to_unit,
)
from rift_sweep.core.errors import InputError
from rift_sweep.core.files import file_sha256
from rift_sweep.core.models.architectures import build_model, on_device
from rift_sweep.core.models.checkpoints import StateDict, cpu_copy, load_weights, read_checkpoint_meta
from rift_sweep.core.models.custom import build_custom, check_logits, normalization_of
from rift_sweep.core.models.robustbench import build_robustbench, robustbench_entry
from rift_sweep.core.mrc import CANDIDATE_TYPES, candidate_modules, executed_modules
from rift_sweep.core.robustness.attacks import AdversarialSet, AttackCost, attack_split
from rift_sweep.core.robustness.autoattack import autoattack_examples
from rift_sweep.core.robustness.evaluate import accuracy, evaluate_examples, ood_accuracy, robust_accuracy
from rift_sweep.procedure.records import Examples, Scores

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """ "auto" → CUDA when present, else CPU; "cuda" without a GPU is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device: cuda was asked for but no CUDA device is visible; use device: auto or cpu")
    return torch.device(name)


def cache_dir(config: SweepConfig, kind: str) -> Path:
    """The one cache scheme: <output_dir>/cache/<kind>/, entries named by core.files.content_key."""
    return config.output_path / names.CACHE_DIR / kind


def model_normalization(config: SweepConfig, info: DatasetInfo) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the checkpoint was trained with: model.normalization, or the form's default."""
    chosen = config.model.normalization
    if chosen is None and config.model.robustbench is not None:
        stats = robustbench_entry(config.model.robustbench, info.name).normalization
        return ((0.0,), (1.0,)) if stats is None else (tuple(stats.mean), tuple(stats.std))
    if chosen is None:
        chosen = "dataset" if config.model.name else "none"
    if chosen == "none":
        return (0.0,), (1.0,)
    if chosen == "dataset":
        return info.mean, info.std
    return chosen.mean, chosen.std


def build_architecture(config: SweepConfig, info: DatasetInfo) -> nn.Module:
    """The configured architecture with random weights, normalising its [0, 1] input first."""
    model, (mean, std), channels = config.model, model_normalization(config, info), info.image_shape[0]
    if model.name is not None:
        return build_model(model.name, num_classes=info.num_classes, in_channels=channels, mean=mean, std=std)
    if model.target is not None:
        return build_custom(model.target, model.kwargs, mean=mean, std=std, channels=channels)
    built = build_robustbench(model.robustbench, info.name)
    normalization_of(built).set(mean, std)
    return built


def probe_input(info: DatasetInfo, device: torch.device | str = "cpu") -> torch.Tensor:
    """One mid-grey image of the dataset's shape: enough to see which modules a forward pass calls."""
    return torch.full((1, *info.image_shape), 0.5, device=device)


def load_at_model(
    config: SweepConfig, info: DatasetInfo, state: StateDict | None = None, device: torch.device | str = "cpu"
) -> nn.Module:
    """θ_AT in eval mode on `device`: read from model.checkpoint, or copied from `state` (e.g. shipped to a
    Ray worker that should not read the file again)."""
    model = build_architecture(config, info)
    if state is None:
        load_weights(model, require_checkpoint(config))
    else:
        model.load_state_dict(state)
    return on_device(model, device).eval()


def require_checkpoint(config: SweepConfig) -> str:
    checkpoint = config.model.checkpoint
    if checkpoint is None:
        raise InputError(
            "model.checkpoint is not set: RiFT starts from an adversarially trained model; "
            "train one with `rift-sweep train-at --config FILE --out PATH` and set model.checkpoint"
        )
    return checkpoint


@dataclass
class Experiment:
    config: SweepConfig
    splits: DataSplits
    device: torch.device
    at_state: StateDict  # θ_AT on CPU
    checkpoint_sha256: str
    model: nn.Module = field(repr=False)  # the working copy on `device`; load_state() swaps weights into it
    _ood_sets: dict[str, OODSet | None] = field(default_factory=dict, repr=False)
    attack_cost: AttackCost = field(default_factory=AttackCost, repr=False)  # every PGD pass evaluation spent

    def portable(self, *ood_splits: str) -> ExperimentData:
        """This experiment for worker processes, with the OOD sets of `ood_splits` built first (here, once)."""
        for split_name in ood_splits:
            self.ood(split_name)
        return ExperimentData(self.splits, self.at_state, self.checkpoint_sha256, dict(self._ood_sets))

    def load_state(self, state: StateDict) -> nn.Module:
        self.model.load_state_dict(state)
        self.model.eval()
        return self.model

    @functools.cached_property
    def adversarial_val(self) -> AdversarialSet:
        """PGD examples against θ_AT on (a seeded subset of) the validation split, built ONCE for every module."""
        return build_adversarial_set(self.config, self.load_state(self.at_state), self.splits.val, self.device)

    def ood(self, split_name: str) -> OODSet | None:
        """The corrupted copy of the val or test split (real -C data for test when present), built once."""
        if split_name not in self._ood_sets:
            self._ood_sets[split_name] = self._load_ood(split_name)
        return self._ood_sets[split_name]

    def _load_ood(self, split_name: str) -> OODSet | None:
        ood = self.config.ood
        if not ood.enabled:
            return None
        info = self.splits.info
        split = getattr(self.splits, split_name)
        wnids = tiny_imagenet_wnids(self.config.data.root) if info.name == "tiny-imagenet" else None
        return load_ood(
            split,
            dataset=info.name,
            root=ood.root,
            cache_dir=cache_dir(self.config, "ood"),
            seed=self.config.seed,
            corruptions=ood.corruptions,
            severities=ood.severities,
            use_real=split_name == "test",
            wnids=wnids,
            progress=True,
            per_corruption=ood.per_corruption,
        )

    def examples(
        self, state: StateDict, split_name: str = "test", *, runs: int = 1, among: torch.Tensor | None = None
    ) -> Examples:
        """Per-example correctness of `state` in the split's order, for intervals and paired tests; robustness only
        `among` those examples when given (see evaluate.robust_examples; the worst of `runs` runs)."""
        config = self.config
        found = evaluate_examples(
            self.load_state(state),
            getattr(self.splits, split_name),
            pgd=config.attack,
            runs=runs,
            batch_size=config.eval_batch_size,
            device=self.device,
            seed=config.seed,
            amp=config.attack.amp,
            cost=self.attack_cost,
            among=among,
        )
        measured = None if among is None else torch.as_tensor(among).cpu().numpy()
        return Examples(found.clean, found.robust, measured)

    def autoattack(self, state: StateDict, split_name: str = "test") -> np.ndarray:
        """Per-example robustness of `state` under AutoAttack (standard, ℓ∞ attack.eps): see core.robustness.autoattack."""
        return autoattack_examples(
            self.load_state(state),
            getattr(self.splits, split_name),
            eps=self.config.attack.eps,
            batch_size=self.config.eval_batch_size,
            device=self.device,
            seed=self.config.seed,
        )

    def ood_accuracies(self, state: StateDict, split_name: str = "val") -> dict[str, float]:
        """Accuracy (%) of `state` per corruption type of the split's OOD set; empty when OOD is off."""
        ood = self.ood(split_name)
        if ood is None:
            return {}
        return ood_accuracy(self.load_state(state), ood, batch_size=self.config.eval_batch_size, device=self.device)[1]

    def evaluate(self, state: StateDict, split_name: str = "val", *, runs: int = 1) -> Scores:
        """Clean, robust and OOD accuracy of `state` on the val or test split.

        Robust accuracy uses a fixed seed, so every candidate faces the same random starts.
        """
        if split_name not in ("val", "test"):
            raise ValueError(f"split_name must be 'val' or 'test'; got {split_name!r}")
        return self.examples(state, split_name, runs=runs).scores(self.ood_accuracies(state, split_name))


def experiment_modules(config: SweepConfig, model: nn.Module) -> list[str]:
    """The candidate modules MRC scores: every Conv2d/Linear weight that runs, narrowed by include/exclude."""
    device = next(model.parameters()).device
    example = probe_input(dataset_info(config.data.dataset), device)
    return candidate_modules(model, config.modules.include, config.modules.exclude, example)


def skipped_modules(config: SweepConfig, model: nn.Module) -> list[str]:
    """Conv2d/Linear modules a forward pass never calls (listed to the user, never scored)."""
    example = probe_input(dataset_info(config.data.dataset), next(model.parameters()).device)
    ran = executed_modules(model, example)
    return [n for n, m in model.named_modules() if isinstance(m, CANDIDATE_TYPES) and n not in ran]


def check_module_choice(config: SweepConfig) -> list[str]:
    """The candidate modules of the configured architecture (no weights, no data needed); a named module
    that is not among them is refused here, before any compute."""
    names_ = experiment_modules(config, build_architecture(config, dataset_info(config.data.dataset)))
    if config.modules.choice == "named" and config.modules.name not in names_:
        raise InputError(
            f"modules.name {config.modules.name!r} is not a candidate module of {config.model.label}; "
            f"candidates: {', '.join(names_)}"
        )
    return names_


def mrc_source(config: SweepConfig, val: Split) -> Split:
    """The validation examples the adversarial set for MRC is made from (a seeded subset)."""
    return val.subset(config.mrc.examples, seed=config.seed)


def build_adversarial_set(config: SweepConfig, at_model: nn.Module, val: Split, device: torch.device) -> AdversarialSet:
    """PGD examples against θ_AT on the MRC subset of validation: the fixed set every module is scored on."""
    generator = torch.Generator().manual_seed(config.seed)
    return attack_split(
        config.attack,
        at_model,
        mrc_source(config, val),
        batch_size=config.eval_batch_size,
        device=device,
        generator=generator,
    )


def load_data(config: SweepConfig) -> DataSplits:
    data = config.data
    return load_splits(
        data.dataset,
        data.root,
        val_size=data.val_size,
        seed=data.split_seed,
        train_subset=data.train_subset,
        val_subset=data.val_subset,
        test_subset=data.test_subset,
        download=data.download,
    )


def split_identity(config: SweepConfig) -> dict:
    """What decides which training images the validation split holds (recorded in AT checkpoints)."""
    return {"dataset": config.data.dataset, "val_size": config.data.val_size, "split_seed": config.data.split_seed}


def check_split_matches(config: SweepConfig) -> None:
    """Refuse a validation split that may overlap the AT checkpoint's training data."""
    checkpoint = require_checkpoint(config)
    recorded = read_checkpoint_meta(checkpoint).get("split")
    if recorded and recorded != split_identity(config):
        raise InputError(
            f"the checkpoint {checkpoint} was trained with the split {recorded}, but the config carves "
            f"{split_identity(config)}: validation would overlap its training data; set data.dataset, "
            f"data.val_size and data.split_seed to the checkpoint's values"
        )


def load_experiment(
    config: SweepConfig, device: torch.device | str | None = None, *, check: bool = False
) -> Experiment:
    """Load data and θ_AT (on `device`, default: the configured one). Fails before any compute when the
    checkpoint is missing or does not fit; with `check`, also when the model is plainly wrong (check_at_model)."""
    check_split_matches(config)
    device = resolve_device(config.device) if device is None else torch.device(device)
    model = load_at_model(config, dataset_info(config.data.dataset), device=device)  # a bad model fails first
    splits = load_data(config)
    log.info("loaded %s (%s) on %s", config.model.checkpoint, config.model.label, device)
    at_state = cpu_copy(model.state_dict())
    exp = Experiment(
        config=config,
        splits=splits,
        device=device,
        at_state=at_state,
        checkpoint_sha256=file_sha256(config.model.checkpoint),
        model=model,
    )
    if check:
        check_at_model(exp)
    return exp


@dataclass(frozen=True)
class ExperimentData:
    """What a worker process needs of the driver's Experiment, shipped to it once (the Ray object store): the data
    splits, θ_AT and the OOD sets the driver built, so no worker reads the dataset files or generates corruptions
    again. The model itself is rebuilt on the worker's device."""

    splits: DataSplits
    at_state: StateDict
    checkpoint_sha256: str
    ood_sets: dict[str, OODSet | None]

    def experiment(self, config: SweepConfig, device: torch.device) -> Experiment:
        model = load_at_model(config, self.splits.info, self.at_state, device)
        return Experiment(
            config=config,
            splits=self.splits,
            device=device,
            at_state=self.at_state,
            checkpoint_sha256=self.checkpoint_sha256,
            model=model,
            _ood_sets=dict(self.ood_sets),
        )


SANITY_EXAMPLES = 256  # validation images for the load-time check: a few seconds even for a large model on CPU
SANITY_ROBUST_EXAMPLES = 64  # of them, attacked (PGD, at most SANITY_STEPS steps) under each normalisation
SANITY_STEPS = 5
SANITY_MARGIN = 20.0  # accuracy points by which the other normalisation must win to call this one wrong
NOT_ROBUST = 5.0  # robust accuracy (%) below which an adversarially trained model is not robust at all


def check_at_model(exp: Experiment) -> None:
    """Before any compute: the model returns logits, and under the configured normalisation it is neither near chance
    nor far below what the other choice gives, clean (a few hundred validation images) and robust (a short PGD on
    some of them). A wrong normalisation can keep clean accuracy and still be wrong: it scales the attack's ε by
    1/std (3.2x for Fashion-MNIST), so a model trained on raw pixels looks not robust at all."""
    info, model = exp.splits.info, exp.load_state(exp.at_state)
    sample = exp.splits.val.subset(SANITY_EXAMPLES, seed=0)
    with torch.no_grad():
        check_logits(
            model(to_unit(sample.x[:8].to(exp.device))),
            min(8, len(sample)),
            info.num_classes,
            f"the model ({exp.config.model.label})",
        )
    normalize = normalization_of(model)
    configured = (tuple(normalize.mean.flatten().tolist()), tuple(normalize.std.flatten().tolist()))
    identity = all(m == 0 for m in configured[0]) and all(s == 1 for s in configured[1])
    other = (info.mean, info.std) if identity else ((0.0,), (1.0,))
    names_ = ("none", "dataset") if identity else (_describe_normalization(configured, info), "none")
    try:
        (clean, robust), (other_clean, other_robust) = (
            _sanity(exp, model, sample, stats) for stats in (configured, other)
        )
    finally:
        normalize.set(*configured)
    seen = f"of {len(sample)} validation images with normalization {names_[0]} but"
    if other_clean - clean >= SANITY_MARGIN:
        raise InputError(
            f"the AT model classifies {clean:.0f}% {seen} {other_clean:.0f}% with {names_[1]}: set "
            f"model.normalization: {names_[1]} (what the checkpoint was trained on)"
        )
    chance = 100.0 / info.num_classes
    if clean < 2 * chance:
        raise InputError(
            f"the AT model classifies {clean:.0f}% of {len(sample)} validation images (chance: {chance:.0f}%): "
            f"wrong checkpoint, architecture, dataset or model.normalization"
        )
    if robust <= NOT_ROBUST and other_robust - robust >= SANITY_MARGIN:
        raise InputError(
            f"the AT model withstands a short PGD on {robust:.0f}% of {SANITY_ROBUST_EXAMPLES} validation images with "
            f"normalization {names_[0]} but {other_robust:.0f}% with {names_[1]} (a wrong normalisation scales ε by "
            f"1/std): set model.normalization: {names_[1]} (what the checkpoint was trained on)"
        )


def _sanity(exp: Experiment, model: nn.Module, sample: Split, stats: tuple) -> tuple[float, float]:
    """(clean %, robust % under a short PGD) of `model` on `sample` with its normalisation set to `stats`."""
    normalization_of(model).set(*stats)
    attack = dataclasses.replace(exp.config.attack, steps=min(exp.config.attack.steps, SANITY_STEPS))
    attacked = sample.subset(SANITY_ROBUST_EXAMPLES, seed=0)
    robust = robust_accuracy(model, attacked, attack, batch_size=exp.config.eval_batch_size, device=exp.device)
    return accuracy(model, sample, device=exp.device), robust


def _describe_normalization(stats: tuple, info: DatasetInfo) -> str:
    """ "dataset" when `stats` (read back from float32 buffers) are the dataset's, else the numbers."""
    mean, std = (np.broadcast_to(np.asarray(s, dtype=np.float32), len(info.mean)) for s in stats)
    if np.allclose(mean, info.mean) and np.allclose(std, info.std):
        return "dataset"
    return f"{{mean: {[round(float(m), 4) for m in mean]}, std: {[round(float(s), 4) for s in std]}}}"
