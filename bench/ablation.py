"""The paper's ablations (Table 3) and the sweep's recommended model, on one AT model, held out.

    .venv/bin/python bench/ablation.py [--config search_spaces/demo.yaml] [--val 5000] [--test 10000]
                                       [--seeds 0 1 2] [--rows every-layer last most least lowest-2 lowest-3 sweep]
                                       [--ood 1000] [--out bench/ablation.json]
    .venv/bin/python bench/ablation.py --table bench/ablation-a.json bench/ablation-b.json   # print saved runs

Every row fine-tunes with the config's finetune settings on the whole training carve per epoch, walks the α path on
validation (`--val` images) and picks α by each rule (`alpha.rule`: the paper's point estimates, and the paired
lower bound); each pick is evaluated on the test split (`--test` images; PGD worst of attack.test_runs, OOD) with
Wilson 95 % intervals and the exact McNemar p-value against the AT model on the same images, the same attack seed.
Each row's α path on validation (clean and robust change against the AT model, paired) is saved and printed too, so
a row that keeps the AT model shows why: no clean gain, or a robustness loss beyond the tolerance.
`--ood`: generated corruptions per type (all severities mixed; 1000 = 200 source images). The demo's 200 rest on
40 source images, whose clean accuracy alone differs by 17 points between validation and test (82.5 vs 65.0 %).

  every-layer  every parameter            last      the classifier (the last module)
  most         the most robust-critical   least     the least: RiFT
  lowest-2/3   the 2 or 3 least critical modules together
  sweep        the sweep's recommended model: its search in-process (bench/sweep.py's run_search: TPE, the paper's
               point first, every α point told to the study) at 1x and 2x the paper's fine-tuning epochs, the rule
               over every α point of every fine-tune

Seeds (config.seed: the fine-tuning batches, the attacks' random starts) for `least` and `sweep`; the others run the
first seed only. Printed: the table beside the paper's Table 3, each rule's verdict per seed (robust accuracy kept
within alpha.tolerance on test? the clean gain, its p), and the machine. The long job of issue 18: 2 h 14 min of one
CPU core for the demo's model at the defaults; split the rows over two processes (`--rows`, `--out`, then `--table`)
to use two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch

from rift_sweep.config import load_config
from rift_sweep.core.finetune import EVERY_LAYER
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.selection import at_least
from rift_sweep.procedure.experiment import experiment_modules, load_experiment
from rift_sweep.procedure.paper import at_point
from rift_sweep.procedure.records import AlphaPoint, Examples, Scores
from rift_sweep.procedure.steps import alpha_by_rule, alpha_path, finetune, rule_pick, score_modules

from sweep import run_search

RULES = ("paper", "paired")
MULTI_SEED_ROWS = ("least", "sweep")
# The paper's Table 3 (ResNet-18, CIFAR-10, AT): std / OOD / adv, %.
PAPER = {
    "AT": (81.46, 73.56, 53.63),
    "every-layer": (83.56, 75.48, 52.66),
    "last": (83.35, 75.16, 52.75),
    "most": (83.36, 75.42, 52.48),
    "least": (83.44, 75.69, 53.65),
    "lowest-2": (None, None, 52.47),
    "lowest-3": (None, None, 52.22),
}


@dataclasses.dataclass
class Outcome:
    row: str
    seed: int
    rule: str
    alpha: float
    modules: str
    val: dict
    test: dict
    test_versus_at: dict
    seconds: float
    paths: dict  # fine-tune label -> its α path on validation (`_path_plain`)


def main() -> None:
    args = _arguments()
    if args.table:
        outcomes = [Outcome(**o) for f in args.table for o in json.loads(f.read_text())]
        print_table(outcomes, load_config(args.config).alpha.tolerance)
        print_paths(outcomes)
        return
    base = load_config(
        args.config,
        assignments=[
            f"data.val_subset={args.val}",
            f"data.test_subset={args.test}",
            "data.train_subset=null",  # the whole training carve per epoch, as the paper fine-tunes
            f"ood.per_corruption={args.ood}",
            "device=cpu",
        ],
    )
    exp = load_experiment(base)
    ranked = [r.module for r in score_modules(exp, experiment_modules(base, exp.model), progress=False)]
    print(f"MRC, lowest first: {', '.join(ranked)}", flush=True)
    modules = {
        "every-layer": EVERY_LAYER,
        "last": experiment_modules(base, exp.model)[-1],
        "most": ranked[-1],
        "least": ranked[0],
        "lowest-2": ranked[:2],
        "lowest-3": ranked[:3],
    }
    outcomes: list[Outcome] = []
    for seed in args.seeds:
        seeded = dataclasses.replace(exp, config=dataclasses.replace(base, seed=seed))
        at_val, at_test = at_point(seeded), _test(seeded, "AT", seeded.at_state)
        print(f"seed {seed}: AT val {_brief(at_val.scores)}  test {_brief(at_test[0])}", flush=True)
        for row in args.rows:
            if seed != args.seeds[0] and row not in MULTI_SEED_ROWS:
                continue
            runs = _sweep_rows(seeded, ranked[0], at_val) if row == "sweep" else [_row(seeded, row, modules, at_val)]
            for name, picks, paths, seconds in runs:
                for rule, (alpha, state, val_scores, label) in picks.items():
                    scores, examples = _test(seeded, "AT" if alpha == 0 else f"{name} {label} α {alpha}", state)
                    versus = examples.versus(at_test[1])
                    outcomes.append(
                        Outcome(
                            name,
                            seed,
                            rule,
                            alpha,
                            label,
                            val_scores.metrics(),
                            scores.metrics(),
                            versus.metrics(),
                            seconds,
                            paths,
                        )
                    )
                    print(json.dumps(dataclasses.asdict(outcomes[-1])), flush=True)
        args.out.write_text(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=1))
    print_table(outcomes, base.alpha.tolerance)
    print_paths(outcomes)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; validation {len(exp.splits.val)}, test {len(exp.splits.test)}, "
        f"train {len(exp.splits.train)} per epoch"
    )


def _row(exp, row: str, modules: dict, at_val: AlphaPoint):
    """(row, {rule: (α, state, validation scores, modules)}, {modules: α path}, seconds) of one fine-tune."""
    start = time.perf_counter()
    chosen = modules[row]
    best = finetune(exp, chosen, exp.config.finetune).best_state
    path = alpha_path(exp, best, at_val, progress=False)
    picks = {}
    for rule in RULES:
        alpha = alpha_by_rule(path, at_val, dataclasses.replace(exp.config.alpha, rule=rule))
        point = next(p for p in path if p.alpha == alpha)
        picks[rule] = (alpha, interpolate_state(exp.at_state, best, alpha), point.scores, _label(chosen))
    return row, picks, {_label(chosen): _path_plain(path, at_val)}, time.perf_counter() - start


def _sweep_rows(exp, module: str, at_val: AlphaPoint):
    """The sweep's recommended model at 1x and 2x the paper's fine-tuning epochs: one search, cut at each budget."""
    start = time.perf_counter()
    paper_epochs = exp.config.finetune.epochs
    finetunes = run_search(exp, module, "tpe", exp.config.seed, 2 * paper_epochs, at_val)
    for multiple in (1, 2):
        within, spent = [], 0
        for ft in finetunes:
            if spent + ft["epochs"] > multiple * paper_epochs:
                break
            spent += ft["epochs"]
            within.append(ft)
        candidates = [(ft, p) for ft in within for p in ft["path"]]
        picks = {}
        for rule in RULES:
            rule_config = dataclasses.replace(exp.config.alpha, rule=rule)
            options = [(p.scores, p.examples.versus(at_val.examples), p.alpha) for _, p in candidates]
            index = rule_pick(options, at_val.scores, rule_config)
            ft, point = candidates[index] if index is not None else (None, at_val)
            kept_at = ft is None or point.alpha == 0  # α 0 of any fine-tune is the AT model
            state = exp.at_state if kept_at else interpolate_state(exp.at_state, ft["state"], point.alpha)
            picks[rule] = (point.alpha, state, point.scores, "-" if kept_at else _finetune_label(module, ft))
        paths = {_finetune_label(module, ft): _path_plain(ft["path"], at_val) for ft in within}
        yield f"sweep {multiple}x", picks, paths, time.perf_counter() - start


def _finetune_label(module: str, ft: dict) -> str:
    return f"{module} lr {ft['lr']:.1e} ep {ft['epochs']}"


def _path_plain(path: list[AlphaPoint], at_val: AlphaPoint) -> list[dict]:
    """Each α point on validation: accuracies and the paired change against the AT model on the same images."""
    kept = ("std_acc", "rob_acc", "ood_acc", "vs_at_std", "vs_at_std_low", "vs_at_rob", "vs_at_rob_low")
    plain = []
    for point in path:
        flat = {**point.scores.metrics(), **point.examples.versus(at_val.examples).metrics()}
        plain.append({"alpha": point.alpha, **{k: flat[k] for k in kept if k in flat}})
    return plain


_TESTED: dict = {}


def _test(exp, model: str, state) -> tuple[Scores, Examples]:
    """(scores, per-example results) of `state` on test, worst of attack.test_runs PGD runs, OOD: once per (seed,
    model), as both rules often pick the same α."""
    key = (exp.config.seed, model)
    if key not in _TESTED:
        examples = exp.examples(state, "test", runs=exp.config.attack.test_runs)
        _TESTED[key] = (examples.scores(exp.ood_accuracies(state, "test")), examples)
    return _TESTED[key]


def _label(modules) -> str:
    return "every parameter" if modules == EVERY_LAYER else modules if isinstance(modules, str) else "+".join(modules)


def _brief(scores: Scores) -> str:
    return f"std {scores.std.value:.2f} rob {scores.rob.value:.2f} ood {scores.ood or 0:.2f}"


def print_table(outcomes: list[Outcome], tolerance: float) -> None:
    """Markdown: per row and rule, each seed's test accuracies and change against the AT model (p), how many seeds
    kept robust accuracy within the tolerance, and the paper's Table 3 beside it."""
    print(
        "\n| row | rule | seeds | α (per seed) | test std % [95 %] (per seed) | test rob % [95 %] | test OOD % | Δstd vs AT, p "
        "(per seed) | Δrob vs AT, p (per seed) | robust kept (≥ AT − tol) | paper std / OOD / adv |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in dict.fromkeys(o.row for o in outcomes):
        for rule in RULES:
            rows = [o for o in outcomes if o.row == row and o.rule == rule]
            if not rows:
                continue
            kept = sum(at_least(o.test_versus_at["vs_at_rob"], -tolerance) for o in rows)
            paper = PAPER.get(row.split(" ")[0] if row.startswith("sweep") else row)
            cells = [
                row,
                rule,
                str(len(rows)),
                ", ".join(f"{o.alpha:.1f}" for o in rows),
                "; ".join(_interval(o.test, "std_acc") for o in rows),
                "; ".join(_interval(o.test, "rob_acc") for o in rows),
                "; ".join(f"{o.test.get('ood_acc', float('nan')):.2f}" for o in rows),
                "; ".join(
                    f"{o.test_versus_at['vs_at_std']:+.2f}, p={o.test_versus_at['vs_at_std_p']:.2g}" for o in rows
                ),
                "; ".join(
                    f"{o.test_versus_at['vs_at_rob']:+.2f}, p={o.test_versus_at['vs_at_rob_p']:.2g}" for o in rows
                ),
                f"{kept}/{len(rows)}",
                " / ".join("-" if v is None else f"{v:.2f}" for v in paper) if paper else "",
            ]
            print("| " + " | ".join(cells) + " |")


def print_paths(outcomes: list[Outcome]) -> None:
    """Each row's α paths on validation (once per row and seed): the paired change in clean / robust accuracy
    against the AT model, points."""
    print("\nα paths on validation, Δstd / Δrob vs the AT model (points, paired), α = 0.2, 0.4, …:")
    for row, seed in dict.fromkeys((o.row, o.seed) for o in outcomes):
        paths = next(o.paths for o in outcomes if (o.row, o.seed) == (row, seed))
        for label, path in paths.items():
            steps = "  ".join(f"{p['vs_at_std']:+.2f}/{p['vs_at_rob']:+.2f}" for p in path if p["alpha"] > 0)
            print(f"  {row} seed {seed} ({label}): {steps}")


def _interval(metrics: dict, name: str) -> str:
    return f"{metrics[name]:.2f} [{metrics[name + '_low']:.2f}, {metrics[name + '_high']:.2f}]"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/demo.yaml")
    parser.add_argument("--val", type=int, default=5000)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--rows", nargs="+", default=["every-layer", "last", "most", "least", "lowest-2", "lowest-3", "sweep"]
    )
    parser.add_argument("--ood", type=int, default=1000, help="generated OOD images per corruption type")
    parser.add_argument("--out", type=Path, default=Path("bench/ablation.json"))
    parser.add_argument("--table", type=Path, nargs="+", help="print the table of saved runs (--out files), no compute")
    return parser.parse_args()


if __name__ == "__main__":
    main()
