"""The demo sweep, measured: wall time; the share of the trial phase spent fine-tuning and evaluating versus
Ray/Tune/MLflow overhead; and the hypervolume of the validation (std_acc, rob_acc) front — reference point (0, 0)
— against the paper's procedure (one fine-tune at lr 0.001, 10 epochs, α ∈ {0, 0.1, …, 1}) at the same number of
fine-tuning epochs.

    python bench/sweep.py [--num-samples 8]

The sweep's points are every α point its fine-tunes evaluated (each fine-tune buys a whole α path); "at equal
budget" keeps the fine-tunes, in the order they ran, until their epochs would pass the paper's 10.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import ray

from rift_sweep.config import load_config
from rift_sweep.core.selection import hypervolume_2d
from rift_sweep.names import FINETUNE_KEY_TAG
from rift_sweep.orchestration.mrc_pool import run_mrc_stage
from rift_sweep.orchestration.sweep import run_sweep
from rift_sweep.orchestration.tracking import SweepTracker, child_runs
from rift_sweep.procedure.experiment import load_experiment
from rift_sweep.procedure.finetune_cache import load_finetune
from rift_sweep.procedure.steps import alpha_path, choose_modules, finetune

PAPER = {"lr": 0.001, "epochs": 10, "grid": [i / 10 for i in range(11)]}


def sweep_points(config, tracker) -> tuple[list, list]:
    """(fine-tunes in run order as (epochs, α-path points), trial timing rows)."""
    runs = sorted(
        child_runs(tracker.client, tracker.experiment_id, tracker.parent_run_id, "FINISHED"),
        key=lambda r: r.info.start_time,
    )
    finetunes, seen, timing = [], set(), []
    for run in runs:
        m, key = run.data.metrics, run.data.tags[FINETUNE_KEY_TAG]
        timing.append((m["finetune_seconds"], m["eval_seconds"], m["trial_seconds"]))
        if key not in seen:
            seen.add(key)
            path = load_finetune(config, key)["alpha_path"]
            finetunes.append((int(run.data.params["epochs"]), [(p["std_acc"], p["rob_acc"]) for p in path]))
    return finetunes, timing


def paper_points(config, module: str) -> tuple[list, float]:
    exp = load_experiment(
        dataclasses.replace(config, alpha=dataclasses.replace(config.alpha, grid=tuple(PAPER["grid"])))
    )
    start = time.perf_counter()
    settings = dataclasses.replace(config.finetune, lr=PAPER["lr"], epochs=PAPER["epochs"])
    result = finetune(exp, module, settings)
    path = alpha_path(exp, result.best_state, PAPER["grid"], progress=False)
    return [(p["std_acc"], p["rob_acc"]) for p in path], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            "search_spaces/demo.yaml",
            {"output_dir": str(Path(tmp) / "out"), "search": {"num_samples": args.num_samples}},
        )
        ray.init(include_dashboard=False, log_to_driver=False)
        start = time.perf_counter()
        stage = run_mrc_stage(config, progress=False)
        mrc_seconds = time.perf_counter() - start
        tracker = SweepTracker(config)
        outcome = run_sweep(config, tracker, progress=False)  # stage 1 now comes from the cache
        total = time.perf_counter() - start
        slots = min(config.search.max_concurrent, int(ray.cluster_resources()["CPU"]))
        ray.shutdown()
        finetunes, timing = sweep_points(config, tracker)
        module = choose_modules([r["module"] for r in stage.rows], config.modules)[0]
        paper, paper_seconds = paper_points(config, module)

    useful = sum(f + e for f, e, _ in timing)
    in_trials = sum(t for _, _, t in timing)
    phase = outcome.seconds  # run_sweep's own wall time: cached stage 1, AT baseline, the Tune phase
    all_points = [p for _, path in finetunes for p in path]
    budget, within = 0, []
    for epochs, path in finetunes:
        if budget + epochs > PAPER["epochs"]:
            break
        budget += epochs
        within += path
    print(
        f"demo sweep: {len(timing)} trials, {len(finetunes)} fine-tunes ({sum(e for e, _ in finetunes)} epochs), "
        f"{slots} concurrent\n"
    )
    print("| figure | value |\n|---|---|")
    print(f"| wall time, stage 1 (fresh) | {mrc_seconds:.0f} s |")
    print(f"| wall time, run_sweep (cached stage 1 + AT baseline + trials) | {phase:.0f} s |")
    print(f"| wall time, total | {total:.0f} s |")
    print(f"| useful share inside trials (fine-tune + eval) / trial time | {useful / in_trials:.0%} |")
    print(f"| useful share of the run_sweep wall x {slots} slots | {useful / (phase * slots):.0%} |")
    print(f"| hypervolume, sweep, all {len(all_points)} α points | {hypervolume_2d(all_points):.1f} |")
    print(
        f"| hypervolume, sweep, fine-tunes within {PAPER['epochs']} epochs ({budget} used, {len(within)} points) "
        f"| {hypervolume_2d(within):.1f} |"
    )
    print(
        f"| hypervolume, paper procedure (lr 0.001, 10 epochs, 11 α; {paper_seconds:.0f} s) | {hypervolume_2d(paper):.1f} |"
    )


if __name__ == "__main__":
    main()
