"""PGD-10 throughput: rift_sweep.core.robustness.attacks.PGD against torchattacks.PGD on the same model and batch.

    .venv/bin/python bench/pgd.py [--repeats 3] [--device cpu|cuda] [--models resnet18 small_cnn] [--threads N]

Prints a markdown table of images/s (median of the repeats, after a warm-up) and the ratio
ours / torchattacks, then the machine. Settings: ℓ∞ eps 8/255, step 2/255, 10 steps, random start.
Each model runs contiguous and channels-last (the layout core.models.architectures.on_device puts every model in), with the
ratio of the two printed last; on CUDA also AMP, and AMP with channels_last (torchattacks then runs under the same
autocast).
The CPU run takes about 2–3 minutes on 2 cores, most of it in ResNet-18.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchattacks

from rift_sweep.core.models.architectures import build_model
from rift_sweep.core.robustness.attacks import PGD

EPS, STEP, STEPS = 8 / 255, 2 / 255, 10
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)


@dataclass(frozen=True)
class Case:
    model_name: str
    in_channels: int
    size: int
    batch: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


CASES = [
    Case("resnet18", 3, 32, 128, CIFAR_MEAN, CIFAR_STD),
    Case("small_cnn", 1, 28, 256, FMNIST_MEAN, FMNIST_STD),
]


def seconds_for(attack: Callable[[], torch.Tensor], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    attack()
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(case: Case, device: torch.device, amp: bool, channels_last: bool, repeats: int) -> tuple[float, float]:
    """(ours, torchattacks) images/s for one model and setting."""
    model = build_model(case.model_name, num_classes=10, in_channels=case.in_channels, mean=case.mean, std=case.std)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(case.batch, case.in_channels, case.size, case.size, generator=generator)
    x = x.to(device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (case.batch,), generator=generator).to(device)

    ours = PGD(eps=EPS, step_size=STEP, steps=STEPS)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=STEP, steps=STEPS, random_start=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def run_ours() -> torch.Tensor:
        return ours.perturb(model, x, y, generator=generator, amp=amp)

    def run_theirs() -> torch.Tensor:
        with autocast:
            return theirs(x, y)

    # Warm-up with one step: the same shapes (kernels, allocator) at a tenth of the cost.
    PGD(eps=EPS, step_size=STEP, steps=1).perturb(model, x, y, generator=generator, amp=amp)
    with autocast:
        torchattacks.PGD(model, eps=EPS, alpha=STEP, steps=1)(x, y)
    # Interleave the repeats so slow drift in the machine hits both sides alike.
    ours_seconds, their_seconds = [], []
    for _ in range(repeats):
        ours_seconds.append(seconds_for(run_ours, device))
        their_seconds.append(seconds_for(run_theirs, device))
    return case.batch / statistics.median(ours_seconds), case.batch / statistics.median(their_seconds)


def settings_for(device: torch.device) -> list[tuple[str, bool, bool]]:
    """(label, amp, channels_last) triples to time on this device."""
    both = [("fp32", False, False), ("fp32 + channels_last", False, True)]  # the layout the project runs in
    if device.type != "cuda":
        return both
    return [*both, ("AMP bf16", True, False), ("AMP bf16 + channels_last", True, True)]


def machine(device: torch.device) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    versions = f"torch {torch.__version__}, torchattacks {torchattacks.__version__}"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())  # other work on the machine skews the figures
    return f"CPU {cpu}, {versions}, threads {torch.get_num_threads()}{gpu}, load average {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per attack (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--models",
        nargs="+",
        default=[case.model_name for case in CASES],
        choices=[case.model_name for case in CASES],
        help="which models to time",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice); on a busy "
        "machine 1 thread avoids OpenMP threads waiting on each other",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print("| model | input | batch | device | setting | ours img/s | torchattacks img/s | ours / torchattacks |")
    print("|---|---|---|---|---|---|---|---|")
    ours_by = {}
    for case in (case for case in CASES if case.model_name in args.models):
        for label, amp, channels_last in settings_for(device):
            ours, theirs = time_case(case, device, amp, channels_last, args.repeats)
            ours_by[case.model_name, label] = ours
            shape = f"{case.in_channels}x{case.size}x{case.size}"
            print(
                f"| {case.model_name} | {shape} | {case.batch} | {device.type} | {label} "
                f"| {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |",
                flush=True,
            )
    for name in args.models:  # what core.models.architectures.on_device's channels-last layout buys our attack
        ratio = ours_by[name, "fp32 + channels_last"] / ours_by[name, "fp32"]
        print(f"\n{name}: ours channels_last / contiguous (fp32) = {ratio:.2f}")
    print(f"\nPGD-10, eps {EPS:.4f}, step {STEP:.4f}, random start. Machine: {machine(device)}")


if __name__ == "__main__":
    main()
