"""What AutoAttack (standard) costs against PGD-10 worst-of-3, and how much lower it counts, on a config's AT model.

    .venv/bin/python bench/autoattack.py [--config search_spaces/demo.yaml] [--images 200] [--aa-images N]
                                         [--threads 1]

Clean and PGD on the first `--images` test images, AutoAttack on the first `--aa-images` of them (default: all;
AutoAttack costs seconds per image on a CPU core); prints each accuracy with its Wilson 95 % interval, seconds, and
how many examples survived AutoAttack but not PGD (should be 0: AutoAttack is the stronger attack).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from rift_sweep.config import load_config
from rift_sweep.core.data.datasets import Split
from rift_sweep.core.robustness.autoattack import autoattack_examples
from rift_sweep.core.robustness.evaluate import evaluate_examples
from rift_sweep.core.robustness.statistics import wilson_interval
from rift_sweep.procedure.experiment import load_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/demo.yaml")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--aa-images", type=int, help="AutoAttack on the first N of --images (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, assignments=["ood.enabled=false", "device=cpu", "data.test_subset=null"])
    exp = load_experiment(config)
    model = exp.load_state(exp.at_state)
    images = Split(exp.splits.test.x[: args.images], exp.splits.test.y[: args.images])
    start = time.perf_counter()
    pgd = evaluate_examples(model, images, pgd=config.attack, runs=config.attack.test_runs, seed=config.seed)
    pgd_s, start = time.perf_counter() - start, time.perf_counter()
    n_aa = min(args.aa_images or len(images), len(images))
    aa = autoattack_examples(model, Split(images.x[:n_aa], images.y[:n_aa]), eps=config.attack.eps, seed=config.seed)
    aa_s = time.perf_counter() - start
    print(
        f"{len(images)} images: clean {_with_interval(pgd.clean)}  PGD-{config.attack.steps} worst-of-"
        f"{config.attack.test_runs} {_with_interval(pgd.robust)} ({pgd_s:.1f} s)\n"
        f"first {n_aa} images: PGD {_with_interval(pgd.robust[:n_aa])}  AutoAttack {_with_interval(aa)} "
        f"({aa_s:.1f} s, {aa_s / n_aa:.2f} s/image)  robust under AutoAttack but not PGD: "
        f"{int((aa & ~pgd.robust[:n_aa]).sum())}; {args.threads} threads, load average {os.getloadavg()[0]:.1f}"
    )


def _with_interval(correct: np.ndarray) -> str:
    low, high = wilson_interval(int(correct.sum()), len(correct))
    return f"{100 * correct.mean():.2f} % [{low:.2f}, {high:.2f}]"


if __name__ == "__main__":
    main()
