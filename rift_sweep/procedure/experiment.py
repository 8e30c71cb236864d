"""Everything a RiFT step needs, built once from a SweepConfig: data splits, the AT model, the fixed
adversarial validation set for MRC, the OOD sets, and evaluation of any state dict on val or test.

Plain PyTorch: used alike by the single-process procedure, the Ray actors and the Tune trials. This is the
one place where the AT model is built and loaded (`load_at_model`) and where caches live (`cache_dir`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.core.attacks import AdversarialSet, attack_split
from rift_sweep.core.corruptions import OODSet, load_ood
from rift_sweep.core.data import DatasetInfo, DataSplits, Split, dataset_info, load_splits, tiny_imagenet_wnids
from rift_sweep.core.errors import InputError
from rift_sweep.core.evaluate import evaluate
from rift_sweep.core.files import file_sha256
from rift_sweep.core.models import StateDict, build_model, cpu_copy, load_weights, read_checkpoint_meta
from rift_sweep.core.mrc import candidate_modules

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


def build_architecture(config: SweepConfig, info: DatasetInfo) -> nn.Module:
    """The configured architecture with random weights, normalising its [0, 1] input first."""
    return build_model(
        config.model.name, num_classes=info.num_classes, in_channels=info.image_shape[0], mean=info.mean, std=info.std
    )


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
    return model.to(device).eval()


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
        full = load_ood(
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
        )
        return full.subset(ood.per_corruption, seed=self.config.seed)

    def evaluate(self, state: StateDict, split_name: str = "val", *, runs: int = 1) -> dict[str, float]:
        """std_acc, rob_acc and ood_acc (+ per corruption) of `state` on the val or test split.

        Robust accuracy uses a fixed seed, so every candidate faces the same random starts.
        """
        if split_name not in ("val", "test"):
            raise ValueError(f"split_name must be 'val' or 'test'; got {split_name!r}")
        config = self.config
        return evaluate(
            self.load_state(state),
            getattr(self.splits, split_name),
            pgd=config.attack,
            ood=self.ood(split_name),
            runs=runs,
            batch_size=config.eval_batch_size,
            device=self.device,
            seed=config.seed,
            amp=config.attack.amp,
        )


def experiment_modules(config: SweepConfig, model: nn.Module) -> list[str]:
    """The candidate modules MRC scores: every Conv2d/Linear weight, narrowed by modules.include/exclude."""
    return candidate_modules(model, config.modules.include, config.modules.exclude)


def check_module_choice(config: SweepConfig) -> list[str]:
    """The candidate modules of the configured architecture (no weights, no data needed); a named module
    that is not among them is refused here, before any compute."""
    names_ = experiment_modules(config, build_architecture(config, dataset_info(config.data.dataset)))
    if config.modules.choice == "named" and config.modules.name not in names_:
        raise InputError(
            f"modules.name {config.modules.name!r} is not a candidate module of {config.model.name}; "
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


def load_experiment(config: SweepConfig, device: torch.device | str | None = None) -> Experiment:
    """Load data and θ_AT (on `device`, default: the configured one). Fails before any compute when the
    checkpoint is missing or does not fit."""
    check_split_matches(config)
    splits = load_data(config)
    device = resolve_device(config.device) if device is None else torch.device(device)
    model = load_at_model(config, splits.info, device=device)
    log.info("loaded %s (%s) on %s", config.model.checkpoint, config.model.name, device)
    at_state = cpu_copy(model.state_dict())
    return Experiment(config, splits, device, at_state, file_sha256(config.model.checkpoint), model)
