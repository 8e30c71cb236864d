"""MLflow, in one place: one experiment per (dataset, model), one parent run per sweep, children per trial.

Embedded default: a sqlite store and an artifact folder under the sweep's output folder (the plain-folder
store refuses to run without MLFLOW_ALLOW_FILE_STORE). `tracking.uri` may name a server instead.
No Ray here: `rift-sweep ui` and `report` read the store without starting anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.core.files import file_sha256
from rift_sweep.core.mrc import MRCResult
from rift_sweep.orchestration.ui_view import RUN_COLOR_TAG, run_color, view_tag, view_url
from rift_sweep.presentation.tables import describe_model
from rift_sweep.procedure.records import FineTune, Front, Model, Trial, TrialReport


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

    def start_parent(self) -> None:
        """The sweep's run RUNNING again (a resumed or carried-on sweep)."""
        self.client.update_run(self.parent_run_id, "RUNNING")

    def log_artifacts(self, files: list[Path]) -> None:
        for file in files:
            self.client.log_artifact(self.parent_run_id, str(file))

    def close_orphaned_runs(self) -> int:
        return close_orphaned_runs(self.client, self.experiment_id, self.parent_run_id)

    def trial_runs(self) -> TrialRuns:
        return TrialRuns(self.uri, self.experiment_id, self.parent_run_id, self.config.seed)

    def where(self) -> str:
        """Where a finished sweep's results are: the front's artifacts and the UI."""
        artifacts = self.client.get_run(self.parent_run_id).info.artifact_uri
        return (
            f"picture and tables: {artifacts}/front.html (interactive), front.png, front.md, models.csv\n"
            f"MLflow UI: {self.ui_hint()}"
        )

    def ui_hint(self) -> str:
        """How to see the sweep's front in the UI: its view's URLs on a server, else the command that serves it."""
        if self.uri.startswith(("http://", "https://")):
            return "the front: {}\n  its table: {}".format(*self.view_urls(self.uri.rstrip("/") + "/"))
        return f"rift-sweep ui --sweep {self.config.name} --output {self.config.output_path}"

    def log_mrc(self, results: list[MRCResult], chosen: list[str], table_path: Path) -> None:
        """The MRC table (Parquet), the bar chart, and the chosen module(s) on the parent run."""
        from rift_sweep.presentation.plots import mrc_bar_chart  # matplotlib: only where a picture is drawn

        run_id = self.parent_run_id
        self.client.log_artifact(run_id, str(table_path), "mrc")
        with tempfile.TemporaryDirectory() as tmp:
            chart = mrc_bar_chart(results, chosen, Path(tmp) / "mrc.png")
            self.client.log_artifact(run_id, str(chart), "mrc")
            ranked = Path(tmp) / "mrc_ranked.json"
            ranked.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
            self.client.log_artifact(run_id, str(ranked), "mrc")
        self.client.set_tag(run_id, names.MODULE_TAG, ",".join(chosen))
        self.client.set_tag(run_id, names.MRC_TABLE_TAG, table_path.name)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_at_metrics(self, split: str, metrics: dict[str, float]) -> dict[str, float]:
        self.log_metrics(self.parent_run_id, {names.at_prefix(split) + k: v for k, v in metrics.items()})
        return metrics

    def trials(self) -> list[Trial]:
        """The sweep's finished Tune trials (their runs), oldest id first."""
        runs = child_runs(self.client, self.experiment_id, self.parent_run_id, status="FINISHED")
        trials = [
            _trial_of(run) for run in runs if run.data.tags.get(names.KIND_TAG, names.KIND_TRIAL) == names.KIND_TRIAL
        ]
        return sorted(trials, key=lambda t: t.trial_id)

    def logged_models(self) -> dict[str, Model]:
        """The sweep's model runs, read back as records, by model key."""
        query = tag_filter(**{names.SWEEP_RUN_TAG: self.parent_run_id, names.KIND_TAG: names.KIND_MODEL})
        runs = self.client.search_runs([self.experiment_id], query, max_results=50_000)
        return {run.data.tags[names.MODEL_KEY_TAG]: _model_of(run) for run in runs}

    def log_models(self, front: Front, trials: list[Trial]) -> Front:
        """One run per evaluated model (created once, found again by its key): under the run of the trial that made
        its fine-tune (the AT model under the sweep's run), tagged pareto / recommended / screened, named so that the
        front reads in the UI; returns the front with each model's run id."""
        logged, parents = self.logged_models(), {t.trial_id: t.run_id for t in trials}
        models = []
        for model in front.models:
            run_id = logged[model.key].run_id if model.key in logged else self._new_model_run(model, parents)
            self._describe_model_run(run_id, model, front)
            models.append(dataclasses.replace(model, run_id=run_id))
        recommended = next((m for m in models if front.recommended and m.key == front.recommended.key), None)
        self._set_view(models)
        return dataclasses.replace(front, models=models, recommended=recommended)

    def _set_view(self, models: list[Model]) -> None:
        """The experiment's stored UI view of this sweep's models (ui_view): the scatter and the columns."""
        tag, value = view_tag(sorted({key for m in models for key in m.metrics()}), sweep_run_id=self.parent_run_id)
        self.client.set_experiment_tag(self.experiment_id, tag, value)

    def view_urls(self, base_url: str) -> tuple[str, str]:
        """The UI's URLs of this sweep's front: its scatter, and its table."""
        return tuple(
            view_url(base_url, self.experiment_id, sweep_run_id=self.parent_run_id, table=table)
            for table in (False, True)
        )

    def _new_model_run(self, model: Model, parents: dict[str, str]) -> str:
        parent = self.parent_run_id if model.is_at else parents.get(model.finetune.trial_id, self.parent_run_id)
        tags = {
            names.PARENT_TAG: parent,
            names.SWEEP_RUN_TAG: self.parent_run_id,
            names.KIND_TAG: names.KIND_MODEL,
            names.MODEL_KEY_TAG: model.key,
        }
        ft = model.finetune
        if ft is not None:
            tags.update({names.TRIAL_TAG: ft.trial_id, names.FINETUNE_KEY_TAG: ft.key})
        params = {names.ALPHA: model.alpha, **(ft.params() if ft is not None and not model.is_at else {})}
        run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        self.log_metrics(run_id, model.metrics(""))
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def _describe_model_run(self, run_id: str, model: Model, front: Front) -> None:
        """Tags and name that may change when the sweep grows (front, recommended), and test results once known."""
        recommended = front.recommended is not None and model.key == front.recommended.key
        on_front = model.key in front.on_front
        mark = "recommended · " if recommended else "front · " if on_front else ""
        tags = {
            "mlflow.runName": mark + describe_model(model),
            RUN_COLOR_TAG: run_color(at=model.is_at, on_front=on_front, recommended=recommended),
            names.PARETO_TAG: str(on_front).lower(),
            names.RECOMMENDED_TAG: str(recommended).lower(),
            names.SCREENED_TAG: str(model.val.screened).lower(),
        }
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if model.test is not None:
            self.log_metrics(run_id, model.metrics(names.TEST_PREFIX))

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


class TrialRuns:
    """One MLflow run per Tune trial, under the sweep's run, found by its tag (not an in-memory map): a resumed sweep,
    even after a hard kill, reuses the run instead of duplicating it. Pickles without its client (Tune keeps it in its
    experiment state, in the callback that writes through it)."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, seed: int) -> None:
        self.uri, self.experiment_id, self.parent_run_id, self.seed = uri, experiment_id, parent_run_id, seed
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_runs": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    def run_id(self, trial_id: str) -> str:
        if trial_id not in self._runs:
            query = tag_filter(**{names.PARENT_TAG: self.parent_run_id, names.TRIAL_TAG: trial_id})
            found = self.client.search_runs([self.experiment_id], query, max_results=1)
            tags = {names.PARENT_TAG: self.parent_run_id, names.TRIAL_TAG: trial_id, names.KIND_TAG: names.KIND_TRIAL}
            run = (
                found[0]
                if found
                else self.client.create_run(self.experiment_id, run_name=f"trial-{trial_id}", tags=tags)
            )
            self._runs[trial_id] = run.info.run_id
        return self._runs[trial_id]

    def finished(self, trial_id: str) -> bool:
        """A hard kill can land after a trial's run was closed but before Tune saved that: Tune then runs the trial
        again. Its run keeps the first result; the re-run logs nothing twice."""
        return self.client.get_run(self.run_id(trial_id)).info.status == "FINISHED"

    def start(self, trial_id: str, params: dict[str, object]) -> None:
        """The trial's run RUNNING, with its sampled parameters (and the seed) where not logged yet."""
        run_id = self.run_id(trial_id)
        self.client.update_run(run_id, status="RUNNING")
        self._log_new_params(run_id, {**params, "seed": self.seed})

    def progress(self, trial_id: str, pid: int | None, steps: dict[str, tuple[float, int]]) -> None:
        """An interim report: the trial's process, and metrics each at its own step ({name: (value, step)})."""
        run_id = self.run_id(trial_id)
        if pid is not None:  # which process runs the trial: for debugging, and to find it from outside
            self.client.set_tag(run_id, names.PID_TAG, str(pid))
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(value), now, int(step)) for k, (value, step) in steps.items()]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def finish(self, trial_id: str, report: TrialReport) -> None:
        """The trial's own α, its scores and cost, the fine-tune it used; the run FINISHED (read back: trials())."""
        run_id, ft = self.run_id(trial_id), report.finetune
        now = int(time.time() * 1000)
        flat = {**report.scores.metrics(), **dataclasses.asdict(report.cost)}
        metrics = [Metric(k, float(v), now, 0) for k, v in flat.items()]
        for start in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[start : start + 900])
        self._log_new_params(run_id, {**ft.params(), names.ALPHA: report.alpha})
        tags = [RunTag(names.FINETUNE_KEY_TAG, ft.key), RunTag(names.FINETUNE_REUSED_TAG, str(report.reused))]
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, "FINISHED")

    def fail(self, trial_id: str) -> None:
        self.client.set_terminated(self.run_id(trial_id), "FAILED")

    def close_orphans(self) -> int:
        """Finished trials closed their runs; what is still RUNNING was paused or lost (KILLED). A resumed trial finds
        its run by tag and marks it RUNNING again."""
        return close_orphaned_runs(self.client, self.experiment_id, self.parent_run_id)

    def _log_new_params(self, run_id: str, params: dict[str, object]) -> None:
        """MLflow refuses a param logged again with another value: a resumed trial keeps the first."""
        existing = self.client.get_run(run_id).data.params
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items() if k not in existing])


def user_code_file(config: SweepConfig) -> Path | None:
    """The file of a `model.target` that names one (FILE.py:Name), else None."""
    target = config.model.target
    file = target.rpartition(":")[0] if target else ""
    return Path(file) if file.endswith(".py") else None


def _finetune_of(run) -> FineTune | None:
    """The fine-tune a trial or model run names (its tags and params); None for the AT model's run. With _alpha_of,
    the one place MLflow's string params become numbers again."""
    params, tags = run.data.params, run.data.tags
    if names.FINETUNE_KEY_TAG not in tags:
        return None
    return FineTune(
        key=tags[names.FINETUNE_KEY_TAG],
        module=params[names.MODULE],
        lr=float(params[names.LR]),
        epochs=int(params[names.EPOCHS]),
        trial_id=tags[names.TRIAL_TAG],
    )


def _alpha_of(run) -> float:
    return float(run.data.params[names.ALPHA])


def _trial_of(run) -> Trial:
    """A trial run as its record (the inverse of TrialRuns.finish): the fine-tune it used and its own α."""
    return Trial(
        trial_id=run.data.tags[names.TRIAL_TAG],
        run_id=run.info.run_id,
        finetune=_finetune_of(run),
        alpha=_alpha_of(run),
        reused=run.data.tags.get(names.FINETUNE_REUSED_TAG) == "True",
    )


def _model_of(run) -> Model:
    """A model run as its record (the inverse of SweepTracker._new_model_run and _describe_model_run)."""
    return Model.from_metrics(_finetune_of(run), _alpha_of(run), run.data.metrics, run.info.run_id)


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
