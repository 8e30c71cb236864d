"""The sweep's results: the AT baseline, the Pareto front of the trials, its test-split evaluation, and the
picture, table and Parquet export on the sweep's MLflow parent run.

Selection uses validation metrics only; the test split is evaluated for the front, to report.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.core.data import dataset_info
from rift_sweep.core.errors import InputError
from rift_sweep.core.selection import paper_rule, pareto_mask
from rift_sweep.orchestration.callbacks import is_accuracy
from rift_sweep.orchestration.resources import worker_shape
from rift_sweep.orchestration.tracking import SweepTracker, child_runs
from rift_sweep.orchestration.workers import WorkerPool
from rift_sweep.procedure.experiment import Experiment, load_at_model, load_experiment
from rift_sweep.procedure.finetune_cache import load_finetune, spec_state
from rift_sweep.procedure.plots import pareto_chart
from rift_sweep.procedure.steps import alpha_points, model_metrics, versus_at
from rift_sweep.procedure.tables import FrontReport, format_front

AT = "at"  # model_examples' key of the AT model
AUTOATTACK = "autoattack"  # model_examples' job of a model's AutoAttack run


def model_examples(
    pool: WorkerPool, split: str, specs: dict[str, dict | None], autoattack: Collection[str] = ()
) -> dict[str, dict]:
    """Per-example correctness ("clean", "robust"; "autoattack" for the keys in `autoattack`) and OOD metrics
    ("ood") of each model on `split` (worst of attack.test_runs on test). Each model's images are split into one
    contiguous chunk per worker (`robust_examples(among=...)` gives every image the starts it gets in one call),
    and the pool hands the chunks out to whichever worker is free, so every GPU stays busy until the last model is
    done; AutoAttack runs go first, being the longest."""
    chunks = pool.shape.count
    jobs = [(key, AUTOATTACK) for key in autoattack] + [(key, c) for key in specs for c in range(chunks)]

    def call(actor, job):
        key, part = job
        if part == AUTOATTACK:
            return actor.autoattack.remote(specs[key])
        return actor.examples.remote(specs[key], split, part, chunks)

    done = dict(pool.run(jobs, call))
    results = {}
    for key in specs:
        parts = [done[(key, c)] for c in range(chunks)]
        results[key] = {
            "clean": parts[0]["clean"],
            "robust": np.logical_or.reduce([part["robust"] for part in parts]),
            "ood": parts[0]["ood"],
        }
        if key in autoattack:
            results[key]["autoattack"] = done[(key, AUTOATTACK)]
    return results


def front_pool(config: SweepConfig, exp: Experiment | None = None) -> WorkerPool:
    """The front's workers (one per GPU, else per CPU slot) with the experiment, its test OOD set built here once."""
    exp = exp or load_experiment(config, device="cpu")
    return WorkerPool(config, ray.put(exp.portable("test")), worker_shape(config.device))


def at_metrics(tracker: SweepTracker, split: str, pool: WorkerPool) -> dict[str, float]:
    """The AT model's metrics on a split, computed once (on `pool`) and kept on the parent run."""
    return tracker.logged_at_metrics(split) or tracker.log_at_metrics(
        split, model_metrics(model_examples(pool, split, {AT: None})[AT])
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
                **{k: v for k, v in metrics.items() if is_accuracy(k.removeprefix(names.TEST_PREFIX), v)},
            }
        )
    return sorted(trials, key=lambda t: t["trial_id"])


def publish_front(config: SweepConfig, tracker: SweepTracker, exp: Experiment | None = None) -> FrontReport:
    """Tag the non-dominated trials and the recommended model, evaluate them on test, log it all on the parent.
    `exp`: the driver's experiment (loaded here when not given)."""
    trials = collect_trials(tracker)
    if not trials:
        raise InputError(f"sweep {config.name!r} has no finished trial yet; run `rift-sweep sweep` (or --resume) first")
    objectives = config.search.objectives
    mask = pareto_mask([[t[o] for o in objectives] for t in trials])
    for trial, on_front in zip(trials, mask):
        trial["on_front"] = bool(on_front)
        tracker.client.set_tag(trial["run_id"], names.PARETO_TAG, "true" if on_front else "false")
    at_val = tracker.logged_at_metrics("val")
    unique = {t["finetune_key"]: t for t in reversed(trials)}.values()  # one per fine-tune: trials may share one
    points = alpha_points([{**t, "alpha_path": _cached_path(config, t)} for t in unique])
    recommended = recommend(config, tracker, points, at_val)
    untested = [t for t in trials if t["on_front"] and names.TEST_PREFIX + names.STD_ACC not in t]
    at_test = tracker.logged_at_metrics("test")
    versus = recommended is not None and "test" not in recommended  # it measures the AT model on test too
    specs = {_model_key(t): t for t in untested}
    if versus:
        specs[_model_key(recommended)] = recommended
    if versus or at_test is None:
        specs[AT] = None
    final = {AT, _model_key(recommended)} if versus and config.attack.final == "autoattack" else ()
    tested = {}
    if specs:
        with front_pool(config, exp) as pool:
            tested = model_examples(pool, "test", {k: _spec(v) for k, v in specs.items()}, final)
    for trial in untested:
        metrics = {names.TEST_PREFIX + k: v for k, v in model_metrics(tested[_model_key(trial)]).items()}
        tracker.log_metrics(trial["run_id"], metrics)
        trial.update(metrics)
    if at_test is None:
        at_test = tracker.log_at_metrics("test", model_metrics(tested[AT]))
    if versus:
        recommended["test"] = versus_at(tested[AT], tested[_model_key(recommended)])
        tracker.log_metrics(tracker.parent_run_id, _recommended_metrics(recommended))
        tracker.log_model(recommended["run_id"], trial_model(config, recommended))
    report = FrontReport(
        trials,
        at_val,
        at_test,
        objectives,
        tracker.client.get_run(tracker.parent_run_id).info.artifact_uri,
        tracker.ui_hint(),
        points=points,
        recommended=recommended,
        tolerance=config.alpha.tolerance,
    )
    _log_front_artifacts(config, tracker, report)
    tracker.client.set_tag(tracker.parent_run_id, names.FRONT_SIZE_TAG, str(len(report.front)))
    return report


def recommend(config: SweepConfig, tracker: SweepTracker, points: list[dict], at_val: dict) -> dict | None:
    """The paper's rule over every α point the sweep evaluated (validation): the largest std_acc with rob_acc
    ≥ AT − alpha.tolerance. The paper's own procedure is among the points (search.start_from_paper), so the
    recommendation is never worse than it on validation. Tagged on its trial's run (with its α); its test
    metrics, once computed, are kept on the parent run."""
    chosen = paper_rule(points, at_rob_acc=at_val[names.ROB_ACC], tolerance=config.alpha.tolerance)
    if chosen is None or chosen["alpha"] == 0.0:  # α = 0 is the AT model itself: nothing to recommend over it
        chosen = None
    for run_id in {p["run_id"] for p in points}:
        mine = chosen is not None and run_id == chosen["run_id"]
        tracker.client.set_tag(run_id, names.RECOMMENDED_TAG, "true" if mine else "false")
    if chosen is None:
        return None
    chosen = dict(chosen)
    tracker.client.set_tag(chosen["run_id"], names.RECOMMENDED_ALPHA_TAG, str(chosen["alpha"]))
    logged = tracker.client.get_run(tracker.parent_run_id).data.metrics
    prefix = names.RECOMMENDED_PREFIX
    if logged.get(prefix + "alpha") == chosen["alpha"] and prefix + "test_std_acc" in logged:  # a re-run of report
        chosen["test"] = _unflatten({k.removeprefix(prefix): v for k, v in logged.items() if k.startswith(prefix)})
    return chosen


def _recommended_metrics(recommended: dict) -> dict[str, float]:
    test = recommended["test"]
    val = {
        f"val_{k}": v
        for k, v in recommended.items()
        if isinstance(v, (int, float)) and k.removesuffix("_low").removesuffix("_high") in names.OBJECTIVES
    }
    flat = {
        "alpha": recommended["alpha"],
        **val,
        **{f"test_{k}": v for k, v in test.items() if k.startswith("p_")},
        **{f"test_{k}": v for k, v in test["model"].items()},
        **{f"test_at_{k}": v for k, v in test["at"].items()},
    }
    return {names.RECOMMENDED_PREFIX + k: v for k, v in flat.items()}


def _unflatten(flat: dict) -> dict:
    return {
        **{k.removeprefix("test_"): v for k, v in flat.items() if k.startswith("test_p_")},
        "model": {
            k.removeprefix("test_"): v
            for k, v in flat.items()
            if k.startswith("test_") and not k.startswith(("test_at_", "test_p_"))
        },
        "at": {k.removeprefix("test_at_"): v for k, v in flat.items() if k.startswith("test_at_")},
    }


def _cached_path(config: SweepConfig, trial: dict) -> list[dict]:
    cached = load_finetune(config, trial["finetune_key"]) if trial.get("finetune_key") else None
    return (cached or {}).get("alpha_path", [])


def _model_key(trial: dict) -> str:
    """Trials and α points that share a fine-tune and an α are one model, evaluated once; α = 0 is the AT model."""
    return AT if trial["alpha"] == 0.0 else f"{trial['finetune_key']}@{trial['alpha']!r}"


def _spec(trial: dict | None) -> dict | None:
    return None if trial is None else {"finetune_key": trial["finetune_key"], "alpha": trial["alpha"]}


def trial_model(config: SweepConfig, trial: dict) -> torch.nn.Module:
    """The model a trial stands for: θ_AT interpolated towards its cached fine-tune at its α."""
    model = load_at_model(config, dataset_info(config.data.dataset))
    model.load_state_dict(spec_state(config, model.state_dict(), trial))
    return model


def _log_front_artifacts(config: SweepConfig, tracker: SweepTracker, report: FrontReport) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pareto_chart(report, folder / "pareto.png")
        (folder / "front.md").write_text(format_front(report) + "\n")
        pq.write_table(pa.Table.from_pylist(_trial_table(report)), folder / "trials.parquet")
        for name in ("pareto.png", "front.md", "trials.parquet"):
            tracker.client.log_artifact(tracker.parent_run_id, str(folder / name))


_ACCURACIES = tuple(f"{o}{s}" for o in names.OBJECTIVES for s in ("", *names.INTERVAL_SUFFIXES))
_TRIAL = ("trial_id", "run_id", "module", "lr", "epochs", "finetune_key")
_COLUMNS = (*_TRIAL, "alpha", *_ACCURACIES, "on_front", *(names.TEST_PREFIX + a for a in _ACCURACIES))


def _trial_table(report: FrontReport) -> list[dict]:
    """Every trial (kind 'trial'), and every α point its fine-tune evaluated (kind 'alpha_path'; the recommended
    one marked), as flat rows with 95 % Wilson bounds beside each accuracy."""
    rows = [{"kind": "trial", **{k: t.get(k) for k in _COLUMNS}, "recommended": False} for t in report.trials]
    best = report.recommended
    for point in report.points:
        mine = best is not None and point["run_id"] == best["run_id"] and point["alpha"] == best["alpha"]
        rows.append(
            {"kind": "alpha_path", **{k: point.get(k) for k in (*_TRIAL, "alpha", *_ACCURACIES)}, "recommended": mine}
        )
    return rows


def describe_where(report: FrontReport) -> str:
    return (
        f"picture and tables: {report.artifact_uri}/pareto.png, front.md, trials.parquet\n"
        f"MLflow UI: {report.ui_hint}\n  filter the runs with: {names.PARETO_FILTER}   or: {names.RECOMMENDED_FILTER}"
    )
