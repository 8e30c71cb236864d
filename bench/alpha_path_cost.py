"""What one trial's α path costs, three ways: PGD gradient evaluations (forward+backward per example and step),
wall time, and whether the answers moved.

    .venv/bin/python bench/alpha_path_cost.py [--config search_spaces/demo.yaml] [--set finetune.lr=0.01 ...]

last iterate (session 6): every α point, α = 0 included, attacked with PGD to the last iterate on all of validation.
early stop: α = 0 is the AT model, measured once per sweep; the other points count an example broken as soon as
    any PGD iterate breaks it and stop attacking it (`alpha.screen=1`: no screening).
screened (now, the default): early stop, and each point's robustness first on the `alpha.screen` fraction of
    validation; only points that can still matter get the rest (steps.alpha_path).
The fine-tune is the config's (the paper's by default). Printed: a markdown table per α point, the totals and their
ratios, the paper's rule's α and the validation front each way, and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import torch

from rift_sweep.config import load_config
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.robustness.attacks import AttackCost, image_batches
from rift_sweep.core.selection import pareto_mask
from rift_sweep.procedure.experiment import experiment_modules, load_experiment
from rift_sweep.procedure.paper import at_point
from rift_sweep.procedure.records import AlphaPoint, Examples
from rift_sweep.procedure.steps import alpha_by_rule, alpha_path, choose_modules, finetune, score_modules


def last_iterate_path(exp, best, cost: AttackCost) -> list[AlphaPoint]:
    """The session-6 α path: robust examples counted at PGD's last iterate, every example attacked every step."""
    config, val, path = exp.config, exp.splits.val, []
    for alpha in config.alpha.grid:
        model = exp.load_state(interpolate_state(exp.at_state, best, alpha))
        generator, clean, robust = torch.Generator().manual_seed(config.seed), [], []
        for x, y in image_batches(val.x, val.y, 256, "cpu"):
            adv = config.attack.perturb(model, x, y, generator=generator, cost=cost)
            with torch.no_grad():
                clean.append(model(x).argmax(1) == y)
                robust.append(model(adv).argmax(1) == y)
        examples = Examples(torch.cat(clean).numpy(), torch.cat(robust).numpy())
        path.append(AlphaPoint(alpha, examples.scores(), examples))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/demo.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. finetune.lr=0.01")
    args = parser.parse_args()
    config = load_config(args.config, assignments=["ood.enabled=false", *args.set])
    exp = load_experiment(config, "cpu")
    module = choose_modules(
        [r.module for r in score_modules(exp, experiment_modules(config, exp.model), progress=False)], config.modules
    )[0]
    best = finetune(exp, module, config.finetune).best_state
    at = at_point(exp)  # once per sweep: not a trial's cost
    unscreened = dataclasses.replace(
        exp, config=dataclasses.replace(config, alpha=dataclasses.replace(config.alpha, screen=1.0))
    )
    ways = {
        "last iterate": lambda cost: last_iterate_path(exp, best, cost),
        "early stop": lambda cost: alpha_path(unscreened, best, at, progress=False),
        "screened": lambda cost: alpha_path(exp, best, at, progress=False),
    }
    paths, costs, seconds = {}, {}, {}
    for name, run in ways.items():
        unscreened.attack_cost = exp.attack_cost = costs[name] = AttackCost()
        start = time.perf_counter()
        paths[name], seconds[name] = run(costs[name]), time.perf_counter() - start
    val = exp.splits.val
    print(
        f"config {args.config} {' '.join(args.set)}: {len(val)} validation images, screen {config.alpha.screen}, "
        f"α grid {list(config.alpha.grid)}, module {module}, PGD-{config.attack.steps} ε {config.attack.eps:.3f}\n"
    )
    print("| α | std % | " + " | ".join(f"rob % {name} [95 %] (images)" for name in ways) + " |")
    print("|---|---|" + "---|" * len(ways))
    for i, alpha in enumerate(config.alpha.grid):
        robs = [p[i].scores.rob for p in paths.values()]
        cells = [f"{r.value:.2f} [{r.low:.1f}, {r.high:.1f}] ({r.images})" for r in robs]
        print(f"| {alpha:.2f} | {paths['screened'][i].scores.std.value:.2f} | " + " | ".join(cells) + " |")
    base = costs["last iterate"].gradient_evals
    print("\n| per trial | " + " | ".join(ways) + " |\n|---|" + "---|" * len(ways))
    print("| PGD gradient evaluations | " + " | ".join(str(c.gradient_evals) for c in costs.values()) + " |")
    print("| ... / last iterate | " + " | ".join(f"{c.gradient_evals / base:.3f}" for c in costs.values()) + " |")
    print("| wall time of the α path (s) | " + " | ".join(f"{s:.1f}" for s in seconds.values()) + " |")
    for name, path in paths.items():
        chosen = alpha_by_rule(path, path[0], config.alpha)  # path[0]: α = 0, the AT model
        scores = [[p.scores.std.value, p.scores.rob.value] for p in path]
        front = [p.alpha for p, keep in zip(path, pareto_mask(scores)) if keep]
        print(f"{name}: the rule picks α = {chosen}; validation front at α = {front}")
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
