"""What early stopping saves: PGD-10 robust accuracy counted at the last iterate (old) vs AutoAttack's early stop (new).

    .venv/bin/python bench/pgd_passes.py [--examples 1000] [--epochs 3] [--repeats 3] [--threads N]

Trains the project's small_cnn for a few epochs on real Fashion-MNIST (/usr/share/datasets/fashion-mnist), or
on scikit-learn's digits when that is not installed, then attacks the first N test images both ways from the
same seed and prints a markdown table: gradient evaluations (forward+backward per example and step), forward-only
passes, wall time (median of the repeats, interleaved), robust accuracy with its Wilson 95 % interval, and
new / old ratios; then McNemar on the examples the two counts disagree on, and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rift_sweep.core.data.datasets import DataSplits, Split, iterate_batches, load_splits
from rift_sweep.core.models.architectures import build_model
from rift_sweep.core.robustness.attacks import PGD, AttackCost, image_batches
from rift_sweep.core.robustness.evaluate import accuracy, robust_examples
from rift_sweep.core.robustness.statistics import mcnemar, wilson_interval

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
EPS, STEP, STEPS, BATCH = 8 / 255, 2 / 255, 10, 250


def load_data(examples: int) -> tuple[str, DataSplits]:
    if FASHION_MNIST.exists():
        return "fashion-mnist", load_splits("fashion-mnist", FASHION_MNIST, train_subset=10_000, test_subset=examples)
    return "digits", load_splits("digits", val_size=0.1)


def train(splits: DataSplits, epochs: int) -> nn.Module:
    """Plain (not adversarial) Adam training: accurate clean, easily broken, as a fine-tuned model can be."""
    torch.manual_seed(0)
    info = splits.info
    model = build_model(
        "small_cnn", num_classes=info.num_classes, in_channels=info.image_shape[0], mean=info.mean, std=info.std
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for x, y in iterate_batches(splits.train, 64, shuffle=True, generator=generator):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


def last_iterate(model: nn.Module, split: Split, pgd: PGD, cost: AttackCost) -> Tensor:
    """The old count: attack every example for all steps, then judge only the last iterate (one fp32 forward)."""
    generator = torch.Generator().manual_seed(0)
    survived = []
    for x, y in image_batches(split.x, split.y, BATCH, "cpu"):
        adv = pgd.perturb(model, x, y, generator=generator, cost=cost)
        with torch.no_grad():
            survived.append(model(adv).argmax(dim=1) == y)
        cost.forward_evals += len(y)
    return torch.cat(survived)


def early_stop(model: nn.Module, split: Split, pgd: PGD, cost: AttackCost) -> Tensor:
    """The new count (what evaluate.robust_accuracy reports), from the same seed."""
    return robust_examples(model, split, pgd, batch_size=BATCH, seed=0, cost=cost)


def measure(count: Callable[..., Tensor], model: nn.Module, split: Split, pgd: PGD) -> tuple[Tensor, AttackCost, float]:
    cost = AttackCost()
    start = time.perf_counter()
    robust = count(model, split, pgd, cost)
    return robust, cost, time.perf_counter() - start


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())  # other work on the machine skews the times
    return f"CPU {cpu}, torch {torch.__version__}, threads {torch.get_num_threads()}, load average {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="test images attacked")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the small CNN")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per count (median reported)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    name, splits = load_data(args.examples)
    model = train(splits, args.epochs)
    test = Split(splits.test.x[: args.examples], splits.test.y[: args.examples])
    pgd = PGD(eps=EPS, step_size=STEP, steps=STEPS)
    counts = {"last iterate (old)": last_iterate, "early stop (new)": early_stop}
    runs = {label: [] for label in counts}
    for _ in range(args.repeats):  # interleaved, so slow drift in the machine hits both counts alike
        for label, count in counts.items():
            runs[label].append(measure(count, model, test, pgd))
    results = {label: (done[0][0], done[0][1], statistics.median(r[2] for r in done)) for label, done in runs.items()}

    print("| count | gradient evals | forward evals | wall s | robust acc % | Wilson 95 % |")
    print("|---|---|---|---|---|---|")
    for label, (robust, cost, seconds) in results.items():
        correct = int(robust.sum())
        low, high = wilson_interval(correct, len(robust))
        print(
            f"| {label} | {cost.gradient_evals} | {cost.forward_evals} | {seconds:.2f} "
            f"| {100 * correct / len(robust):.1f} | {low:.1f}–{high:.1f} |"
        )
    (old, old_cost, old_s), (new, new_cost, new_s) = results.values()
    print(
        f"| new / old | {new_cost.gradient_evals / old_cost.gradient_evals:.3f} "
        f"| {new_cost.forward_evals / old_cost.forward_evals:.3f} | {new_s / old_s:.3f} | | |"
    )

    b01, b10, p_value = mcnemar(old.numpy(), new.numpy())
    print(
        f"\n{name}, small_cnn trained {args.epochs} epochs, clean accuracy {accuracy(model, test):.1f}% on "
        f"{len(test)} test images. PGD-{STEPS}, eps {EPS:.4f}, step {STEP:.4f}, random start, batch {BATCH}."
    )
    print(f"Broken only by early stop: {b10}; only at the last iterate: {b01} (McNemar exact p = {p_value:.3g}).")
    print(f"Machine: {machine()}")


if __name__ == "__main__":
    main()
