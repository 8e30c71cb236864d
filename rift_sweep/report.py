"""The sweep's results: the AT baseline, the Pareto front of the trials, its test-split evaluation, and the
picture, tables and Parquet export on the sweep's MLflow parent run.

Selection uses validation metrics only; the test split is evaluated for the front, to report.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from rift_sweep.config import SweepConfig
from rift_sweep.experiment import load_experiment
from rift_sweep.interpolate import interpolate_state
from rift_sweep.plots import pareto_chart
from rift_sweep.resources import worker_shape
from rift_sweep.selection import pareto_mask
from rift_sweep.sweep import load_cached_finetune
from rift_sweep.tracking import TRIAL_TAG, SweepTracker, child_runs

PARETO_TAG = "pareto"
UI_FILTER = f"tags.{PARETO_TAG} = 'true'"


@ray.remote
def _evaluate_task(config: SweepConfig, spec: dict | None, split: str, runs: int) -> dict:
    """Metrics of θ_AT (spec None) or of a cached fine-tune interpolated at the spec's α."""
    exp = load_experiment(config)
    state = exp.at_state
    if spec is not None:
        cached = load_cached_finetune(config, spec["finetune_key"])
        if cached is None:
            raise FileNotFoundError(f"the fine-tune {spec['finetune_key']} is not in the cache "
                                    f"{config.output_path / 'cache'}; was the output folder moved or cleaned?")
        state = interpolate_state(exp.at_state, cached["best_state"], spec["alpha"])
    return exp.evaluate(state, split, runs=runs)


def evaluate_remote(config: SweepConfig, specs: list[dict | None], split: str) -> list[dict]:
    """Evaluate each model in its own task, with the trials' resources (a GPU each where there are GPUs)."""
    shape = worker_shape()
    runs = config.attack.test_runs if split == "test" else 1
    task = _evaluate_task.options(num_cpus=shape.num_cpus, num_gpus=shape.num_gpus)
    return ray.get([task.remote(config, spec, split, runs) for spec in specs])


def logged_at_metrics(tracker: SweepTracker, split: str) -> dict[str, float] | None:
    """The AT model's metrics on a split as kept on the parent run, or None before they are computed."""
    prefix = f"at_{split}_"
    logged = tracker.client.get_run(tracker.parent_run_id).data.metrics
    found = {k.removeprefix(prefix): v for k, v in logged.items() if k.startswith(prefix)}
    return found if "std_acc" in found else None


def log_at_metrics(tracker: SweepTracker, split: str, metrics: dict[str, float]) -> dict[str, float]:
    tracker.log_metrics(tracker.parent_run_id, {f"at_{split}_{k}": v for k, v in metrics.items()})
    return metrics


def at_metrics(tracker: SweepTracker, split: str) -> dict[str, float]:
    """The AT model's metrics on a split, computed once and kept on the parent run."""
    return logged_at_metrics(tracker, split) or log_at_metrics(tracker, split, evaluate_remote(tracker.config, [None], split)[0])


@dataclasses.dataclass
class FrontReport:
    trials: list[dict]  # every finished trial, with an "on_front" flag
    at_val: dict[str, float]
    at_test: dict[str, float]
    objectives: tuple[str, ...]
    artifact_uri: str
    ui_hint: str

    @property
    def front(self) -> list[dict]:
        return sorted((t for t in self.trials if t["on_front"]), key=lambda t: -t["std_acc"])


def collect_trials(tracker: SweepTracker) -> list[dict]:
    trials = []
    for run in child_runs(tracker.client, tracker.experiment_id, tracker.parent_run_id, status="FINISHED"):
        params, metrics = run.data.params, run.data.metrics
        trials.append({
            "run_id": run.info.run_id, "trial_id": run.data.tags.get(TRIAL_TAG), "module": params.get("module"),
            "lr": float(params["lr"]), "epochs": int(params["epochs"]), "alpha": float(params["alpha"]),
            "finetune_key": run.data.tags.get("rift.finetune_key"),
            **{k: v for k, v in metrics.items() if k in ("std_acc", "rob_acc", "ood_acc") or k.startswith("test_")},
        })
    return sorted(trials, key=lambda t: t["trial_id"])


def publish_front(config: SweepConfig, tracker: SweepTracker) -> FrontReport:
    """Tag the non-dominated trials, evaluate them on test, and log the front on the parent run."""
    trials = collect_trials(tracker)
    if not trials:
        raise ValueError(f"sweep {config.name!r} has no finished trial yet; run `rift-sweep sweep` (or --resume) first")
    objectives = config.search.objectives
    mask = pareto_mask([[t.get(o, 0.0) for o in objectives] for t in trials])
    for trial, on_front in zip(trials, mask):
        trial["on_front"] = bool(on_front)
        tracker.client.set_tag(trial["run_id"], PARETO_TAG, "true" if on_front else "false")
    untested = [t for t in trials if t["on_front"] and "test_std_acc" not in t]
    at_test = logged_at_metrics(tracker, "test")
    results = evaluate_remote(config, untested + ([None] if at_test is None else []), "test")  # in parallel
    for trial, metrics in zip(untested, results):
        tested = {f"test_{k}": v for k, v in metrics.items()}
        tracker.log_metrics(trial["run_id"], tested)
        trial.update(tested)
    at_test = at_test or log_at_metrics(tracker, "test", results[-1])
    report = FrontReport(trials, at_metrics(tracker, "val"), at_test, objectives,
                         tracker.client.get_run(tracker.parent_run_id).info.artifact_uri, tracker.ui_hint())
    _log_front_artifacts(config, tracker, report)
    tracker.client.set_tag(tracker.parent_run_id, "rift.front_size", str(len(report.front)))
    return report


def _log_front_artifacts(config: SweepConfig, tracker: SweepTracker, report: FrontReport) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        points = [(t["std_acc"], t["rob_acc"]) for t in report.trials]
        at = (report.at_val["std_acc"], report.at_val["rob_acc"])
        pareto_chart(points, [t["on_front"] for t in report.trials], at, folder / "pareto.png")
        (folder / "front.md").write_text(format_front(report) + "\n")
        pq.write_table(pa.Table.from_pylist(_trial_table(config, report.trials)), folder / "trials.parquet")
        for name in ("pareto.png", "front.md", "trials.parquet"):
            tracker.client.log_artifact(tracker.parent_run_id, str(folder / name))


def _trial_table(config: SweepConfig, trials: list[dict]) -> list[dict]:
    """Every trial, and every α point its fine-tune evaluated (kind 'alpha_path'), as flat rows."""
    rows = []
    for trial in trials:
        rows.append({"kind": "trial", **{k: trial.get(k) for k in _COLUMNS}})
        cached = load_cached_finetune(config, trial["finetune_key"]) if trial.get("finetune_key") else None
        for point in (cached or {}).get("alpha_path", []):
            rows.append({"kind": "alpha_path", **{k: trial.get(k) for k in ("trial_id", "run_id", "module", "lr", "epochs")},
                         **{k: point.get(k) for k in ("alpha", "std_acc", "rob_acc", "ood_acc")}})
    return rows


_COLUMNS = ("trial_id", "run_id", "module", "lr", "epochs", "alpha", "std_acc", "rob_acc", "ood_acc", "on_front",
            "test_std_acc", "test_rob_acc", "test_ood_acc", "finetune_key")


def format_front(report: FrontReport) -> str:
    """The front as a table: validation (selection) and test (report) metrics, the AT model for reference."""
    def acc(row: dict, key: str) -> str:
        return f"{row[key]:.2f}" if key in row else "-"

    header = (f"{'trial':<14}{'module':<18}{'lr':>9}{'ep':>4}{'alpha':>7} | {'val std':>8}{'rob':>7}{'ood':>7} | "
              f"{'test std':>9}{'rob':>7}{'ood':>7}")
    lines = [f"Pareto front over {', '.join(report.objectives)} (validation); {len(report.front)} of "
             f"{len(report.trials)} trials", header, "-" * len(header)]
    for t in report.front:
        lines.append(f"{t['trial_id']:<14}{t['module']:<18}{t['lr']:>9.2e}{t['epochs']:>4}{t['alpha']:>7.2f} | "
                     f"{acc(t, 'std_acc'):>8}{acc(t, 'rob_acc'):>7}{acc(t, 'ood_acc'):>7} | "
                     f"{acc(t, 'test_std_acc'):>9}{acc(t, 'test_rob_acc'):>7}{acc(t, 'test_ood_acc'):>7}")
    at_val, at_test = report.at_val, report.at_test
    lines.append(f"{'AT model':<14}{'':<18}{'':>9}{'':>4}{'':>7} | {acc(at_val, 'std_acc'):>8}{acc(at_val, 'rob_acc'):>7}"
                 f"{acc(at_val, 'ood_acc'):>7} | {acc(at_test, 'std_acc'):>9}{acc(at_test, 'rob_acc'):>7}"
                 f"{acc(at_test, 'ood_acc'):>7}")
    return "\n".join(lines)


def describe_where(report: FrontReport) -> str:
    return (f"picture and tables: {report.artifact_uri}/pareto.png, front.md, trials.parquet\n"
            f"MLflow UI: {report.ui_hint}\n  filter the runs with: {UI_FILTER}")

