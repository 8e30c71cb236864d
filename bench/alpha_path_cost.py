"""What one trial's α path costs, before and after: PGD gradient evaluations (forward+backward per example and
step) and wall time, and whether the answers moved.

    .venv/bin/python bench/alpha_path_cost.py [--config search_spaces/demo.yaml]

Before: every α point, α = 0 included, attacked with PGD to the last iterate on the whole validation subset.
After: α = 0 is the AT model, measured once per sweep and reused; every other point counts an example broken as
soon as any PGD iterate breaks it and stops attacking it (AutoAttack's early stop). The fine-tune is the paper's
(the config's finetune section). Printed: a markdown table per α point (robust accuracy both ways with Wilson 95 %
intervals), the totals and their ratio, the paper's rule's α both ways, and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from rift_sweep.config import load_config
from rift_sweep.core.attacks import AttackCost, image_batches
from rift_sweep.core.evaluate import accuracy, robust_examples
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.selection import paper_rule, pareto_mask
from rift_sweep.core.statistics import wilson_interval
from rift_sweep.procedure.experiment import experiment_modules, load_experiment
from rift_sweep.procedure.steps import choose_modules, finetune, score_modules


def last_iterate_correct(model, split, pgd, cost: AttackCost, seed: int) -> int:
    """Robust examples counted at PGD's last iterate, every example attacked for every step (the old count)."""
    generator, correct = torch.Generator().manual_seed(seed), 0
    for x, y in image_batches(split.x, split.y, 256, "cpu"):
        adv = pgd.perturb(model, x, y, generator=generator, cost=cost)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == y).sum())
    return correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/demo.yaml")
    args = parser.parse_args()
    config = load_config(args.config)
    exp = load_experiment(config, "cpu")
    val, pgd, grid = exp.splits.val, config.attack, config.alpha.grid
    module = choose_modules(
        [r.module for r in score_modules(exp, experiment_modules(config, exp.model), progress=False)], config.modules
    )[0]
    best = finetune(exp, module, config.finetune).best_state
    rows, totals = [], {"old": AttackCost(), "new": AttackCost()}
    seconds = {"old": 0.0, "new": 0.0}
    for alpha in grid:
        model = exp.load_state(interpolate_state(exp.at_state, best, alpha))
        std = accuracy(model, val)
        start = time.perf_counter()
        old = last_iterate_correct(model, val, pgd, totals["old"], config.seed)
        seconds["old"] += time.perf_counter() - start
        start = time.perf_counter()
        # α = 0 is the AT model, measured once per sweep (its baseline), not per trial: its cost is not the trial's.
        cost = AttackCost() if alpha == 0.0 else totals["new"]
        new = int(robust_examples(model, val, pgd, seed=config.seed, cost=cost).sum())
        if alpha != 0.0:
            seconds["new"] += time.perf_counter() - start
        rows.append({"alpha": alpha, "std_acc": std, "old": 100 * old / len(val), "new": 100 * new / len(val)})
    per_trial_new = totals["new"].gradient_evals
    print(
        f"config {args.config}: {len(val)} validation images, α grid {list(grid)}, module {module}, "
        f"PGD-{pgd.steps} ε {pgd.eps:.3f}\n"
    )
    print("| α | std % | rob % last iterate (old) | 95 % | rob % early stop (new) | 95 % |\n|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = wilson_interval(round(r["old"] * len(val) / 100), len(val))
        nlo, nhi = wilson_interval(round(r["new"] * len(val) / 100), len(val))
        print(
            f"| {r['alpha']:.2f} | {r['std_acc']:.2f} | {r['old']:.2f} | {lo:.1f}–{hi:.1f} | {r['new']:.2f} | "
            f"{nlo:.1f}–{nhi:.1f} |"
        )
    old_evals = totals["old"].gradient_evals
    print("\n| per trial | old | new | new / old |\n|---|---|---|---|")
    print(f"| PGD gradient evaluations | {old_evals} | {per_trial_new} | {per_trial_new / old_evals:.3f} |")
    print(
        f"| wall time of the α path (s) | {seconds['old']:.1f} | {seconds['new']:.1f} | "
        f"{seconds['new'] / seconds['old']:.3f} |"
    )
    at = rows[0] if grid[0] == 0.0 else None
    for kind in ("old", "new"):
        path = [{"alpha": r["alpha"], "std_acc": r["std_acc"], "rob_acc": r[kind]} for r in rows]
        chosen = paper_rule(path, at_rob_acc=at[kind], tolerance=config.alpha.tolerance) if at else None
        front = [r["alpha"] for r, keep in zip(rows, pareto_mask([[r["std_acc"], r[kind]] for r in rows])) if keep]
        print(f"{kind}: the rule picks α = {chosen['alpha'] if chosen else None}; validation front at α = {front}")
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
