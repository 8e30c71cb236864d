"""MLflow, in one place: one experiment per (dataset, model), one parent run per sweep, children per trial.

Embedded default: a sqlite store and an artifact folder under the sweep's output folder (the plain-folder
store refuses to run without MLFLOW_ALLOW_FILE_STORE). `tracking.uri` may name a server instead.
No Ray here: `rift-sweep ui` and `report` read the store without starting anything.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.core.files import file_sha256
from rift_sweep.procedure.plots import mrc_bar_chart


def tracking_uri(config: SweepConfig) -> str:
    return config.tracking.uri or f"sqlite:///{config.output_path / names.MLFLOW_DB}"


def experiment_name(config: SweepConfig) -> str:
    return config.tracking.experiment or f"rift-{config.data.dataset}-{config.model.label}"


def tag_filter(**tags: str) -> str:
    """An MLflow filter on tag values. Values are quoted for MLflow's parser, which has no escape for a quote:
    a value holding one is refused here (config names cannot hold one; folders are compared in Python)."""
    clauses = []
    for key, value in tags.items():
        if "'" in value:
            raise ValueError(f"an MLflow tag filter cannot hold a single quote: {value!r}")
        clauses.append(f"tags.`{key}` = '{value}'")
    return " and ".join(clauses)


class SweepTracker:
    """The MLflow side of one sweep: its experiment and its parent run (created on first use)."""

    def __init__(self, config: SweepConfig, *, create: bool = True) -> None:
        self.config = config
        self.uri = tracking_uri(config)
        if self.uri.startswith("sqlite:///") and create:
            config.output_path.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.uri)
        self.experiment_id = self._experiment_id(create)
        self.parent_run_id = self._parent_run_id(create)

    def _experiment_id(self, create: bool) -> str | None:
        found = self.client.get_experiment_by_name(experiment_name(self.config))
        if found is not None or not create:
            return found.experiment_id if found else None
        artifacts = None
        if self.uri.startswith("sqlite:///"):
            artifacts = (self.config.output_path / names.MLFLOW_ARTIFACTS).as_uri()
        return self.client.create_experiment(experiment_name(self.config), artifact_location=artifacts)

    def _parent_run_id(self, create: bool) -> str | None:
        run = find_parent_run(self.client, self.experiment_id, self.config) if self.experiment_id else None
        if run is not None or not create:
            return run.info.run_id if run else None
        tags = {names.SWEEP_TAG: self.config.name, names.OUTPUT_TAG: str(self.config.output_path)}
        run_id = self.client.create_run(self.experiment_id, run_name=self.config.name, tags=tags).info.run_id
        self._log_config(run_id)
        return run_id

    def _log_config(self, run_id: str) -> None:
        config = self.config
        params = {
            "dataset": config.data.dataset,
            "model": config.model.label,
            "checkpoint": config.model.checkpoint,
            "attack.eps": config.attack.eps,
            "attack.steps": config.attack.steps,
            "mrc.variant": config.mrc.variant,
            "mrc.epsilon": config.mrc.epsilon,
            "finetune.bn": config.finetune.bn,
            "seed": config.seed,
        }
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        if config.model.checkpoint and Path(config.model.checkpoint).is_file():
            self.client.set_tag(run_id, names.CHECKPOINT_SHA_TAG, file_sha256(config.model.checkpoint))
        code = user_code_file(config)
        if code is not None:  # the user's own model class: which code ran is part of the result
            self.client.set_tag(run_id, names.MODEL_CODE_SHA_TAG, file_sha256(code))
        resolved = config.output_path / names.RESOLVED_CONFIG
        if resolved.is_file():
            self.client.log_artifact(run_id, str(resolved), "config")

    def ui_hint(self) -> str:
        if self.uri.startswith("sqlite:///"):
            return (
                f"rift-sweep ui --sweep {self.config.name} --output {self.config.output_path}"
                f"   (or: mlflow ui --backend-store-uri {self.uri})"
            )
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
        self.client.set_tag(run_id, names.MODULE_TAG, ",".join(chosen))
        self.client.set_tag(run_id, names.MRC_TABLE_TAG, table_path.name)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def logged_at_metrics(self, split: str) -> dict[str, float] | None:
        """The AT model's metrics on a split as kept on the parent run, or None before they are computed."""
        prefix = names.at_prefix(split)
        logged = self.client.get_run(self.parent_run_id).data.metrics
        found = {k.removeprefix(prefix): v for k, v in logged.items() if k.startswith(prefix)}
        return found if names.STD_ACC in found else None

    def log_at_metrics(self, split: str, metrics: dict[str, float]) -> dict[str, float]:
        self.log_metrics(self.parent_run_id, {names.at_prefix(split) + k: v for k, v in metrics.items()})
        return metrics

    def log_model(self, run_id: str, model) -> None:
        """The model as an MLflow model of `run_id` (once): mlflow.pytorch.load_model("runs:/<run>/model").

        Pickled (not torch.export's pt2) so it loads back as the same nn.Module; a user's own class travels as
        its file (code_paths). MLflow's caution about pickle (loading one runs code) is left out of the output: this
        is the user's own model, written by their own sweep; `rift-sweep export` gives a weights-only file."""
        import mlflow
        import mlflow.pytorch

        if self.client.get_run(run_id).data.tags.get(names.MODEL_LOGGED_TAG) == "true":
            return
        code_file = user_code_file(self.config)
        code = [str(code_file)] if code_file else None
        mlflow.set_tracking_uri(self.uri)
        caution = logging.getLogger("mlflow.pytorch")
        level = caution.level
        caution.setLevel(logging.ERROR)
        try:
            with mlflow.start_run(run_id=run_id):
                mlflow.pytorch.log_model(
                    model.cpu().eval(),
                    name="model",
                    serialization_format="pickle",
                    code_paths=code,
                    pip_requirements=["torch"],
                )
        finally:
            caution.setLevel(level)
        self.client.set_tag(run_id, names.MODEL_LOGGED_TAG, "true")

    def register_model(self, run_id: str, name: str, model) -> str:
        """Put the run's MLflow model in the model registry under `name`; returns "name/version"."""
        import mlflow

        self.log_model(run_id, model)
        mlflow.set_tracking_uri(self.uri)
        version = mlflow.register_model(f"runs:/{run_id}/model", name)
        return f"{version.name}/{version.version}"

    def finish_parent(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_run_id, status=status)


def user_code_file(config: SweepConfig) -> Path | None:
    """The file of a `model.target` that names one (FILE.py:Name), else None."""
    target = config.model.target
    file = target.rpartition(":")[0] if target else ""
    return Path(file) if file.endswith(".py") else None


def find_parent_run(client: MlflowClient, experiment_id: str, config: SweepConfig):
    """The sweep's parent run: its name and its output folder (compared here, so any path works)."""
    runs = client.search_runs(
        [experiment_id],
        tag_filter(**{names.SWEEP_TAG: config.name}),
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    return next((r for r in runs if r.data.tags.get(names.OUTPUT_TAG) == str(config.output_path)), None)


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, status: str | None = None) -> list:
    query = tag_filter(**{names.PARENT_TAG: parent_run_id}) + (f" and attributes.status = '{status}'" if status else "")
    return client.search_runs([experiment_id], query, max_results=50_000)


def close_orphaned_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> int:
    """Mark KILLED the children left RUNNING (by an interruption or a hard kill); returns how many."""
    runs = child_runs(client, experiment_id, parent_run_id, status="RUNNING")
    for run in runs:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)
