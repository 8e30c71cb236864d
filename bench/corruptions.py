"""How fast the corrupted (-C style) set is generated on this machine.

Times every corruption at every severity on a batch of real-looking 32x32 colour images (scikit-learn
digits, upscaled and tinted), prints images/s per corruption, and the estimated time to generate the
workload the OOD evaluation needs: --images images x 10 corruptions x 5 severities (and x all 14).
With --end-to-end N it also runs the real cached generator (hashing, corrupting, writing .npy) on N
images and prints its throughput.

    .venv/bin/python bench/corruptions.py [--images 10000] [--size 32] [--end-to-end 2000] [--threads K]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from rift_sweep.core.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt, generate_c
from rift_sweep.core.data.datasets import Split


def sample_images(n: int, size: int) -> torch.Tensor:
    digits = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16
    strokes = F.interpolate(digits[torch.arange(n) % len(digits)], size=(size, size), mode="bilinear").clamp(0, 1)
    generator = torch.Generator().manual_seed(0)
    ink = 0.4 + 0.6 * torch.rand(n, 3, 1, 1, generator=generator)
    paper = 0.4 * torch.rand(n, 3, 1, 1, generator=generator)
    return paper * (1 - strokes) + ink * strokes


def seconds_per_image(x: torch.Tensor, name: str) -> float:
    """Summed over the five severities: the cost of one image's five corrupted copies."""
    corrupt(x[:8], name, 1, torch.Generator().manual_seed(0))  # warm-up (caches, lazy init)
    start = time.perf_counter()
    for severity in SEVERITIES:
        corrupt(x, name, severity, torch.Generator().manual_seed(severity))
    return (time.perf_counter() - start) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images in the workload estimate")
    parser.add_argument("--batch", type=int, default=2000, help="images timed per corruption and severity")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--end-to-end", type=int, default=2000, help="images for the real generator run (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.batch} images of "
        f"3x{args.size}x{args.size} per corruption and severity"
    )

    x = sample_images(args.batch, args.size)
    cost = {}
    for name in CORRUPTIONS:
        cost[name] = seconds_per_image(x, name)
        print(f"  {name:18s} {len(SEVERITIES) / cost[name]:9.0f} images/s (mean over severities 1-5)")

    per_corruption = sum(cost.values()) / len(cost)
    ten = args.images * 10 * per_corruption
    every = args.images * sum(cost.values())
    print(
        f"estimate: {args.images} images x 10 corruptions x 5 severities = {ten:.0f} s ({ten / 60:.1f} min), "
        f"{args.images * 50 / ten:.0f} corrupted images/s"
    )
    print(
        f"estimate: {args.images} images x all {len(cost)} corruptions x 5 severities = {every:.0f} s "
        f"({every / 60:.1f} min)"
    )

    if args.end_to_end:
        split = Split(
            (sample_images(args.end_to_end, args.size) * 255).round().to(torch.uint8),
            torch.zeros(args.end_to_end, dtype=torch.int64),
        )
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            generate_c(split, cache, dataset="bench", corruptions=list(CORRUPTIONS))
            elapsed = time.perf_counter() - start
        made = args.end_to_end * len(CORRUPTIONS) * len(SEVERITIES)
        print(
            f"end to end (generate_c, {args.end_to_end} images x {len(CORRUPTIONS)} corruptions x 5 severities, "
            f"written as .npy): {elapsed:.1f} s, {made / elapsed:.0f} corrupted images/s"
        )


if __name__ == "__main__":
    main()
