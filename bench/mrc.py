"""Seconds of MRC per module and in total, single process: the demo model and CIFAR ResNet-18.

    python bench/mrc.py [--resnet-batches 2] [--resnet-epochs 1]

The demo model is scored as the demo does (its AT checkpoint, 1000 PGD-10 validation examples, 10 epochs,
paper variant). No CIFAR data or robust ResNet-18 ships offline, so ResNet-18 (random init) is timed on a few
batches of random 3x32x32 images with the reference variant (every epoch runs: the cost does not depend on
when the projection triggers). Prints a markdown table and the machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from rift_sweep.config import load_config
from rift_sweep.core.models.architectures import build_model
from rift_sweep.core.mrc import MRCSettings, candidate_modules, module_robust_criticality
from rift_sweep.core.robustness.attacks import AdversarialSet
from rift_sweep.procedure.experiment import load_experiment


def time_modules(model, adversarial, settings, device) -> list[tuple[str, float, int]]:
    rows = []
    for name in candidate_modules(model):
        r = module_robust_criticality(model, name, adversarial, settings, device=device)
        rows.append((name, r.seconds, r.epochs_run))
    return rows


def machine() -> str:
    cpu = next(
        (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor()
    )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}; {gpu}; torch {torch.__version__}; {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet-batches", type=int, default=2)
    parser.add_argument("--resnet-epochs", type=int, default=1)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    exp = load_experiment(load_config("search_spaces/demo.yaml"))
    start = time.perf_counter()
    adversarial = exp.adversarial_val
    build = time.perf_counter() - start
    demo = time_modules(exp.load_state(exp.at_state), adversarial, exp.config.mrc, exp.device)

    torch.manual_seed(0)
    resnet = build_model("resnet18", num_classes=10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26)).to(device).eval()
    n = 128 * args.resnet_batches
    images = AdversarialSet(torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    settings = MRCSettings(epochs=args.resnet_epochs, batch_size=128, variant="reference")
    cifar = time_modules(resnet, images, settings, device)

    print(f"machine: {machine()}\n")
    print(f"demo small_cnn: adversarial set of {len(adversarial)} built once in {build:.1f} s\n")
    for title, rows in (
        (f"demo small_cnn ({len(adversarial)} examples, {exp.config.mrc.epochs} epochs, paper)", demo),
        (f"CIFAR ResNet-18 ({n} images, {args.resnet_epochs} epoch(s), reference)", cifar),
    ):
        print(f"### {title}\n\n| module | seconds | epochs run |\n|---|---|---|")
        for name, seconds, epochs in rows:
            print(f"| {name} | {seconds:.2f} | {epochs} |")
        print(f"| **total** | **{sum(r[1] for r in rows):.1f}** | |\n")


if __name__ == "__main__":
    main()
