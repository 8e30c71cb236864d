"""The sweep's results: the AT baseline, the Pareto front of the trials, its test-split evaluation, and the
picture, table and Parquet export on the sweep's MLflow parent run.

Selection uses validation metrics only; the test split is evaluated for the front, to report.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.core.data import dataset_info
from rift_sweep.core.errors import InputError
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.selection import paper_rule, pareto_mask
from rift_sweep.orchestration.resources import worker_shape
from rift_sweep.orchestration.tracking import SweepTracker, child_runs
from rift_sweep.procedure.experiment import load_at_model, load_experiment
from rift_sweep.procedure.finetune_cache import load_finetune
from rift_sweep.procedure.plots import pareto_chart
from rift_sweep.procedure.tables import FrontReport, format_front


@ray.remote
def _evaluate_task(config: SweepConfig, spec: dict | None, split: str, runs: int) -> dict:
    """Metrics of θ_AT (spec None) or of a cached fine-tune interpolated at the spec's α."""
    exp = load_experiment(config)
    state = exp.at_state
    if spec is not None:
        cached = load_finetune(config, spec["finetune_key"])
        if cached is None:
            raise InputError(
                f"the fine-tune {spec['finetune_key']} is not in the cache under "
                f"{config.output_path}; was the output folder moved or cleaned?"
            )
        state = interpolate_state(exp.at_state, cached["best_state"], spec["alpha"])
    return exp.evaluate(state, split, runs=runs)


def evaluate_remote(config: SweepConfig, specs: list[dict | None], split: str) -> list[dict]:
    """Evaluate each model in its own task, with the trials' resources (a GPU each where there are GPUs)."""
    shape = worker_shape()
    runs = config.attack.test_runs if split == "test" else 1
    task = _evaluate_task.options(num_cpus=shape.num_cpus, num_gpus=shape.num_gpus)
    return ray.get([task.remote(config, spec, split, runs) for spec in specs])


def at_metrics(tracker: SweepTracker, split: str) -> dict[str, float]:
    """The AT model's metrics on a split, computed once and kept on the parent run."""
    return tracker.logged_at_metrics(split) or tracker.log_at_metrics(
        split, evaluate_remote(tracker.config, [None], split)[0]
    )


def collect_trials(tracker: SweepTracker) -> list[dict]:
    trials = []
    for run in child_runs(tracker.client, tracker.experiment_id, tracker.parent_run_id, status="FINISHED"):
        params, metrics = run.data.params, run.data.metrics
        trials.append(
            {
                "run_id": run.info.run_id,
                "trial_id": run.data.tags.get(names.TRIAL_TAG),
                "module": params.get("module"),
                "lr": float(params["lr"]),
                "epochs": int(params["epochs"]),
                "alpha": float(params["alpha"]),
                "finetune_key": run.data.tags.get(names.FINETUNE_KEY_TAG),
                **{k: v for k, v in metrics.items() if k in names.OBJECTIVES or k.startswith(names.TEST_PREFIX)},
            }
        )
    return sorted(trials, key=lambda t: t["trial_id"])


def publish_front(config: SweepConfig, tracker: SweepTracker) -> FrontReport:
    """Tag the non-dominated trials, evaluate them on test, and log the front on the parent run."""
    trials = collect_trials(tracker)
    if not trials:
        raise InputError(f"sweep {config.name!r} has no finished trial yet; run `rift-sweep sweep` (or --resume) first")
    objectives = config.search.objectives
    mask = pareto_mask([[t[o] for o in objectives] for t in trials])
    for trial, on_front in zip(trials, mask):
        trial["on_front"] = bool(on_front)
        tracker.client.set_tag(trial["run_id"], names.PARETO_TAG, "true" if on_front else "false")
    at_val = at_metrics(tracker, "val")
    recommended = paper_rule(trials, at_rob_acc=at_val[names.ROB_ACC], tolerance=config.alpha.tolerance)
    for trial in trials:
        trial["recommended"] = trial is recommended
        tracker.client.set_tag(trial["run_id"], names.RECOMMENDED_TAG, "true" if trial is recommended else "false")
    reported = [t for t in trials if t["on_front"] or t["recommended"]]
    untested = [t for t in reported if names.TEST_PREFIX + names.STD_ACC not in t]
    at_test = tracker.logged_at_metrics("test")
    results = evaluate_remote(config, untested + ([None] if at_test is None else []), "test")  # in parallel
    for trial, metrics in zip(untested, results):
        tested = {names.TEST_PREFIX + k: v for k, v in metrics.items()}
        tracker.log_metrics(trial["run_id"], tested)
        trial.update(tested)
    at_test = at_test or tracker.log_at_metrics("test", results[-1])
    if recommended is not None:
        tracker.log_model(recommended["run_id"], trial_model(config, recommended))
    report = FrontReport(
        trials,
        at_val,
        at_test,
        objectives,
        tracker.client.get_run(tracker.parent_run_id).info.artifact_uri,
        tracker.ui_hint(),
    )
    _log_front_artifacts(config, tracker, report)
    tracker.client.set_tag(tracker.parent_run_id, names.FRONT_SIZE_TAG, str(len(report.front)))
    return report


def trial_model(config: SweepConfig, trial: dict) -> torch.nn.Module:
    """The model a trial stands for: θ_AT interpolated towards its cached fine-tune at its α."""
    cached = load_finetune(config, trial["finetune_key"])
    if cached is None:
        raise InputError(
            f"the fine-tune {trial['finetune_key']} is not in the cache under {config.output_path}; "
            f"was the output folder moved or cleaned?"
        )
    info = dataset_info(config.data.dataset)
    at = load_at_model(config, info)
    at.load_state_dict(interpolate_state(at.state_dict(), cached["best_state"], trial["alpha"]))
    return at


def _log_front_artifacts(config: SweepConfig, tracker: SweepTracker, report: FrontReport) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        points = [(t[names.STD_ACC], t[names.ROB_ACC]) for t in report.trials]
        at = (report.at_val[names.STD_ACC], report.at_val[names.ROB_ACC])
        pareto_chart(points, [t["on_front"] for t in report.trials], at, folder / "pareto.png")
        (folder / "front.md").write_text(format_front(report) + "\n")
        pq.write_table(pa.Table.from_pylist(_trial_table(config, report.trials)), folder / "trials.parquet")
        for name in ("pareto.png", "front.md", "trials.parquet"):
            tracker.client.log_artifact(tracker.parent_run_id, str(folder / name))


_COLUMNS = (
    "trial_id",
    "run_id",
    "module",
    "lr",
    "epochs",
    "alpha",
    *names.OBJECTIVES,
    "on_front",
    *(names.TEST_PREFIX + o for o in names.OBJECTIVES),
    "finetune_key",
)


def _trial_table(config: SweepConfig, trials: list[dict]) -> list[dict]:
    """Every trial, and every α point its fine-tune evaluated (kind 'alpha_path'), as flat rows."""
    rows = []
    for trial in trials:
        rows.append({"kind": "trial", **{k: trial.get(k) for k in _COLUMNS}})
        cached = load_finetune(config, trial["finetune_key"]) if trial.get("finetune_key") else None
        for point in (cached or {}).get("alpha_path", []):
            rows.append(
                {
                    "kind": "alpha_path",
                    **{k: trial.get(k) for k in ("trial_id", "run_id", "module", "lr", "epochs")},
                    **{k: point.get(k) for k in ("alpha", *names.OBJECTIVES)},
                }
            )
    return rows


def describe_where(report: FrontReport) -> str:
    return (
        f"picture and tables: {report.artifact_uri}/pareto.png, front.md, trials.parquet\n"
        f"MLflow UI: {report.ui_hint}\n  filter the runs with: {names.PARETO_FILTER}"
    )
