"""Does the sweep beat the paper's procedure on held-out data, and which sampler should it use?

    .venv/bin/python bench/sweep.py [--seeds 0 1 2] [--samplers tpe gp nsga2] [--multiples 1 2 4] [--no-test]
                                    [--val 5000] [--test 10000] [--out bench/sweep_runs.json]

For each sampler and seed, the sweep's search runs in-process — the same Optuna sampler and multi-objective
study as `rift-sweep sweep`, the paper's point (finetune.lr, finetune.epochs) queued first, every fine-tune's
whole α path told to the study — until its fine-tuning epochs reach the largest budget (multiples of the paper's
finetune.epochs). Only Ray's concurrency is left out (trials run one after another), so the sampler sees each
result before its next suggestion.

For each budget (the fine-tunes that fit, in the order they ran) and for the paper's procedure alone:
(a) the model the paper's rule picks on VALIDATION (largest std_acc with rob_acc >= AT - tolerance, over every α
point evaluated), then evaluated on the TEST split (PGD worst-of-attack.test_runs); (b) every model on the
validation front, evaluated on test, and the test hypervolume of those points. Intervals: Wilson 95 % for each
accuracy; for sweep pick minus paper pick, a paired bootstrap 95 % interval on the same test images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from rift_sweep.config import load_config
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.robustness.evaluate import evaluate_examples
from rift_sweep.core.robustness.statistics import bootstrap_interval, wilson_interval
from rift_sweep.core.selection import hypervolume_2d, paper_rule, pareto_mask
from rift_sweep.orchestration.searcher import make_sampler, paper_point, search_space
from rift_sweep.procedure.experiment import experiment_modules, load_experiment
from rift_sweep.procedure.paper import at_point
from rift_sweep.procedure.records import AlphaPoint
from rift_sweep.procedure.steps import alpha_path, choose_modules, finetune, score_modules

FINETUNES: dict = {}  # (seed, lr, epochs) -> (state, α path): the same fine-tune is never run twice, as in the sweep


def run_search(exp, module: str, sampler: str, seed: int, max_epochs: int, at_val: AlphaPoint) -> list[dict]:
    """Fine-tunes in the order the sampler asked for them, until the epochs reach `max_epochs`."""
    config = dataclasses.replace(exp.config, search=dataclasses.replace(exp.config.search, sampler=sampler, seed=seed))
    space = search_space(config, [module])
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=make_sampler(config))
    study.enqueue_trial(paper_point(config, [module]))
    done, spent = [], 0
    while True:
        trial = study.ask(space)
        lr, epochs = trial.params.get("lr", config.finetune.lr), trial.params.get("epochs", config.finetune.epochs)
        if spent + epochs > max_epochs:
            break
        start = time.perf_counter()
        if (config.seed, lr, epochs) not in FINETUNES:
            settings = dataclasses.replace(config.finetune, lr=float(lr), epochs=int(epochs))
            best = finetune(exp, module, settings).best_state
            FINETUNES[config.seed, lr, epochs] = best, alpha_path(exp, best, at_val, progress=False)
        best, path = FINETUNES[config.seed, lr, epochs]
        own = min(path, key=lambda p: abs(p.alpha - trial.params.get("alpha", 0.0)))
        study.tell(trial, [own.scores.std.value, own.scores.rob.value])
        for point in path:  # the rest of the path: already evaluated points, as the sweep's searcher adds them
            if point is not own and "alpha" in space:
                params = {**trial.params, "alpha": point.alpha}
                values = [point.scores.std.value, point.scores.rob.value]
                study.add_trial(optuna.trial.create_trial(params=params, distributions=space, values=values))
        spent += epochs
        done.append(
            {
                "lr": float(lr),
                "epochs": int(epochs),
                "path": path,
                "state": best,
                "seconds": time.perf_counter() - start,
            }
        )
    return done


def choices(finetunes: list[dict], at_val: AlphaPoint, tolerance: float) -> tuple[tuple, list[tuple]]:
    """(the rule's pick, the validation front) over every α point, each as (fine-tune index, α)."""
    points = [(i, p) for i, ft in enumerate(finetunes) for p in ft["path"]]
    scores = [(p.scores.std.value, p.scores.rob.value, p.alpha) for _, p in points]
    pick = paper_rule(scores, at_val.scores.rob.value, tolerance)
    mask = pareto_mask([s[:2] for s in scores])
    front = sorted({(i, p.alpha) for (i, p), keep in zip(points, mask) if keep})
    return ((points[pick][0], points[pick][1].alpha) if pick is not None else None), front


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/demo.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["tpe", "gp", "nsga2"])
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--val", type=int, default=5000)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--test-runs", type=int, help="PGD runs on test, worst of (default: attack.test_runs)")
    parser.add_argument("--out", type=Path, default=Path("bench/sweep_runs.json"))
    parser.add_argument(
        "--no-test", action="store_true", help="validation only: compare the samplers' searches, not held-out picks"
    )
    args = parser.parse_args()
    config = load_config(
        args.config,
        assignments=[f"data.val_subset={args.val}", f"data.test_subset={args.test}", "ood.enabled=false", "device=cpu"],
    )
    exp = load_experiment(config)
    at_val = at_point(exp)
    module = choose_modules(
        [r.module for r in score_modules(exp, experiment_modules(config, exp.model), progress=False)], config.modules
    )[0]
    test_cache: dict = {}

    def on_test(finetunes, choice) -> dict:
        """Per-example test correctness of a (fine-tune, α) model (None: the AT model), computed once."""
        index, alpha = choice if choice else (None, 0.0)
        key = (id(finetunes[index]["state"]) if index is not None else None, alpha)
        if key not in test_cache:
            state = exp.at_state if index is None else interpolate_state(exp.at_state, finetunes[index]["state"], alpha)
            test_cache[key] = evaluate_examples(
                exp.load_state(state),
                exp.splits.test,
                pgd=config.attack,
                runs=config.attack.test_runs,
                seed=config.seed,
            )
        return test_cache[key]

    paper_epochs = config.finetune.epochs
    results = []
    paper_runs = run_search(exp, module, "tpe", 0, paper_epochs, at_val)[:1]  # the paper's point alone
    for sampler in args.samplers:
        for seed in args.seeds:
            start = time.perf_counter()
            finetunes = run_search(exp, module, sampler, seed, max(args.multiples) * paper_epochs, at_val)
            for multiple in [0, *args.multiples]:  # 0: the paper's procedure (its one fine-tune)
                if multiple == 0:
                    within = paper_runs
                else:
                    spent, within = 0, []
                    for ft in finetunes:
                        if spent + ft["epochs"] > multiple * paper_epochs:
                            break
                        spent += ft["epochs"]
                        within.append(ft)
                pick, front = choices(within, at_val, config.alpha.tolerance)
                rows = [p.scores for ft in within for p in ft["path"]]
                searched = {
                    "sampler": sampler,
                    "seed": seed,
                    "multiple": multiple,
                    "finetunes": len(within),
                    "epochs": sum(ft["epochs"] for ft in within),
                    "val_hypervolume": hypervolume_2d([(r.std.value, r.rob.value) for r in rows]),
                    "val_pick": None
                    if pick is None
                    else next(p.scores.metrics() for p in within[pick[0]]["path"] if p.alpha == pick[1]),
                    "seconds": time.perf_counter() - start,
                }
                if args.no_test:
                    results.append(searched)
                    print(json.dumps(searched), flush=True)
                    continue
                picked = on_test(within, pick)
                paper = on_test(paper_runs, choices(paper_runs, at_val, config.alpha.tolerance)[0])
                front_points = [
                    (100 * on_test(within, c).clean.mean(), 100 * on_test(within, c).robust.mean()) for c in front
                ]
                diff = bootstrap_interval(picked.clean, paper.clean, n_resamples=2000, seed=0)
                results.append(
                    {
                        **searched,
                        "pick": None
                        if pick is None
                        else {"lr": within[pick[0]]["lr"], "epochs": within[pick[0]]["epochs"], "alpha": pick[1]},
                        "test_std": 100 * picked.clean.mean(),
                        "test_rob": 100 * picked.robust.mean(),
                        "test_std_ci": wilson_interval(int(picked.clean.sum()), len(picked.clean)),
                        "test_rob_ci": wilson_interval(int(picked.robust.sum()), len(picked.robust)),
                        "std_minus_paper": 100 * (picked.clean.mean() - paper.clean.mean()),
                        "std_minus_paper_ci": diff,
                        "rob_minus_paper": 100 * (picked.robust.mean() - paper.robust.mean()),
                        "test_hypervolume": hypervolume_2d(front_points),
                    }
                )
                print(json.dumps(results[-1]), flush=True)
    if args.no_test:
        args.out.write_text(
            json.dumps({"config": args.config, "val": len(exp.splits.val), "results": results}, indent=1)
        )
        print_search_table(results)
        print(
            f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        )
        return
    at_test = on_test(paper_runs, None)
    args.out.write_text(
        json.dumps(
            {
                "config": args.config,
                "val": len(exp.splits.val),
                "test": len(exp.splits.test),
                "at_test_std": 100 * at_test.clean.mean(),
                "at_test_rob": 100 * at_test.robust.mean(),
                "results": results,
            },
            indent=1,
        )
    )
    print_tables(results, 100 * at_test.clean.mean(), 100 * at_test.robust.mean())
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}; validation {len(exp.splits.val)}, test {len(exp.splits.test)}"
    )


def print_search_table(results: list[dict]) -> None:
    """Validation only: how good a front each sampler found at each budget (same number of α points for all)."""
    print(
        "\n| sampler | budget | seeds | val hypervolume of every α point (mean; per seed) | the rule's pick on val: std (mean) |"
    )
    print("|---|---|---|---|---|")
    for sampler in dict.fromkeys(r["sampler"] for r in results):
        for multiple in dict.fromkeys(r["multiple"] for r in results):
            rows = [r for r in results if r["sampler"] == sampler and r["multiple"] == multiple]
            picks = [r["val_pick"]["std_acc"] for r in rows if r["val_pick"]]
            label = "paper's procedure" if multiple == 0 else f"{multiple}×"
            volumes = [r["val_hypervolume"] for r in rows]
            seeds = ", ".join(f"{v:.1f}" for v in volumes)
            pick = f"{np.mean(picks):.2f}" if picks else "-"
            print(f"| {sampler} | {label} | {len(rows)} | {np.mean(volumes):.1f}; {seeds} | {pick} |")


def print_tables(results: list[dict], at_std: float, at_rob: float) -> None:
    print(f"\nAT model on test: std {at_std:.2f}, rob {at_rob:.2f}\n")
    print(
        "| sampler | budget | seeds | rule's pick on test: std (mean of seeds) | rob | std − paper (per seed, "
        "95 % paired bootstrap) | test hypervolume of the val front |\n|---|---|---|---|---|---|---|"
    )
    for sampler in dict.fromkeys(r["sampler"] for r in results):
        for multiple in dict.fromkeys(r["multiple"] for r in results):
            rows = [r for r in results if r["sampler"] == sampler and r["multiple"] == multiple]
            label = "paper's procedure" if multiple == 0 else f"{multiple}×"
            diffs = "; ".join(
                f"{r['std_minus_paper']:+.2f} [{r['std_minus_paper_ci'][0]:+.2f}, {r['std_minus_paper_ci'][1]:+.2f}]"
                for r in rows
            )
            print(
                f"| {sampler} | {label} | {len(rows)} | {np.mean([r['test_std'] for r in rows]):.2f} | "
                f"{np.mean([r['test_rob'] for r in rows]):.2f} | {diffs} | "
                f"{np.mean([r['test_hypervolume'] for r in rows]):.1f} |"
            )


if __name__ == "__main__":
    main()
