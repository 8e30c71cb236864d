"""Per-image cost of candidate architectures for the demo's AT checkpoint (issue 18, item 1), one torch thread.

    OMP_NUM_THREADS=1 .venv/bin/python bench/at_arch.py [--repeats 5] [--batch 128]

For each model on 1x28x28 (Fashion-MNIST), channels-last as `on_device` puts it, batch 128, after a warm-up, images/s of (rounds interleave the models; each cell is the fastest round):

- fwd+bwd: one training step's forward + backward (train mode, every parameter's gradient);
- PGD-10: `PGD(eps=0.1, step_size=0.025, steps=10).perturb` (the demo's attack; parameters frozen, eval mode);
- AT step: PGD-10 + one SGD step, i.e. what `rift-sweep train-at` spends per training image.

`small_cnn` and `trades_cnn` are the registered models; the `*_proto` rows are variants built here only.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from rift_sweep.core.models.architectures import _identity_normalize, build_model, on_device
from rift_sweep.core.robustness.attacks import PGD

MEAN, STD = (0.2860,), (0.3530,)


class WideSmallCNN(nn.Module):
    """small_cnn with channels (c1, c2, c3) and fc1 width c3: the 'wider version of today's'."""

    def __init__(self, num_classes: int, in_channels: int, widths: tuple[int, int, int]) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.normalize = _identity_normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.fc1 = nn.Linear(c3, c3)
        self.fc2 = nn.Linear(c3, num_classes)

    def forward(self, x):
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(self.normalize(x)))), 2)
        out = F.max_pool2d(F.relu(self.bn2(self.conv2(out))), 2)
        out = F.relu(self.bn3(self.conv3(out)))
        return self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(out, 1).flatten(1))))


class TradesCNNBN(nn.Module):
    """trades_cnn with BatchNorm after each conv (bias-free convs)."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.normalize = _identity_normalize(in_channels)
        chans = [(in_channels, 32), (32, 32), (32, 64), (64, 64)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, bias=False) for i, o in chans)
        self.bns = nn.ModuleList(nn.BatchNorm2d(o) for _, o in chans)
        self.fc1, self.fc2, self.fc3 = nn.Linear(1024, 200), nn.Linear(200, 200), nn.Linear(200, num_classes)

    def forward(self, x):
        out = self.normalize(x)
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            out = F.relu(bn(conv(out)))
            if i in (1, 3):
                out = F.max_pool2d(out, 2)
        out = F.dropout(F.relu(self.fc1(out.flatten(1))), 0.5, self.training)
        return self.fc3(F.relu(self.fc2(out)))


def _with_norm(model: nn.Module) -> nn.Module:
    model.normalize.set(MEAN, STD)
    return model


MODELS: dict[str, Callable[[], nn.Module]] = {
    "small_cnn": lambda: build_model("small_cnn", num_classes=10, in_channels=1, mean=MEAN, std=STD),
    "trades_cnn": lambda: build_model("trades_cnn", num_classes=10, in_channels=1, mean=MEAN, std=STD),
    "trades_cnn_bn_proto": lambda: _with_norm(TradesCNNBN(10, 1)),
    "small_cnn_x1.5_proto": lambda: _with_norm(WideSmallCNN(10, 1, (48, 96, 192))),
    "small_cnn_x2_proto": lambda: _with_norm(WideSmallCNN(10, 1, (64, 128, 256))),
}


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per image (Conv2d and Linear only)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output[0].numel() * k
        else:
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x[:1])
    for h in handles:
        h.remove()
    return total


def best_seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    attack = PGD(eps=0.1, step_size=0.025, steps=10)
    benches = {}
    for name in args.models:
        model = on_device(MODELS[name](), "cpu")
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(0)

        def fwd_bwd(model=model, opt=opt):
            model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()

        def pgd(model=model, gen=gen):
            return attack.perturb(model, x, y, generator=gen)

        def at_step(model=model, opt=opt, gen=gen):
            x_adv = attack.perturb(model, x, y, generator=gen)
            model.train()
            loss = F.cross_entropy(model(x_adv), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        benches[name] = (model, {"fwd+bwd": fwd_bwd, "PGD-10": pgd, "AT step": at_step})
        for fn in benches[name][1].values():
            fn()  # warm-up
    # Rounds interleave the models, and each cell keeps its fastest round: other processes on the machine only
    # ever slow a round down, so the minimum is the least disturbed reading.
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeats):
        for name, (_, fns) in benches.items():
            for what, fn in fns.items():
                seconds = best_seconds(fn)
                best[name, what] = min(best.get((name, what), seconds), seconds)
    print("| model | params | MMACs/img | fwd+bwd img/s | PGD-10 img/s | AT step img/s | fwd+bwd time vs first |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    first = args.models[0]
    for name, (model, _) in benches.items():
        rates = [args.batch / best[name, what] for what in ("fwd+bwd", "PGD-10", "AT step")]
        params = sum(p.numel() for p in model.parameters())
        ratio = best[name, "fwd+bwd"] / best[first, "fwd+bwd"]
        print(
            f"| {name} | {params / 1e3:.0f}k | {macs(model, x) / 1e6:.2f} | {rates[0]:.0f} | {rates[1]:.0f} "
            f"| {rates[2]:.0f} | {ratio:.2f}x |"
        )
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
