"""What AutoAttack (standard) costs against PGD-10 worst-of-3, and how much lower it counts, on a config's AT model.

    .venv/bin/python bench/autoattack.py [--config search_spaces/demo.yaml] [--images 200] [--threads 1]

Both on the first `--images` test images; prints clean, PGD and AutoAttack accuracy, seconds, and how many
examples survived AutoAttack but not PGD (should be 0: AutoAttack is the stronger attack).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from rift_sweep.config import load_config
from rift_sweep.core.data.datasets import Split
from rift_sweep.core.robustness.autoattack import autoattack_examples
from rift_sweep.core.robustness.evaluate import evaluate_examples
from rift_sweep.procedure.experiment import load_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/demo.yaml")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, assignments=["ood.enabled=false", "device=cpu"])
    exp = load_experiment(config)
    model = exp.load_state(exp.at_state)
    images = Split(exp.splits.test.x[: args.images], exp.splits.test.y[: args.images])
    start = time.perf_counter()
    pgd = evaluate_examples(model, images, pgd=config.attack, runs=config.attack.test_runs, seed=config.seed)
    pgd_s, start = time.perf_counter() - start, time.perf_counter()
    aa = autoattack_examples(model, images, eps=config.attack.eps, seed=config.seed)
    aa_s = time.perf_counter() - start
    print(
        f"{len(images)} images: clean {100 * pgd.clean.mean():.1f}  PGD-{config.attack.steps} worst-of-"
        f"{config.attack.test_runs} {100 * pgd.robust.mean():.1f} ({pgd_s:.1f} s)  AutoAttack {100 * aa.mean():.1f} "
        f"({aa_s:.1f} s, {aa_s / len(images):.2f} s/image)  robust under AutoAttack but not PGD: "
        f"{int((aa & ~pgd.robust).sum())}; {args.threads} threads, load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
