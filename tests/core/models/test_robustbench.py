"""Tests for rift_sweep.core.models.robustbench: our rebuilds of RobustBench's CIFAR Linf zoo against RobustBench itself.

The parity tests read RobustBench 1.1.1's own files (installed with `pip install --no-deps robustbench==1.1.1`;
the package itself does not import without timm): its architecture modules, loaded by path, and its zoo tables
(model_zoo/cifar10.py, cifar100.py), whose class definitions and `linf` table are executed with those
architectures. Each table entry is then checked against the model RobustBench builds for that name: the same
state-dict keys and shapes at full size (on the meta device: no memory), and the same logits on [0, 1] input
for a small twin (RobustBench's class asked for the entry's hyper-parameters, built at depth 16 / width 2).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import inspect
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from rift_sweep.core.errors import InputError
from rift_sweep.core.models.checkpoints import load_weights
from rift_sweep.core.models.robustbench import (
    CIFAR10,
    NUM_CLASSES,
    ROBUSTBENCH,
    Normalization,
    RobustBenchEntry,
    build_robustbench,
    robustbench_entry,
)

PIP = "pip install --no-deps robustbench==1.1.1"
# Small twins: RobustBench's scalable classes are built at this size, and ours with the same override.
SMALL = {"WideResNet": {"depth": 16, "widen_factor": 2}, "DMWideResNet": {"depth": 16, "width": 2}}
OUR_FAMILY = {"WideResNet": "wide_resnet", "DMWideResNet": "dm_wide_resnet", "DMPreActResNet": "dm_preact_resnet"}


def _zoo_dir() -> Path:
    """RobustBench's model_zoo folder, found without importing the package (its __init__ needs timm)."""
    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"robustbench files not installed: {PIP}")
    if importlib.metadata.version("robustbench") != "1.1.1":
        pytest.skip(f"the table follows robustbench 1.1.1: {PIP}")
    return Path(list(spec.submodule_search_locations)[0]) / "model_zoo"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"robustbench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rb() -> dict[str, ModuleType]:
    """RobustBench's architecture modules that the covered entries use (they import only torch)."""
    arch = _zoo_dir() / "architectures"
    return {name: _load(arch / f"{name}.py") for name in ("wide_resnet", "resnet", "dm_wide_resnet")}


def _twin(base: type[nn.Module], small: dict[str, int]) -> type[nn.Module]:
    """A subclass of RobustBench's `base` that records the hyper-parameters asked for and builds `small` ones."""
    signature = inspect.signature(base.__init__)

    class Twin(base):
        def __init__(self, *args, **kwargs):
            bound = signature.bind(None, *args, **kwargs)
            bound.apply_defaults()
            asked = {k: v for k, v in bound.arguments.items() if k != "self"}
            super().__init__(**{**asked, **small})
            self.asked = asked

    Twin.__name__ = base.__name__
    return Twin


def _linf_table(rb: dict[str, ModuleType], dataset: str, twins: bool) -> dict[str, dict]:
    """RobustBench's `linf` OrderedDict for `dataset`, with the classes it defines on top of the architectures."""
    namespace = {"torch": torch, "nn": nn, "OrderedDict": OrderedDict}
    for module in rb.values():
        namespace.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    if twins:
        namespace.update({name: _twin(namespace[name], SMALL.get(name, {})) for name in OUR_FAMILY})
    path = _zoo_dir() / f"{dataset}.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    classes = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and all(isinstance(b, ast.Name) and b.id in namespace for b in node.bases)
    ]
    (table,) = [n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "linf"]
    defined = {node.name for node in classes}
    for node in ast.walk(table):  # entries on architectures not ported here: never built, so any value will do
        if isinstance(node, ast.Name) and node.id not in namespace and node.id not in defined:
            namespace[node.id] = None
    exec(compile(ast.Module(body=[*classes, table], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["linf"]


@pytest.fixture(scope="module")
def small_zoo(rb) -> dict[str, dict[str, dict]]:
    return {dataset: _linf_table(rb, dataset, twins=True) for dataset in NUM_CLASSES}


@pytest.fixture(scope="module")
def full_zoo(rb) -> dict[str, dict[str, dict]]:
    return {dataset: _linf_table(rb, dataset, twins=False) for dataset in NUM_CLASSES}


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give every BN distinct statistics and affine terms, so a swapped or skipped BN changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def _assert_same_logits(ours: nn.Module, theirs: nn.Module, tmp_path: Path) -> None:
    """Load RobustBench's weights into ours through the checkpoint loader, then compare eval-mode logits."""
    _randomise_batchnorm(theirs)
    torch.save(theirs.state_dict(), tmp_path / "robustbench.pt")
    load_weights(ours, tmp_path / "robustbench.pt")  # strict, modulo the model's ignored prefixes
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs.eval()(x)
        got = ours.eval()(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def _scalable(model: nn.Module) -> str | None:
    """The name of the RobustBench architecture class that `model` is (or wraps by subclassing) if it has a twin."""
    return next((c.__name__ for c in type(model).__mro__ if c.__name__ in OUR_FAMILY), None)


def _check_asked(entry: RobustBenchEntry, theirs: nn.Module, rb: dict[str, ModuleType]) -> None:
    """The hyper-parameters RobustBench asked its scalable class for are the entry's."""
    family = OUR_FAMILY.get(_scalable(theirs))
    if family is None:  # fixed-size classes (ResNet, PreActResNet): the logits and key checks cover them
        assert entry.family in ("resnet", "preact_resnet18")
        return
    asked = theirs.asked
    assert entry.family == family
    assert {k: asked[k] for k in entry.kwargs} == dict(entry.kwargs)
    assert asked["num_classes"] == NUM_CLASSES[entry.dataset]
    if family == "wide_resnet":
        assert (asked["dropRate"], asked["bias_last"]) == (0.0, True)
    else:  # DeepMind nets: Swish (ours is nn.SiLU, the same function), no input padding, and the entry's statistics
        assert asked["activation_fn"] in (rb["dm_wide_resnet"].Swish, nn.SiLU)
        assert (asked["padding"], asked["num_input_channels"]) == (0, 3)
        assert (tuple(asked["mean"]), tuple(asked["std"])) == entry.normalization


@pytest.mark.parametrize("key", sorted(ROBUSTBENCH), ids="/".join)
def test_entry_computes_what_robustbench_computes(key, rb, small_zoo, tmp_path):
    entry = ROBUSTBENCH[key]
    theirs = small_zoo[entry.dataset][entry.name]["model"]()
    _check_asked(entry, theirs, rb)
    ours = entry.build(**SMALL.get(_scalable(theirs), {}))
    _assert_same_logits(ours, theirs, tmp_path)


@pytest.mark.parametrize("key", sorted(ROBUSTBENCH), ids="/".join)
def test_entry_has_robustbench_keys_at_full_size(key, full_zoo):
    entry = ROBUSTBENCH[key]
    with torch.device("meta"):
        theirs = full_zoo[entry.dataset][entry.name]["model"]()
        ours = entry.build()
    their_shapes = {k: v.shape for k, v in theirs.state_dict().items()}
    ignored = getattr(ours, "checkpoint_ignored_prefixes", ())
    assert set(entry.wrapper_keys) <= set(their_shapes)  # declared wrapper keys are really RobustBench's
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: s for k, s in their_shapes.items() if not k.startswith(ignored)
    }


@pytest.mark.parametrize(("depth", "width"), [(10, 1), (16, 2), (22, 1)])
def test_wide_resnets_match_robustbench_at_other_sizes(depth, width, rb, tmp_path):
    theirs = rb["wide_resnet"].WideResNet(depth=depth, num_classes=10, widen_factor=width, sub_block1=True)
    ours = robustbench_entry("Standard", "cifar10").build(depth=depth, widen_factor=width)
    _assert_same_logits(ours, theirs, tmp_path)  # sub_block1 rides along in the file and is ignored

    dm = rb["dm_wide_resnet"]
    theirs = dm.DMWideResNet(10, depth, width, activation_fn=dm.Swish, mean=CIFAR10.mean, std=CIFAR10.std)
    ours = robustbench_entry("Rebuffi2021Fixing_28_10_cutmix_ddpm", "cifar10").build(depth=depth, width=width)
    _assert_same_logits(ours, theirs, tmp_path)


def test_dm_preact_resnet34_matches_robustbench(rb, tmp_path):
    dm = rb["dm_wide_resnet"]
    theirs = dm.DMPreActResNet(100, depth=34, activation_fn=dm.Swish, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    normalization = Normalization((0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    ours = RobustBenchEntry("cifar100", "twin", "dm_preact_resnet", {"depth": 34}, normalization)
    _assert_same_logits(ours.build(), theirs, tmp_path)


def test_listed_entries_are_covered():
    cifar10 = (
        "Carmon2019Unlabeled Engstrom2019Robustness Rice2020Overfitting Wong2020Fast Zhang2019Theoretically "
        "Wang2020Improving Gowal2020Uncovering_28_10_extra Gowal2020Uncovering_70_16_extra "
        "Rebuffi2021Fixing_28_10_cutmix_ddpm Rade2021Helper_R18_ddpm Addepalli2021Towards_RN18 Sehwag2021Proxy_R18 "
        "Standard"
    )
    cifar100 = "Rice2020Overfitting Gowal2020Uncovering Rebuffi2021Fixing_28_10_cutmix_ddpm Addepalli2022Efficient_RN18"
    wanted = {("cifar10", n) for n in cifar10.split()} | {("cifar100", n) for n in cifar100.split()}
    assert wanted <= set(ROBUSTBENCH)


def test_normalize_layer_holds_the_tables_statistics():
    raw = build_robustbench("Addepalli2021Towards_RN18", "cifar10")
    dm = build_robustbench("Rade2021Helper_R18_ddpm", "cifar10")
    assert ROBUSTBENCH["cifar10", "Addepalli2021Towards_RN18"].normalization is None
    assert raw.normalize.mean.flatten().tolist() == [0.0] * 3 and raw.normalize.std.flatten().tolist() == [1.0] * 3
    torch.testing.assert_close(dm.normalize.mean.flatten(), torch.tensor(CIFAR10.mean))
    torch.testing.assert_close(dm.normalize.std.flatten(), torch.tensor(CIFAR10.std))
    for model in (raw, dm):
        assert next(iter(model.named_children()))[0] == "normalize"  # the first step, on [0, 1] input
        assert not any(k.startswith("normalize.") for k in model.state_dict())  # checkpoints hold no statistics


def test_wrapper_normalisation_keys_are_ignored_when_loading(tmp_path):
    """A state dict saved from RobustBench's wrapper class (with mu/sigma) loads like the published file."""
    model = build_robustbench("Wong2020Fast", "cifar10")
    state = {**model.state_dict(), "mu": torch.zeros(1, 3, 1, 1), "sigma": torch.ones(1, 3, 1, 1)}
    torch.save(state, tmp_path / "wong.pt")
    load_weights(model, tmp_path / "wong.pt")
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(CIFAR10.mean))


def test_unknown_entry_names_close_ones_and_the_way_out():
    with pytest.raises(InputError) as caught:
        build_robustbench("carmon2019unlabelled", "cifar10")
    message = str(caught.value)
    assert "'carmon2019unlabelled'" in message and "cifar10" in message
    assert "Carmon2019Unlabeled" in message and "model.target" in message and "\n" not in message


def test_unknown_dataset_is_an_input_error():
    with pytest.raises(InputError, match="cifar10, cifar100.*model.target"):
        build_robustbench("Standard", "imagenet")
