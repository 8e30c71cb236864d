"""Everything a RiFT step needs, built once from a SweepConfig: data splits, the AT model, the fixed
adversarial validation set for MRC, the OOD sets, and evaluation of any state dict on val or test.

Plain PyTorch: used alike by the single-process procedure, the Ray actors and the Tune trials.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rift_sweep.attacks import AdversarialSet, attack_split
from rift_sweep.config import SweepConfig
from rift_sweep.corruptions import OODSet, load_ood
from rift_sweep.data import DatasetInfo, DataSplits, Split, dataset_info, load_splits, tiny_imagenet_wnids
from rift_sweep.evaluate import evaluate
from rift_sweep.mrc import candidate_modules
from rift_sweep.models import StateDict, build_model, cpu_copy, file_sha256, load_weights, read_checkpoint_meta

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """"auto" → CUDA when present, else CPU; "cuda" without a GPU is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but no CUDA device is visible; use device: auto or cpu")
    return torch.device(name)


def new_model(config: SweepConfig, info: DatasetInfo) -> nn.Module:
    return build_model(config.model.name, num_classes=info.num_classes, in_channels=info.image_shape[0],
                       mean=info.mean, std=info.std)


@dataclass
class Experiment:
    config: SweepConfig
    splits: DataSplits
    device: torch.device
    at_state: StateDict  # θ_AT on CPU
    checkpoint_sha256: str
    model: nn.Module = field(repr=False)  # the working copy on `device`; load_state() swaps weights into it
    _ood_sets: dict[str, OODSet | None] = field(default_factory=dict, repr=False)

    @property
    def cache_dir(self) -> Path:
        return self.config.output_path / "cache"

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
        full = load_ood(split, dataset=info.name, root=ood.root, cache_dir=self.cache_dir / "ood",
                        seed=self.config.seed, corruptions=ood.corruptions, severities=ood.severities,
                        use_real=split_name == "test", wnids=wnids, progress=True)
        return full.subset(ood.per_corruption, seed=self.config.seed)

    def evaluate(self, state: StateDict, split_name: str = "val", *, runs: int = 1) -> dict[str, float]:
        """std_acc, rob_acc and ood_acc (+ per corruption) of `state` on the val or test split.

        Robust accuracy uses a fixed seed, so every candidate faces the same random starts.
        """
        if split_name not in ("val", "test"):
            raise ValueError(f"split_name must be 'val' or 'test'; got {split_name!r}")
        config = self.config
        return evaluate(self.load_state(state), getattr(self.splits, split_name), pgd=config.attack,
                        ood=self.ood(split_name), runs=runs, batch_size=config.eval_batch_size,
                        device=self.device, seed=config.seed, amp=config.attack.amp)


def check_module_choice(config: SweepConfig) -> list[str]:
    """The candidate modules of the configured architecture (no weights, no data needed); a named module
    that is not among them is refused here, before any compute."""
    model = new_model(config, dataset_info(config.data.dataset))
    names = candidate_modules(model, config.modules.include, config.modules.exclude)
    if config.modules.choice == "named" and config.modules.name not in names:
        raise ValueError(f"modules.name {config.modules.name!r} is not a candidate module of {config.model.name}; "
                         f"candidates: {', '.join(names)}")
    return names


def mrc_source(config: SweepConfig, val: Split) -> Split:
    """The validation examples the adversarial set for MRC is made from (a seeded subset)."""
    return val.subset(config.mrc.examples, seed=config.seed)


def build_adversarial_set(config: SweepConfig, at_model: nn.Module, val: Split, device: torch.device) -> AdversarialSet:
    """PGD examples against θ_AT on the MRC subset of validation: the fixed set every module is scored on."""
    generator = torch.Generator().manual_seed(config.seed)
    return attack_split(config.attack, at_model, mrc_source(config, val), batch_size=config.eval_batch_size,
                        device=device, generator=generator)


def load_data(config: SweepConfig) -> DataSplits:
    data = config.data
    return load_splits(data.dataset, data.root, val_size=data.val_size, seed=data.split_seed,
                       train_subset=data.train_subset, val_subset=data.val_subset,
                       test_subset=data.test_subset, download=data.download)


def split_identity(config: SweepConfig) -> dict:
    """What decides which training images the validation split holds (recorded in AT checkpoints)."""
    return {"dataset": config.data.dataset, "val_size": config.data.val_size, "split_seed": config.data.split_seed}


def check_split_matches(config: SweepConfig, checkpoint: str) -> None:
    """Refuse a validation split that may overlap the AT checkpoint's training data."""
    recorded = read_checkpoint_meta(checkpoint).get("split")
    if recorded and recorded != split_identity(config):
        raise ValueError(f"the checkpoint {checkpoint} was trained with the split {recorded}, but the config carves "
                         f"{split_identity(config)}: validation would overlap its training data; set data.dataset, "
                         f"data.val_size and data.split_seed to the checkpoint's values")


def load_experiment(config: SweepConfig) -> Experiment:
    """Load data and θ_AT. Fails before any compute when the checkpoint is missing or does not fit."""
    checkpoint = config.model.checkpoint
    if checkpoint is None:
        raise ValueError("model.checkpoint is not set: RiFT starts from an adversarially trained model; "
                         "train one with `rift-sweep train-at --config FILE --out PATH` and set model.checkpoint")
    check_split_matches(config, checkpoint)
    splits = load_data(config)
    device = resolve_device(config.device)
    model = new_model(config, splits.info)
    load_weights(model, checkpoint)
    at_state = cpu_copy(model.state_dict())
    model.to(device).eval()
    log.info("loaded %s (%s) on %s", checkpoint, config.model.name, device)
    return Experiment(config, splits, device, at_state, file_sha256(checkpoint), model)
