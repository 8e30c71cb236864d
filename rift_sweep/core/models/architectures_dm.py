"""DeepMind's robust-training architectures (Gowal et al. 2020, Rebuffi et al. 2021) in RobustBench's layout.

Module names follow deepmind-research/adversarial_robustness as RobustBench packages it
(``init_conv``, ``layer.0.block.3.conv_0``, ``batchnorm``, ``logits`` / ``conv_2d``, ``layer_2.1.conv_2d_1``),
so its checkpoints load strictly. Three things differ from the TRADES WideResNet and must be kept:

- convolutions that may stride pad like TensorFlow's ``SAME`` (pad 1 all round at stride 1, only right and
  bottom at stride 2) instead of PyTorch's symmetric padding, which would shift every strided feature map;
- the activation is Swish (x * sigmoid(x), RobustBench's ``Swish`` or ``nn.SiLU``, the same function);
- the input normalisation lives in the class; RobustBench keeps it in non-persistent ``mean``/``std`` buffers,
  so checkpoints hold no normalisation keys. Here it is the usual first submodule, ``normalize``.

RobustBench's optional input ``padding`` is 0 in every CIFAR entry and is not ported.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from rift_sweep.core.models.architectures import Normalize


def _same_pad(x: Tensor, stride: int) -> Tensor:
    """Zero-pad for a 3x3 kernel as TensorFlow's SAME does: the trained weights expect exactly this alignment."""
    if stride == 1:
        return F.pad(x, (1, 1, 1, 1))
    if stride == 2:
        return F.pad(x, (0, 1, 0, 1))
    raise ValueError(f"DeepMind blocks stride by 1 or 2; got {stride}")


class DMWideBlock(nn.Module):
    """batchnorm_0, relu_0, conv_0 (SAME-padded), batchnorm_1, relu_1, conv_1, and a 1x1 ``shortcut`` when widening."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = nn.SiLU()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = nn.SiLU()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(_same_pad(activated, self.stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        # As in TRADES: a widening block projects the pre-activated input; otherwise identity on the raw input.
        return (x if self.shortcut is None else self.shortcut(activated)) + out


class DMBlockGroup(nn.Module):
    """One WideResNet stage; its blocks live under ``.block`` to match the checkpoint keys."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *[
                DMWideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """DeepMind's Swish WideResNet-depth-width (RobustBench ``DMWideResNet(activation_fn=Swish)``)."""

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 28, width: int = 10) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"DMWideResNet depth must be 6n + 4 with n >= 1 (e.g. 28, 70); got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.normalize = Normalize((0.0,), (1.0,), in_channels)
        self.init_conv = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            DMBlockGroup(blocks, widths[0], widths[1], stride=1),
            DMBlockGroup(blocks, widths[1], widths[2], stride=2),
            DMBlockGroup(blocks, widths[2], widths[3], stride=2),
        )
        self.batchnorm = nn.BatchNorm2d(widths[3])
        self.relu = nn.SiLU()
        self.logits = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer(self.init_conv(self.normalize(x)))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


class DMPreActBlock(nn.Module):
    """batchnorm_0, relu_0, conv_2d_1 (SAME-padded), batchnorm_1, relu_1, conv_2d_2, and a ``shortcut`` when the
    shape changes: a SAME-padded 3x3 conv (not 1x1) on the raw, not the pre-activated, input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = nn.SiLU()
        self.conv_2d_1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = nn.SiLU()
        self.conv_2d_2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_2d_1(_same_pad(self.relu_0(self.batchnorm_0(x)), self.stride))
        out = self.conv_2d_2(self.relu_1(self.batchnorm_1(out)))
        return out + (x if self.shortcut is None else self.shortcut(_same_pad(x, self.stride)))


class DMPreActResNet(nn.Module):
    """DeepMind's Swish PreAct ResNet-18/34 (RobustBench ``DMPreActResNet(activation_fn=Swish)``)."""

    STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 18) -> None:
        super().__init__()
        if depth not in self.STAGES:
            raise ValueError(f"DMPreActResNet depth must be one of {sorted(self.STAGES)}; got {depth}")
        stages = self.STAGES[depth]
        self.normalize = Normalize((0.0,), (1.0,), in_channels)
        self.conv_2d = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer_0 = self._stage(64, 64, stages[0], stride=1)
        self.layer_1 = self._stage(64, 128, stages[1], stride=2)
        self.layer_2 = self._stage(128, 256, stages[2], stride=2)
        self.layer_3 = self._stage(256, 512, stages[3], stride=2)
        self.batchnorm = nn.BatchNorm2d(512)
        self.relu = nn.SiLU()
        self.logits = nn.Linear(512, num_classes)

    @staticmethod
    def _stage(in_planes: int, out_planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            *[
                DMPreActBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_2d(self.normalize(x))
        out = self.layer_3(self.layer_2(self.layer_1(self.layer_0(out))))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))
