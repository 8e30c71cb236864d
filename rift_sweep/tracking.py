"""MLflow, in one place: one experiment per (dataset, model), one parent run per sweep, children per trial.

Embedded default: a sqlite store and an artifact folder under the sweep's output folder (the plain-folder
store refuses to run without MLFLOW_ALLOW_FILE_STORE). `tracking.uri` may name a server instead.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from rift_sweep.config import SweepConfig
from rift_sweep.plots import mrc_bar_chart

SWEEP_TAG = "rift_sweep.sweep"  # marks a sweep's parent run: its name ...
OUTPUT_TAG = "rift_sweep.output"  # ... and its output folder (two sweeps may share a name on one server)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag


def tracking_uri(config: SweepConfig) -> str:
    return config.tracking.uri or f"sqlite:///{config.output_path / 'mlflow.db'}"


def experiment_name(config: SweepConfig) -> str:
    return config.tracking.experiment or f"rift-{config.data.dataset}-{config.model.name}"


class SweepTracker:
    """The MLflow side of one sweep: its experiment and its parent run."""

    def __init__(self, config: SweepConfig) -> None:
        self.config = config
        self.uri = tracking_uri(config)
        if self.uri.startswith("sqlite:///"):
            config.output_path.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.uri)
        self.experiment_id = self._experiment_id()
        self.parent_run_id = self._parent_run_id()

    def _experiment_id(self) -> str:
        name = experiment_name(self.config)
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:///"):
            artifacts = (self.config.output_path / "mlartifacts").as_uri()
        return self.client.create_experiment(name, artifact_location=artifacts)

    def _parent_run_id(self) -> str:
        tags = {SWEEP_TAG: self.config.name, OUTPUT_TAG: str(self.config.output_path)}
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], query, max_results=1, order_by=["attributes.start_time ASC"])
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=self.config.name, tags=tags)
        self._log_config(run.info.run_id)
        return run.info.run_id

    def _log_config(self, run_id: str) -> None:
        config = self.config
        params = {"dataset": config.data.dataset, "model": config.model.name, "checkpoint": config.model.checkpoint,
                  "attack.eps": config.attack.eps, "attack.steps": config.attack.steps, "mrc.variant": config.mrc.variant,
                  "mrc.epsilon": config.mrc.epsilon, "finetune.bn": config.finetune.bn, "seed": config.seed}
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        if config.source and Path(config.source).is_file():
            self.client.log_artifact(run_id, config.source, "config")

    def ui_hint(self) -> str:
        if self.uri.startswith("sqlite:///"):
            return (f"rift-sweep ui --sweep {self.config.name} --output {self.config.output_path}"
                    f"   (or: mlflow ui --backend-store-uri {self.uri})")
        return f"open {self.uri} in a browser"

    def log_mrc(self, rows: list[dict], chosen: list[str], table_path: Path) -> None:
        """The MRC table (Parquet), the bar chart, and the chosen module(s) on the parent run."""
        run_id = self.parent_run_id
        self.client.log_artifact(run_id, str(table_path), "mrc")
        with tempfile.TemporaryDirectory() as tmp:
            chart = mrc_bar_chart(rows, chosen, Path(tmp) / "mrc.png")
            self.client.log_artifact(run_id, str(chart), "mrc")
            ranked = Path(tmp) / "mrc_ranked.json"
            ranked.write_text(json.dumps(rows, indent=1))
            self.client.log_artifact(run_id, str(ranked), "mrc")
        self.client.set_tag(run_id, "rift.module", ",".join(chosen))
        self.client.set_tag(run_id, "rift.mrc_table", table_path.name)

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    def finish_parent(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_run_id, status=status)

    def parent_status(self) -> str:
        return self.client.get_run(self.parent_run_id).info.status



TRIAL_TAG = "rift_sweep.trial_id"
RESOLVED_PARAMS = ("module", "lr", "epochs", "alpha")


class MLflowTrialCallback(Callback):
    """One MLflow child run per Tune trial, nested under the sweep's parent run.

    A trial's run is found by its tag, not by an in-memory map, so a resumed sweep (even after a hard kill)
    reuses the run instead of duplicating it; runs left RUNNING by a lost trial are closed as KILLED.
    """

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, seed: int) -> None:
        self.uri, self.experiment_id, self.parent_run_id, self.seed = uri, experiment_id, parent_run_id, seed
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict:  # Tune pickles callbacks into its experiment state
        return {**self.__dict__, "_client": None, "_runs": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    def run_id(self, trial_id: str) -> str:
        if trial_id not in self._runs:
            found = self.client.search_runs(
                [self.experiment_id],
                f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1)
            if found:
                self._runs[trial_id] = found[0].info.run_id
            else:
                run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial_id}",
                                             tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id})
                self._runs[trial_id] = run.info.run_id
        return self._runs[trial_id]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_id(trial.trial_id)
        self.client.update_run(run_id, status="RUNNING")
        params = [Param(k, str(v)) for k, v in trial.config.items() if k in RESOLVED_PARAMS]
        self.client.log_batch(run_id, params=params + [Param("seed", str(self.seed))])

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "pid" in result:  # which process runs the trial: for debugging, and to find it from outside
            self.client.set_tag(self.run_id(trial.trial_id), "rift.pid", str(result["pid"]))
        step = int(result.get("training_iteration", 0))
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if k in INTERIM_METRICS and isinstance(v, (int, float))]
        if metrics:
            self.client.log_batch(self.run_id(trial.trial_id), metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result, run_id = trial.last_result, self.run_id(trial.trial_id)
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in result.items() if _is_objective(k, v)]
        for step, row in enumerate(result.get("alpha_path", [])):
            metrics += [Metric(f"path_{k}", float(v), now, step) for k, v in row.items() if _is_objective(k, v) or k == "alpha"]
        metrics += [Metric(k, float(result[k]), now, 0) for k in TIMING_METRICS if k in result]
        existing = self.client.get_run(run_id).data.params
        params = [Param(k, str(result[k])) for k in RESOLVED_PARAMS if k in result and k not in existing]
        tags = [RunTag("rift.finetune_key", str(result.get("finetune_key"))),
                RunTag("rift.finetune_reused", str(result.get("finetune_reused")))]
        for start in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[start:start + 900])
        self.client.log_batch(run_id, params=params, tags=tags)
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.client.set_terminated(self.run_id(trial.trial_id), "FAILED")

    def on_experiment_end(self, trials, **info) -> None:
        # Finished trials closed their runs; what is still RUNNING was paused or lost. A resumed trial
        # finds its run by tag and marks it RUNNING again.
        close_orphaned_runs(self.client, self.experiment_id, self.parent_run_id)


INTERIM_METRICS = ("epoch", "ft_val_acc")
TIMING_METRICS = ("finetune_seconds", "eval_seconds", "trial_seconds", "best_epoch")


def _is_objective(key: str, value) -> bool:
    return (key in ("std_acc", "rob_acc", "ood_acc") or key.startswith("ood/")) and isinstance(value, (int, float))


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, status: str | None = None) -> list:
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" + (f" and attributes.status = '{status}'" if status else "")
    return client.search_runs([experiment_id], query, max_results=50_000)


def close_orphaned_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> int:
    """Mark KILLED the children left RUNNING (by an interruption or a hard kill); returns how many."""
    runs = child_runs(client, experiment_id, parent_run_id, status="RUNNING")
    for run in runs:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)
