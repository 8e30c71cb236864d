"""The model zoo of RiFT.

Architectures keep the module names of the repositories that published robust checkpoints, so those
checkpoints load strictly and MRC module names match the paper (e.g. ``layer2.1.conv2``,
``block1.layer.3.conv2``):

- ``resnet18`` / ``resnet34``: CIFAR ResNet of kuangliu/pytorch-cifar (the RiFT reference code's copy);
  :func:`resnet50` (bottleneck blocks) is built by RobustBench entries only.
- ``preact_resnet18``: PreAct ResNet-18 of the robust-training repos (Rice et al. robust_overfitting,
  Bag-of-Tricks-for-AT), which add a final ``bn`` before the classifier; :class:`PreActResNet` also builds
  the variants without it (``final_bn=False``) and with raw-input projections (``project_activated=False``).
- ``wrn34_10``: WideResNet-34-10 of TRADES (also used by MART, AWP and the RiFT reference code).
- ``small_cnn``: a 3-conv network for 8x8 / 28x28 / 32x32 inputs that trains fast on a CPU.
- ``trades_cnn``: the 4-conv + 3-fc MNIST "SmallCNN" of TRADES (``feature_extractor.conv1`` ...
  ``classifier.fc3``), for 28x28 (and 32x32) inputs.

Every model takes images in [0, 1] and normalises them in its first submodule, ``normalize``, whose
mean/std buffers are non-persistent: state dicts hold exactly the architecture's own keys.

RobustBench's CIFAR entries (WideResNets at any size, DeepMind's Swish nets, ResNet/PreAct ResNet
variants) live in :mod:`rift_sweep.core.models.robustbench`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# Normalisation: the first layer of every model
# --------------------------------------------------------------------------------------------------


def _per_channel(values: Sequence[float], channels: int, what: str) -> Tensor:
    """Return `values` as a float tensor of length `channels`, broadcasting a single value."""
    values = [float(v) for v in values]
    if len(values) not in (1, channels):
        raise ValueError(
            f"normalisation {what} has {len(values)} values but the model has {channels} input channel(s): "
            f"give one value per channel or a single value for all"
        )
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"normalisation {what} must be finite numbers; got {values}")
    return torch.tensor(values * channels if len(values) == 1 else values, dtype=torch.float32)


class Normalize(nn.Module):
    """(x - mean) / std per channel, for x in [0, 1] of shape [B, C, H, W].

    The buffers are non-persistent so state dicts match the published checkpoints key for key; they
    still follow the model across `.to(device)`.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        super().__init__()
        mean_t = _per_channel(mean, channels, "mean")
        std_t = _per_channel(std, channels, "std")
        # Checked on the Python values so that models can be built on the "meta" device (shapes, no memory).
        if any(float(v) <= 0 for v in std):
            raise ValueError(f"normalisation std must be positive; got {[float(v) for v in std]}")
        self.register_buffer("mean", mean_t.view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, channels, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"model expects images [B, {self.mean.shape[1]}, H, W] in [0, 1]; got shape {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"

    def set(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Change the statistics in place (the layer keeps its place, device and hooks)."""
        other = Normalize(mean, std, self.mean.shape[1])
        with torch.no_grad():
            self.mean.copy_(other.mean)
            self.std.copy_(other.std)

    def pre_hook(self, module: nn.Module, args: tuple) -> tuple:
        """As a forward pre-hook: normalise another module's input (a user's model keeps its own keys)."""
        return (self(args[0]), *args[1:])


def _identity_normalize(channels: int) -> Normalize:
    """Placeholder normalisation; `build_model` swaps in the data set's statistics."""
    return Normalize((0.0,), (1.0,), channels)


# --------------------------------------------------------------------------------------------------
# ResNet-18 / 34 (kuangliu/pytorch-cifar layout)
# --------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Post-activation residual block: conv1, bn1, conv2, bn2, shortcut (1x1 conv + BN or identity)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """kuangliu bottleneck: 1x1 conv1/bn1, 3x3 conv2/bn2 (strided), 1x1 conv3/bn3 to 4x planes, shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _stage(
    block: type[BasicBlock | Bottleneck | PreActBlock],
    in_planes: int,
    planes: int,
    num_blocks: int,
    stride: int,
    **block_kwargs: bool,
) -> nn.Sequential:
    """One ResNet stage: the first block may downsample, the rest keep the resolution."""
    strides = [stride] + [1] * (num_blocks - 1)
    out_planes = planes * block.expansion
    return nn.Sequential(
        *[block(in_planes if i == 0 else out_planes, planes, s, **block_kwargs) for i, s in enumerate(strides)]
    )


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem with stride 1 and no max-pool, four stages (64-128-256-512), linear head.

    Global average pooling is adaptive, so 32x32 and 64x64 (Tiny-ImageNet) inputs both give 512 features
    (2048 with :class:`Bottleneck` blocks).
    """

    def __init__(
        self,
        num_blocks: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        *,
        block: type[BasicBlock | Bottleneck] = BasicBlock,
    ) -> None:
        super().__init__()
        e = block.expansion
        self.normalize = _identity_normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _stage(block, 64, 64, num_blocks[0], stride=1)
        self.layer2 = _stage(block, 64 * e, 128, num_blocks[1], stride=2)
        self.layer3 = _stage(block, 128 * e, 256, num_blocks[2], stride=2)
        self.layer4 = _stage(block, 256 * e, 512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * e, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# --------------------------------------------------------------------------------------------------
# PreAct ResNet-18 (robust_overfitting / Bag-of-Tricks layout)
# --------------------------------------------------------------------------------------------------


class PreActBlock(nn.Module):
    """Pre-activation block: bn1, conv1, bn2, conv2, shortcut (a 1x1 conv, present only when shapes change).

    The projection shortcut sees the pre-activated input; ``project_activated=False`` gives it the raw input
    instead, as RobustBench's ``PreActBlock`` does by default (Wong et al. 2020's fast-AT ResNet).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, project_activated: bool = True) -> None:
        super().__init__()
        self.project_activated = project_activated
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        # The identity always sees the raw input.
        shortcut = x if self.shortcut is None else self.shortcut(out if self.project_activated else x)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """PreAct ResNet with a final BN + ReLU before pooling (``bn``), as in the robust-training repos.

    ``final_bn=False`` drops that ``bn`` (kuangliu's and Wong et al.'s layout); ``project_activated`` goes to
    every :class:`PreActBlock`.
    """

    def __init__(
        self,
        num_blocks: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        *,
        final_bn: bool = True,
        project_activated: bool = True,
    ) -> None:
        super().__init__()
        block_kwargs = {"project_activated": project_activated}
        self.normalize = _identity_normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = _stage(PreActBlock, 64, 64, num_blocks[0], stride=1, **block_kwargs)
        self.layer2 = _stage(PreActBlock, 64, 128, num_blocks[1], stride=2, **block_kwargs)
        self.layer3 = _stage(PreActBlock, 128, 256, num_blocks[2], stride=2, **block_kwargs)
        self.layer4 = _stage(PreActBlock, 256, 512, num_blocks[3], stride=2, **block_kwargs)
        self.bn = nn.BatchNorm2d(512) if final_bn else None
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# --------------------------------------------------------------------------------------------------
# WideResNet (TRADES layout)
# --------------------------------------------------------------------------------------------------


class WideBasicBlock(nn.Module):
    """TRADES WRN block: bn1, relu1, conv1, bn2, relu2, conv2, and convShortcut when in != out planes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Conv2d | None = None  # noqa: N815 - name fixed by the published checkpoints
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        # TRADES: a widening block's shortcut projects the pre-activated input; otherwise identity on x.
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A WRN stage; its blocks live under ``.layer`` to match the checkpoint keys."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WideResNet-depth-widen_factor (Zagoruyko & Komodakis 2016) in the TRADES layout, dropout 0."""

    # TRADES defines `sub_block1` but never calls it; its weights ride along in published checkpoints.
    checkpoint_ignored_prefixes: tuple[str, ...] = ("sub_block1.",)

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 34, widen_factor: int = 10) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 28, 34); got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = _identity_normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks, widths[0], widths[1], stride=1)
        self.block2 = NetworkBlock(blocks, widths[1], widths[2], stride=2)
        self.block3 = NetworkBlock(blocks, widths[2], widths[3], stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_like_trades()

    def _init_like_trades(self) -> None:
        """He-normal conv (fan-out), unit BN, zero classifier bias: what the AT baselines trained from."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# --------------------------------------------------------------------------------------------------
# Small CNN for CPU tests and the demo
# --------------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """conv1-pool-conv2-pool-conv3 (32-64-128 channels, BN + ReLU), global average pool, fc1 (128), fc2.

    Pooling early keeps the 28x28 cost low (~2,700 images/s forward+backward at batch 128 on 2 CPU
    cores); global pooling lets the same weights run on 8x8, 28x28 and 32x32 inputs. Five Conv2d/Linear
    modules give MRC something to rank.
    """

    def __init__(self, num_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        self.normalize = _identity_normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.fc1 = nn.Linear(128, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(self.normalize(x)))), 2)
        out = F.max_pool2d(F.relu(self.bn2(self.conv2(out))), 2)
        out = F.relu(self.bn3(self.conv3(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc2(F.relu(self.fc1(out)))


class TradesCNN(nn.Module):
    """TRADES' MNIST "SmallCNN" (yaodongyu/TRADES ``models/small_cnn.py``), with its module names and init.

    ``feature_extractor``: conv1 (32), conv2 (32), maxpool1, conv3 (64), conv4 (64), maxpool2 -- 3x3 convs
    without padding or BN, ReLU after each; ``classifier``: fc1 (64*4*4 -> 200), dropout 0.5, fc2 (200), fc3.
    Seven Conv2d/Linear modules, four of them convolutions in the middle of the network.

    ``maxpool2`` pools adaptively to 4x4: on 28x28 inputs its 8x8 map pools exactly as TRADES' 2x2 max-pool (the
    same 64*4*4 features, so TRADES checkpoints load strictly), and 32x32 inputs (10x10 there) still give 64*4*4
    features with the same weights. Inputs must be at least 16x16.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, drop: float = 0.5) -> None:
        super().__init__()
        self.normalize = _identity_normalize(in_channels)
        self.feature_extractor = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 32, 3)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(32, 32, 3)),
                    ("relu2", nn.ReLU()),
                    ("maxpool1", nn.MaxPool2d(2, 2)),
                    ("conv3", nn.Conv2d(32, 64, 3)),
                    ("relu3", nn.ReLU()),
                    ("conv4", nn.Conv2d(64, 64, 3)),
                    ("relu4", nn.ReLU()),
                    ("maxpool2", nn.AdaptiveMaxPool2d(4)),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(64 * 4 * 4, 200)),
                    ("relu1", nn.ReLU()),
                    ("drop", nn.Dropout(drop)),
                    ("fc2", nn.Linear(200, 200)),
                    ("relu2", nn.ReLU()),
                    ("fc3", nn.Linear(200, num_classes)),
                ]
            )
        )
        # TRADES: He-normal convs (fan-in) with zero bias, PyTorch's default Linear init, a zero classifier.
        for module in self.feature_extractor:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.classifier.fc3.weight)
        nn.init.zeros_(self.classifier.fc3.bias)

    def forward(self, x: Tensor) -> Tensor:
        features = self.feature_extractor(self.normalize(x))
        return self.classifier(features.flatten(1))


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def resnet18(num_classes: int, in_channels: int = 3) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


def resnet34(num_classes: int, in_channels: int = 3) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes, in_channels)


def resnet50(num_classes: int, in_channels: int = 3) -> ResNet:
    """Bottleneck ResNet-50 in the kuangliu layout (RobustBench's Engstrom2019Robustness); not in MODELS."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels, block=Bottleneck)


def preact_resnet18(num_classes: int, in_channels: int = 3) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)


def wrn34_10(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(num_classes, in_channels, depth=34, widen_factor=10)


def small_cnn(num_classes: int, in_channels: int = 1) -> SmallCNN:
    return SmallCNN(num_classes, in_channels)


def trades_cnn(num_classes: int, in_channels: int = 1) -> TradesCNN:
    return TradesCNN(num_classes, in_channels)


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: `builder(num_classes, in_channels)` returns an un-normalised model."""

    name: str
    builder: Callable[..., nn.Module]
    description: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("resnet18", resnet18, "CIFAR ResNet-18 (kuangliu layout, 11.2M params, 21 weights); 32x32, 64x64"),
        ModelSpec("resnet34", resnet34, "CIFAR ResNet-34 (kuangliu layout, 21.3M params); 32x32 or 64x64"),
        ModelSpec("preact_resnet18", preact_resnet18, "PreAct ResNet-18, final bn (robust_overfitting layout); 32x32"),
        ModelSpec("wrn34_10", wrn34_10, "WideResNet-34-10 (TRADES layout, 46.2M params); 32x32"),
        ModelSpec("small_cnn", small_cnn, "3-conv CNN (5 Conv2d/Linear) for CPU runs; 8x8, 28x28, 32x32"),
        ModelSpec("trades_cnn", trades_cnn, "TRADES' MNIST SmallCNN: 4 conv + 3 fc (7 Conv2d/Linear); 28x28, 32x32"),
    )
}


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> nn.Module:
    """Build a registered model that normalises [0, 1] inputs with `mean`/`std` as its first step."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    for field, value, least in (("num_classes", num_classes, 2), ("in_channels", in_channels, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{field} must be an integer >= {least}; got {value!r}")
    normalize = Normalize(mean, std, in_channels)  # validates before the (possibly large) model is built
    model = MODELS[name].builder(num_classes, in_channels)
    model.normalize = normalize
    return model


def on_device(model: nn.Module, device: torch.device | str) -> nn.Module:
    """`model` moved to `device` with its 4-D weights channels-last (NHWC): oneDNN on CPUs and cuDNN's tensor-core
    kernels run convolutions fastest in that layout (bench/pgd.py: PGD 1.4x on the demo CNN, one CPU thread).
    Only the memory layout changes: state dicts, shapes and results are the same."""
    return model.to(device=device, memory_format=torch.channels_last)


@contextmanager
def only_trainable(model: nn.Module, *params: nn.Parameter) -> Iterator[None]:
    """Inside, only `params` require grad (none when empty); afterwards every flag is as found, on any exit.

    One home for "only this weight trains": MRC ascends one weight, fine-tuning trains one, attacks none.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    chosen = {id(p) for p in params}
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
