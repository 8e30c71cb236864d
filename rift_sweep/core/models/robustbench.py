"""RobustBench's CIFAR-10/100 Linf model zoo, by entry name, as plain-PyTorch models that load its checkpoints.

:data:`ROBUSTBENCH` maps (dataset, entry name) to the architecture RobustBench 1.1.1 builds for that entry
(``robustbench/model_zoo/cifar10.py`` / ``cifar100.py``, threat model Linf: the same name under L2 or
corruptions may be another network) and to the input normalisation its model applies. Every model built here
takes images in [0, 1] and normalises them in its first submodule, ``normalize``, whose buffers are
non-persistent: the state dict holds exactly the keys of RobustBench's published checkpoint files.

What the checkpoint loader (:func:`rift_sweep.core.models.checkpoints.load_weights`) has to know about those files:

- TRADES-layout WideResNets built with ``sub_block1=True`` carry ``sub_block1.*`` weights that the forward
  pass never uses; :class:`~rift_sweep.core.models.architectures.WideResNet` ignores that prefix.
- Some entries normalise in a RobustBench wrapper class that keeps ``mu``/``sigma`` as *persistent* buffers,
  so RobustBench's own ``state_dict()`` has two keys its checkpoint files lack (RobustBench then loads with
  ``strict=False``). Those entries list them in ``wrapper_keys``; the built model ignores them when loading.
- DeepMind's networks keep ``mean``/``std`` as non-persistent buffers: no normalisation keys anywhere.
- Files may wrap the weights under ``state_dict`` and prefix them with ``module.``; the loader strips both.

Not covered (beyond architectures not ported here): ``Chen2020Efficient`` (keys prefixed ``model.``) and
``Andriushchenko2020Understanding`` (weights under ``last``), whose files need RobustBench's own unwrapping.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from torch import nn

from rift_sweep.core.errors import InputError
from rift_sweep.core.models.architectures import (
    Normalize,
    PreActResNet,
    ResNet,
    WideResNet,
    resnet18,
    resnet50,
)
from rift_sweep.core.models.architectures_dm import DMPreActResNet, DMWideResNet

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
IN_CHANNELS = 3


class Normalization(NamedTuple):
    """Per-channel statistics a RobustBench model subtracts and divides by before its first layer."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


# The statistics as RobustBench writes them (the two CIFAR-100 sets differ in the 4th decimal).
CIFAR10 = Normalization((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
CIFAR10_ENGSTROM = Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_DM = Normalization((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
CIFAR100_WRAPPER = Normalization(
    (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
    (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
)
HALF = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # Hendrycks et al. feed 2x - 1
MU_SIGMA = ("mu", "sigma")


def _resnet(num_classes: int, depth: int) -> ResNet:
    """kuangliu CIFAR ResNet-18 or ResNet-50 (RobustBench's ``ResNet18`` / ``ResNet(Bottleneck, [3, 4, 6, 3])``)."""
    builders = {18: resnet18, 50: resnet50}
    if depth not in builders:
        raise ValueError(f"RobustBench ResNet depth must be one of {sorted(builders)}; got {depth}")
    return builders[depth](num_classes)


# family -> builder(num_classes, **entry.kwargs); each returns a model whose first submodule is `normalize`.
FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "wide_resnet": WideResNet,  # TRADES layout; kwargs depth, widen_factor
    "dm_wide_resnet": DMWideResNet,  # kwargs depth, width
    "dm_preact_resnet": DMPreActResNet,  # kwargs depth
    "resnet": _resnet,  # kwargs depth
    "preact_resnet18": partial(PreActResNet, (2, 2, 2, 2)),  # kwargs final_bn, project_activated
}


@dataclass(frozen=True)
class RobustBenchEntry:
    """One RobustBench model-zoo entry: which of our architectures rebuilds it and what it does to its input.

    ``normalization`` None means the network sees the [0, 1] image as is. ``wrapper_keys`` are state-dict keys
    of RobustBench's class that its checkpoint files lack (see the module docstring).
    """

    dataset: str
    name: str
    family: str
    kwargs: Mapping[str, Any]
    normalization: Normalization | None = None
    wrapper_keys: tuple[str, ...] = ()

    def build(self, **overrides: Any) -> nn.Module:
        """The entry's model on [0, 1] input; `overrides` replace kwargs (tests build small twins of huge nets)."""
        model = FAMILIES[self.family](NUM_CLASSES[self.dataset], **{**self.kwargs, **overrides})
        mean, std = self.normalization or ((0.0,), (1.0,))
        model.normalize = Normalize(mean, std, IN_CHANNELS)
        if self.wrapper_keys:
            inherited = getattr(model, "checkpoint_ignored_prefixes", ())
            model.checkpoint_ignored_prefixes = (*inherited, *self.wrapper_keys)
        return model


# name -> (depth, widen_factor): TRADES-layout WideResNets on raw [0, 1] input.
_TRADES_WRN: dict[str, dict[str, tuple[int, int]]] = {
    "cifar10": {
        "Standard": (28, 10),
        "Carmon2019Unlabeled": (28, 10),
        "Sehwag2020Hydra": (28, 10),
        "Wang2020Improving": (28, 10),
        "Wu2020Adversarial_extra": (28, 10),
        "Zhang2020Geometry": (28, 10),
        "Sridhar2021Robust": (28, 10),
        "Zhang2019Theoretically": (34, 10),
        "Huang2020Self": (34, 10),
        "Zhang2019You": (34, 10),
        "Zhang2020Attacks": (34, 10),
        "Wu2020Adversarial": (34, 10),
        "Sehwag2021Proxy": (34, 10),
        "Sitawarin2020Improving": (34, 10),
        "Cui2020Learnable_34_10": (34, 10),
        "Addepalli2021Towards_WRN34": (34, 10),
        "Chen2021LTD_WRN34_10": (34, 10),
        "Jia2022LAS-AT_34_10": (34, 10),
        "Addepalli2022Efficient_WRN_34_10": (34, 10),
        "Cui2023Decoupled_WRN-34-10": (34, 10),
        "Chen2024Data_WRN_34_10": (34, 10),
        "Sridhar2021Robust_34_15": (34, 15),
        "Cui2020Learnable_34_20": (34, 20),
        "Chen2021LTD_WRN34_20": (34, 20),
        "Chen2024Data_WRN_34_20": (34, 20),
        "Jia2022LAS-AT_70_16": (70, 16),
    },
    "cifar100": {
        "Cui2020Learnable_34_10_LBGAT0": (34, 10),
        "Cui2020Learnable_34_10_LBGAT6": (34, 10),
        "Cui2020Learnable_34_10_LBGAT9_eps_8_255": (34, 10),
        "Sehwag2021Proxy": (34, 10),
        "Sitawarin2020Improving": (34, 10),
        "Addepalli2021Towards_WRN34": (34, 10),
        "Chen2021LTD_WRN34_10": (34, 10),
        "Jia2022LAS-AT_34_10": (34, 10),
        "Addepalli2022Efficient_WRN_34_10": (34, 10),
        "Cui2023Decoupled_WRN-34-10": (34, 10),
        "Cui2023Decoupled_WRN-34-10_autoaug": (34, 10),
        "Chen2024Data_WRN_34_10": (34, 10),
        "Cui2020Learnable_34_20_LBGAT6": (34, 20),
        "Jia2022LAS-AT_34_20": (34, 20),
    },
}

# name -> (depth, width): DeepMind Swish/SiLU WideResNets, normalising with the data set's statistics.
_DM_WRN: dict[str, dict[str, tuple[int, int]]] = {
    "cifar10": {
        "Gowal2020Uncovering_28_10_extra": (28, 10),
        "Rebuffi2021Fixing_28_10_cutmix_ddpm": (28, 10),
        "Rade2021Helper_ddpm": (28, 10),
        "Gowal2021Improving_28_10_ddpm_100m": (28, 10),
        "Pang2022Robustness_WRN28_10": (28, 10),
        "Wang2023Better_WRN-28-10": (28, 10),
        "Xu2023Exploring_WRN-28-10": (28, 10),
        "Cui2023Decoupled_WRN-28-10": (28, 10),
        "Rade2021Helper_extra": (34, 10),
        "Gowal2020Uncovering_34_20": (34, 20),
        "Gowal2020Uncovering_70_16": (70, 16),
        "Gowal2020Uncovering_70_16_extra": (70, 16),
        "Rebuffi2021Fixing_70_16_cutmix_ddpm": (70, 16),
        "Rebuffi2021Fixing_70_16_cutmix_extra": (70, 16),
        "Gowal2021Improving_70_16_ddpm_100m": (70, 16),
        "Pang2022Robustness_WRN70_16": (70, 16),
        "Wang2023Better_WRN-70-16": (70, 16),
        "Bartoldson2024Adversarial_WRN-82-8": (82, 8),
        "Bartoldson2024Adversarial_WRN-94-16": (94, 16),
        "Rebuffi2021Fixing_106_16_cutmix_ddpm": (106, 16),
    },
    "cifar100": {
        "Rebuffi2021Fixing_28_10_cutmix_ddpm": (28, 10),
        "Pang2022Robustness_WRN28_10": (28, 10),
        "Wang2023Better_WRN-28-10": (28, 10),
        "Cui2023Decoupled_WRN-28-10": (28, 10),
        "Gowal2020Uncovering": (70, 16),
        "Gowal2020Uncovering_extra": (70, 16),
        "Rebuffi2021Fixing_70_16_cutmix_ddpm": (70, 16),
        "Pang2022Robustness_WRN70_16": (70, 16),
        "Wang2023Better_WRN-70-16": (70, 16),
    },
}

# DeepMind Swish PreAct ResNet-18s.
_DM_PREACT18: dict[str, tuple[str, ...]] = {
    "cifar10": (
        "Rebuffi2021Fixing_R18_ddpm",
        "Rade2021Helper_R18_extra",
        "Rade2021Helper_R18_ddpm",
        "Gowal2021Improving_R18_ddpm_100m",
    ),
    "cifar100": ("Rebuffi2021Fixing_R18_ddpm", "Rade2021Helper_R18_ddpm"),
}
_DM_NORMALIZATION = {"cifar10": CIFAR10, "cifar100": CIFAR100_DM}

# Wong et al.'s fast-AT PreAct ResNet-18 (RobustBench's default PreActResNet): raw-input projections, no final bn.
_PREACT_WONG = {"final_bn": False, "project_activated": False}
# The robust_overfitting layout (RobustBench's PreActBlockV2 or out_shortcut=True, bn_before_fc=True).
_PREACT_RICE = {"final_bn": True, "project_activated": True}

_OTHERS = (
    RobustBenchEntry(
        "cifar10", "Rice2020Overfitting", "wide_resnet", {"depth": 34, "widen_factor": 20}, CIFAR10, MU_SIGMA
    ),
    RobustBenchEntry("cifar10", "Hendrycks2019Using", "wide_resnet", {"depth": 28, "widen_factor": 10}, HALF),
    RobustBenchEntry("cifar10", "Engstrom2019Robustness", "resnet", {"depth": 50}, CIFAR10_ENGSTROM, MU_SIGMA),
    RobustBenchEntry("cifar10", "Sehwag2021Proxy_R18", "resnet", {"depth": 18}),
    RobustBenchEntry("cifar10", "Addepalli2021Towards_RN18", "resnet", {"depth": 18}),
    RobustBenchEntry("cifar10", "Addepalli2022Efficient_RN18", "resnet", {"depth": 18}),
    RobustBenchEntry("cifar10", "Wong2020Fast", "preact_resnet18", _PREACT_WONG, CIFAR10, MU_SIGMA),
    RobustBenchEntry(
        "cifar100", "Wu2020Adversarial", "wide_resnet", {"depth": 34, "widen_factor": 10}, CIFAR100_WRAPPER, MU_SIGMA
    ),
    RobustBenchEntry("cifar100", "Hendrycks2019Using", "wide_resnet", {"depth": 28, "widen_factor": 10}, HALF),
    RobustBenchEntry("cifar100", "Rice2020Overfitting", "preact_resnet18", _PREACT_RICE, CIFAR100_WRAPPER, MU_SIGMA),
    RobustBenchEntry("cifar100", "Addepalli2021Towards_PARN18", "preact_resnet18", _PREACT_RICE),
    RobustBenchEntry("cifar100", "Addepalli2022Efficient_RN18", "resnet", {"depth": 18}),
)


def _entries() -> Iterator[RobustBenchEntry]:
    for dataset, table in _TRADES_WRN.items():
        for name, (depth, widen) in table.items():
            yield RobustBenchEntry(dataset, name, "wide_resnet", {"depth": depth, "widen_factor": widen})
    for dataset, table in _DM_WRN.items():
        for name, (depth, width) in table.items():
            kwargs = {"depth": depth, "width": width}
            yield RobustBenchEntry(dataset, name, "dm_wide_resnet", kwargs, _DM_NORMALIZATION[dataset])
    for dataset, names in _DM_PREACT18.items():
        for name in names:
            yield RobustBenchEntry(dataset, name, "dm_preact_resnet", {"depth": 18}, _DM_NORMALIZATION[dataset])
    yield from _OTHERS


ROBUSTBENCH: dict[tuple[str, str], RobustBenchEntry] = {(e.dataset, e.name): e for e in _entries()}


def robustbench_entry(name: str, dataset: str) -> RobustBenchEntry:
    """The table's entry, or an InputError naming close entries and the way out (the user's own class)."""
    entry = ROBUSTBENCH.get((dataset, name))
    if entry is not None:
        return entry
    if dataset not in NUM_CLASSES:
        raise InputError(
            f"no RobustBench entries for dataset {dataset!r} (covered: {', '.join(NUM_CLASSES)}); "
            f"or name your own class with model.target"
        )
    by_lower = {n.lower(): n for d, n in ROBUSTBENCH if d == dataset}
    close = [by_lower[n] for n in difflib.get_close_matches(name.lower(), by_lower, n=4, cutoff=0.5)]
    raise InputError(
        f"unknown RobustBench entry {name!r} for {dataset} (Linf table); close: {', '.join(close) or 'none'}; "
        f"or name your own class with model.target"
    )


def build_robustbench(name: str, dataset: str) -> nn.Module:
    """RobustBench's model `name` for `dataset` (Linf), untrained, taking [0, 1] input; load its checkpoint with
    :func:`rift_sweep.core.models.checkpoints.load_weights`."""
    return robustbench_entry(name, dataset).build()
