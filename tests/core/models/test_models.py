"""Tests for rift_sweep.core.models.architectures: architectures, module names, normalisation, registry and checkpoint I/O."""

from __future__ import annotations

import os
import pickle
import shlex

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rift_sweep.core.models.architectures import (
    MODELS,
    PreActBlock,
    WideBasicBlock,
    WideResNet,
    build_model,
)
from rift_sweep.core.models.checkpoints import (
    CheckpointError,
    load_state_dict_file,
    load_weights,
    read_checkpoint_meta,
    save_checkpoint,
)

RESNET18_MODULES = [
    "conv1",
    "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2",
    "layer2.0.conv1", "layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv1", "layer2.1.conv2",
    "layer3.0.conv1", "layer3.0.conv2", "layer3.0.shortcut.0", "layer3.1.conv1", "layer3.1.conv2",
    "layer4.0.conv1", "layer4.0.conv2", "layer4.0.shortcut.0", "layer4.1.conv1", "layer4.1.conv2",
    "linear",
]  # fmt: skip


def weight_modules(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module")
def cnn_pair() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.3,), std=(0.35,))
    # Non-trivial BN statistics so a wrongly loaded buffer would change the outputs.
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 1, 28, 28))
    return model, torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------ architectures


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("resnet18", (3, 32, 32)),
        ("resnet18", (3, 64, 64)),
        ("resnet34", (3, 32, 32)),
        ("preact_resnet18", (3, 32, 32)),
        ("small_cnn", (1, 28, 28)),
        ("small_cnn", (1, 8, 8)),
        ("small_cnn", (3, 32, 32)),
        ("trades_cnn", (1, 28, 28)),
        ("trades_cnn", (3, 32, 32)),
    ],
)
def test_forward_gives_one_logit_per_class(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, num_classes=7, in_channels=shape[0])
    logits = outputs(model, torch.rand(2, *shape))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_wrn34_10_layout_and_forward() -> None:
    model = build_model("wrn34_10", num_classes=10)
    names = dict(model.named_modules())
    assert isinstance(names["block1.layer.3.conv2"], nn.Conv2d)
    assert isinstance(names["block1.layer.0.convShortcut"], nn.Conv2d)
    assert "block1.layer.1.convShortcut" not in names
    assert len(model.block1.layer) == 5
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(46.16e6, rel=0.01)
    assert outputs(model, torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_wide_block_matches_trades_semantics() -> None:
    """TRADES: a widening block's 1x1 shortcut takes relu(bn1(x)); an equal-width block adds raw x."""
    torch.manual_seed(0)
    for block in (WideBasicBlock(8, 16, stride=2), WideBasicBlock(16, 16, stride=1)):
        block.eval()
        block.bn1.running_mean.uniform_(-0.5, 0.5)  # so bn1/relu1 visibly change the input
        x = torch.randn(2, block.bn1.num_features, 8, 8)
        with torch.no_grad():
            activated = torch.relu(block.bn1(x))
            residual = block.conv2(torch.relu(block.bn2(block.conv1(activated))))
            shortcut = x if block.convShortcut is None else block.convShortcut(activated)
            torch.testing.assert_close(block(x), shortcut + residual)
            assert not torch.allclose(activated, x)


def test_preact_block_projection_sees_the_preactivated_input() -> None:
    torch.manual_seed(0)
    block = PreActBlock(8, 16, stride=2).eval()
    block.bn1.running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        activated = torch.relu(block.bn1(x))
        expected = block.shortcut(activated) + block.conv2(torch.relu(block.bn2(block.conv1(activated))))
        torch.testing.assert_close(block(x), expected)


def test_resnet18_has_exactly_the_papers_21_modules() -> None:
    assert weight_modules(build_model("resnet18", num_classes=10)) == RESNET18_MODULES


def test_preact_resnet18_layout() -> None:
    keys = build_model("preact_resnet18", num_classes=10).state_dict().keys()
    expected = {"conv1.weight", "layer2.0.shortcut.0.weight", "layer1.0.bn1.running_mean", "bn.weight", "linear.weight"}
    assert expected <= keys
    assert not any(k.startswith("layer1.0.shortcut") for k in keys)  # identity shortcut has no module


def test_small_cnn_gives_mrc_at_least_five_candidates() -> None:
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    assert weight_modules(model) == ["conv1", "conv2", "conv3", "fc1", "fc2"]


def test_trades_cnn_has_the_trades_layout() -> None:
    model = build_model("trades_cnn", num_classes=10, in_channels=1)
    convs = [f"feature_extractor.conv{i}" for i in range(1, 5)]
    fcs = [f"classifier.fc{i}" for i in range(1, 4)]
    assert weight_modules(model) == convs + fcs
    # TRADES' checkpoint keys exactly (no BN, every layer with a bias), so its MNIST checkpoints load strictly.
    assert set(model.state_dict()) == {f"{m}.{p}" for m in convs + fcs for p in ("weight", "bias")}
    assert model.classifier.fc1.in_features == 64 * 4 * 4
    # TRADES starts from a zero classifier: every class equally likely.
    assert not outputs(model, torch.rand(3, 1, 28, 28)).any()


def test_trades_cnn_pools_28x28_exactly_as_trades() -> None:
    torch.manual_seed(0)
    model = build_model("trades_cnn", num_classes=10, in_channels=1).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        before_pool = model.feature_extractor[:-1](x)
        assert before_pool.shape == (4, 64, 8, 8)
        # The adaptive 4x4 pool is TRADES' MaxPool2d(2, 2) on the 8x8 map of 28x28 inputs.
        torch.testing.assert_close(model.feature_extractor(x), F.max_pool2d(before_pool, 2), rtol=0, atol=0)


def test_trades_cnn_dropout_only_in_train_mode() -> None:
    torch.manual_seed(0)
    model = build_model("trades_cnn", num_classes=10, in_channels=1)
    nn.init.normal_(model.classifier.fc3.weight)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(outputs(model, x), outputs(model, x), rtol=0, atol=0)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


# ------------------------------------------------------------------ normalisation and registry


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "small_cnn", "trades_cnn"])
def test_state_dict_has_no_normalisation_entries(name: str) -> None:
    model = build_model(name, num_classes=10, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    buffers = dict(model.named_buffers())
    assert buffers["normalize.mean"].flatten().tolist() == pytest.approx([0.5, 0.4, 0.3])
    assert not any(k.startswith("normalize") for k in model.state_dict())
    assert next(iter(model.named_children()))[0] == "normalize"


def test_normalisation_is_applied() -> None:
    torch.manual_seed(0)
    plain = build_model("small_cnn", num_classes=3, in_channels=1)
    shifted = build_model("small_cnn", num_classes=3, in_channels=1, mean=(0.5,), std=(0.25,))
    shifted.load_state_dict(plain.state_dict())
    x = torch.rand(4, 1, 28, 28)
    assert not torch.allclose(outputs(plain, x), outputs(shifted, x))
    # Normalising inside equals feeding pre-normalised images to the identity-normalised twin.
    torch.testing.assert_close(outputs(shifted, x), outputs(plain, (x - 0.5) / 0.25))


def test_mean_std_broadcast_and_travel_with_the_model() -> None:
    model = build_model("resnet18", num_classes=10, mean=(0.5,), std=(0.25,))
    assert model.normalize.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    model.double()
    assert model.normalize.std.dtype == torch.float64


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known models: .*resnet18.*small_cnn"):
        build_model("resnet19", num_classes=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean": (0.1, 0.2)}, "2 values but the model has 3"),
        ({"std": (0.2, 0.2, 0.2, 0.2)}, "4 values but the model has 3"),
        ({"std": (0.0,)}, "std must be positive"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"in_channels": 0}, "in_channels must be an integer >= 1"),
    ],
)
def test_bad_build_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model("small_cnn", **{"num_classes": 10, **kwargs})


def test_wrong_channel_count_is_named() -> None:
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match=r"expects images \[B, 1, H, W\]"):
        model(torch.rand(2, 3, 28, 28))


def test_registry_entries_build_what_they_describe() -> None:
    assert set(MODELS) == {"resnet18", "resnet34", "preact_resnet18", "wrn34_10", "small_cnn", "trades_cnn"}
    for name, spec in MODELS.items():
        assert spec.description
        model = build_model(name, num_classes=7, in_channels=3)
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 7), name  # the builder honours its arguments


# ------------------------------------------------------------------ checkpoint layouts


def _wrapped(state: dict, layout: str) -> object:
    prefixed = {
        "plain": state,
        "module": {f"module.{k}": v for k, v in state.items()},
        "orig_mod": {f"_orig_mod.{k}": v for k, v in state.items()},
        "compiled_dataparallel": {f"_orig_mod.module.{k}": v for k, v in state.items()},
    }
    if layout in prefixed:
        return prefixed[layout]
    if layout == "nested":
        return {"model": {"state_dict": {f"module.{k}": v for k, v in state.items()}}, "epoch": 3}
    # kuangliu saves {"net": ..., "acc": ..., "epoch": ...}; others wrap similarly with extra fields.
    return {layout: state, "acc": 93.1, "epoch": 200, "optimizer": {"lr": 0.1}}


LAYOUTS = ["plain", "state_dict", "model", "net", "model_state_dict", "module", "orig_mod", "compiled_dataparallel"]


@pytest.mark.parametrize("layout", [*LAYOUTS, "nested"])
def test_every_checkpoint_layout_loads_identically(tmp_path, cnn_pair, layout: str) -> None:
    source, x = cnn_pair
    path = tmp_path / "ckpt.pt"
    torch.save(_wrapped(source.state_dict(), layout), path)
    assert load_state_dict_file(path).keys() == source.state_dict().keys()
    target = build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.3,), std=(0.35,))
    load_weights(target, path)
    torch.testing.assert_close(outputs(target, x), outputs(source, x), rtol=0, atol=0)


def test_checkpoint_without_bn_counters_still_loads(tmp_path, cnn_pair) -> None:
    source, x = cnn_pair
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    target = build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.3,), std=(0.35,))
    load_weights(target, path)
    torch.testing.assert_close(outputs(target, x), outputs(source, x), rtol=0, atol=0)


def test_trades_unused_sub_block1_is_ignored(tmp_path) -> None:
    torch.manual_seed(0)
    source = WideResNet(num_classes=10, depth=10, widen_factor=1)
    state = dict(source.state_dict())
    state["sub_block1.layer.0.conv1.weight"] = torch.zeros(16, 16, 3, 3)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "trades.pt")
    target = WideResNet(num_classes=10, depth=10, widen_factor=1)
    load_weights(target, tmp_path / "trades.pt")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(outputs(target, x), outputs(source, x), rtol=0, atol=0)
    assert not any(name.startswith("sub_block1") for name, _ in target.named_modules())


# ------------------------------------------------------------------ mismatches


def test_wrong_architecture_names_missing_and_unexpected_keys(tmp_path) -> None:
    torch.save(build_model("resnet18", num_classes=10).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError) as info:
        load_weights(build_model("preact_resnet18", num_classes=10), tmp_path / "r18.pt")
    summary, message = str(info.value), info.value.details + "\n"
    assert "\n" not in summary and "missing keys (4), unexpected keys (20), mis-shaped keys (12)" in summary
    # PreAct has a final `bn` and no stem bn1 / shortcut BN; its first-block bn1 sees the narrower input.
    assert "missing keys (4):\n  bn.weight\n  bn.bias\n  bn.running_mean\n  bn.running_var\n" in message
    assert "unexpected keys (20):" in message and "  bn1.weight\n" in message
    assert "  layer4.0.shortcut.1.num_batches_tracked\n" in message  # every key is listed, not a sample
    assert "mis-shaped keys (12):" in message
    assert "  layer2.0.bn1.weight: model expects (64,), checkpoint has (128,)" in message
    assert "architecture" in summary


def test_wrong_num_classes_names_the_misshaped_keys(tmp_path) -> None:
    torch.save({"net": build_model("small_cnn", num_classes=10, in_channels=1).state_dict()}, tmp_path / "c10.pt")
    with pytest.raises(CheckpointError) as info:
        load_weights(build_model("small_cnn", num_classes=100, in_channels=1), tmp_path / "c10.pt")
    message = info.value.details
    assert "mis-shaped keys (2):" in message
    assert "fc2.weight: model expects (100, 128), checkpoint has (10, 128)" in message
    assert "fc2.bias: model expects (100,), checkpoint has (10,)" in message
    assert "missing keys" not in message and "unexpected keys" not in message


# ------------------------------------------------------------------ unreadable and unsafe files


def test_missing_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.pt")


def test_truncated_file(tmp_path, cnn_pair) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(cnn_pair[0].state_dict(), whole)
    data = whole.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not be read.*truncated"):
        load_state_dict_file(tmp_path / "cut.pt")


@pytest.mark.parametrize("content", [os.urandom(4096), b""], ids=["random", "empty"])
def test_garbage_file(tmp_path, content: bytes) -> None:
    (tmp_path / "junk.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="could not be read"):
        load_state_dict_file(tmp_path / "junk.pt")


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ([1, 2, 3], "holds a list"),
        ({"epoch": 3, "acc": 0.9}, "holds a dict {'epoch': int"),
        ({}, "holds an empty dict"),
    ],
)
def test_non_state_dict_content(tmp_path, content: object, found: str) -> None:
    torch.save(content, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="expected a state dict") as info:
        load_state_dict_file(tmp_path / "odd.pt")
    assert found in str(info.value)


class _Payload:
    """Pickles to a call of os.system; pickling builds the call, only unpickling would run it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class _Custom:
    pass


def test_pickled_code_is_refused_and_never_run(tmp_path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"pickled Python object \((posix|os|nt)\.system\).*refuses"):
        load_weights(build_model("small_cnn", num_classes=10, in_channels=1), tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2))
    with pytest.raises(CheckpointError):
        load_state_dict_file(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_pickled_custom_class_is_refused(tmp_path) -> None:
    torch.save({"model": _Custom()}, tmp_path / "custom.pt")
    with pytest.raises(CheckpointError, match=r"_Custom\).*arbitrary code"):
        load_state_dict_file(tmp_path / "custom.pt")
    with pytest.raises(CheckpointError, match="arbitrary code"):
        read_checkpoint_meta(tmp_path / "custom.pt")


# ------------------------------------------------------------------ save / meta / hash


def test_save_checkpoint_round_trip(tmp_path, cnn_pair) -> None:
    source, x = cnn_pair
    path = tmp_path / "runs" / "ft.pt"
    meta = {"model": "small_cnn", "epoch": 4, "lr": 1e-3, "frozen_bn": True, "alphas": [0.0, 0.5], "extra": {"k": None}}
    save_checkpoint(path, source, **meta)
    assert read_checkpoint_meta(path) == meta
    assert [p.name for p in path.parent.iterdir()] == ["ft.pt"]  # no temp file left behind
    target = build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.3,), std=(0.35,))
    load_weights(target, path)
    torch.testing.assert_close(outputs(target, x), outputs(source, x), rtol=0, atol=0)


def test_meta_of_a_plain_state_dict_is_empty(tmp_path, cnn_pair) -> None:
    torch.save(cnn_pair[0].state_dict(), tmp_path / "plain.pt")
    assert read_checkpoint_meta(tmp_path / "plain.pt") == {}


@pytest.mark.parametrize("bad", [np.float64(0.5), torch.tensor(1.0), {"nested": [object()]}, {1: "x"}])
def test_unloadable_meta_is_refused_before_writing(tmp_path, cnn_pair, bad: object) -> None:
    path = tmp_path / "ft.pt"
    with pytest.raises(ValueError, match="checkpoint meta 'score'"):
        save_checkpoint(path, cnn_pair[0], score=bad)
    assert not path.exists()


def test_save_replaces_existing_file_atomically(tmp_path, cnn_pair) -> None:
    path = tmp_path / "ft.pt"
    save_checkpoint(path, cnn_pair[0], version=1)
    save_checkpoint(path, cnn_pair[0], version=2)
    assert read_checkpoint_meta(path) == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.pt"]
