"""Tune → MLflow: one child run per Tune trial, nested under the sweep's parent run.

A trial's run is found by its tag, not by an in-memory map, so a resumed sweep (even after a hard kill)
reuses the run instead of duplicating it; runs left RUNNING by a lost trial are closed as KILLED.
"""

from __future__ import annotations

import time

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from tqdm.auto import tqdm

from rift_sweep import names
from rift_sweep.orchestration.tracking import close_orphaned_runs, tag_filter

RESOLVED_PARAMS = ("module", "lr", "epochs", "alpha")
# Interim metric -> the counter that is its MLflow step. Not Tune's training_iteration: that restarts from the
# restored checkpoint after a resume, which would put two values at one step.
INTERIM_METRICS = {"epoch": "epoch", "ft_val_acc": "epoch", "alpha_points_done": "alpha_points_done"}
TIMING_METRICS = ("finetune_seconds", "eval_seconds", "trial_seconds", "best_epoch", "alpha_points_evaluated")
COUNT_METRICS = (names.IMAGES, names.ROB_IMAGES)  # what its accuracies rest on


def is_accuracy(key: str, value) -> bool:
    """An accuracy (or its interval bound) of the objectives or of one corruption."""
    base = key.removesuffix(names.INTERVAL_SUFFIXES[0]).removesuffix(names.INTERVAL_SUFFIXES[1])
    return (base in names.OBJECTIVES or key.startswith(names.OOD_PER_CORRUPTION_PREFIX)) and isinstance(
        value, (int, float)
    )


class MLflowTrialCallback(Callback):
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
            query = tag_filter(**{names.PARENT_TAG: self.parent_run_id, names.TRIAL_TAG: trial_id})
            found = self.client.search_runs([self.experiment_id], query, max_results=1)
            if found:
                self._runs[trial_id] = found[0].info.run_id
            else:
                run = self.client.create_run(
                    self.experiment_id,
                    run_name=f"trial-{trial_id}",
                    tags={
                        names.PARENT_TAG: self.parent_run_id,
                        names.TRIAL_TAG: trial_id,
                        names.KIND_TAG: names.KIND_TRIAL,
                    },
                )
                self._runs[trial_id] = run.info.run_id
        return self._runs[trial_id]

    def _already_finished(self, trial) -> bool:
        """A hard kill can land after a trial's run was closed but before Tune saved that: Tune then runs the
        trial again. Its run keeps the first result; the re-run logs nothing twice."""
        return self.client.get_run(self.run_id(trial.trial_id)).info.status == "FINISHED"

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if self._already_finished(trial):
            return
        run_id = self.run_id(trial.trial_id)
        self.client.update_run(run_id, status="RUNNING")
        existing = self.client.get_run(run_id).data.params
        params = [Param(k, str(v)) for k, v in trial.config.items() if k in RESOLVED_PARAMS and k not in existing]
        self.client.log_batch(run_id, params=params + ([] if "seed" in existing else [Param("seed", str(self.seed))]))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self._already_finished(trial):
            return
        if "pid" in result:  # which process runs the trial: for debugging, and to find it from outside
            self.client.set_tag(self.run_id(trial.trial_id), names.PID_TAG, str(result["pid"]))
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, int(result[INTERIM_METRICS[k]]))
            for k, v in result.items()
            if k in INTERIM_METRICS and isinstance(v, (int, float))
        ]
        if metrics:
            self.client.log_batch(self.run_id(trial.trial_id), metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self._already_finished(trial):
            return
        result, run_id = trial.last_result, self.run_id(trial.trial_id)
        now = int(time.time() * 1000)
        # Its own α's accuracies (every α point of its fine-tune is a model run of its own: orchestration.front).
        metrics = [Metric(k, float(v), now, 0) for k, v in result.items() if is_accuracy(k, v)]
        metrics += [Metric(k, float(result[k]), now, 0) for k in (*TIMING_METRICS, *COUNT_METRICS) if k in result]
        existing = self.client.get_run(run_id).data.params
        params = [Param(k, str(result[k])) for k in RESOLVED_PARAMS if k in result and k not in existing]
        tags = [
            RunTag(names.FINETUNE_KEY_TAG, str(result.get("finetune_key"))),
            RunTag(names.FINETUNE_REUSED_TAG, str(result.get("finetune_reused"))),
        ]
        for start in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[start : start + 900])
        self.client.log_batch(run_id, params=params, tags=tags)
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.client.set_terminated(self.run_id(trial.trial_id), "FAILED")

    def on_experiment_end(self, trials, **info) -> None:
        # Finished trials closed their runs; what is still RUNNING was paused or lost. A resumed trial
        # finds its run by tag and marks it RUNNING again.
        close_orphaned_runs(self.client, self.experiment_id, self.parent_run_id)


class ProgressCallback(Callback):
    """What a user watches: one line per finished trial and a bar over the sweep (Tune's own tables only with
    --verbose)."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total, self.done = total, done
        self._bar = None

    def __getstate__(self) -> dict:  # Tune pickles callbacks into its experiment state; a bar does not pickle
        return {**self.__dict__, "_bar": None}

    @property
    def bar(self) -> tqdm:
        if self._bar is None:
            # A bar on a terminal only (disable=None): in a log file its carriage returns would split the lines.
            self._bar = tqdm(
                total=self.total, initial=self.done, desc="trials", unit="trial", leave=False, disable=None
            )
        return self._bar

    def setup(self, **info) -> None:
        self.bar.refresh()  # the bar's clock starts with the sweep, not with its first finished trial

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        r = trial.last_result
        if names.STD_ACC not in r:
            return
        self.bar.write(
            f"trial {trial.trial_id}  lr {r['lr']:.2e}  epochs {r['epochs']:>2}  α {r['alpha']:.2f}  "
            f"val std {_with_interval(r, names.STD_ACC)}  rob {_with_interval(r, names.ROB_ACC)}  "
            f"{r.get('trial_seconds', 0):.0f} s" + ("  (fine-tune reused)" if r.get("finetune_reused") else "")
        )
        self.bar.update()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.bar.write(f"trial {trial.trial_id} failed (--verbose shows Tune's report): {trial.error_file}")

    def on_experiment_end(self, trials, **info) -> None:
        if self._bar is not None:
            self._bar.close()


def _with_interval(result: dict, key: str) -> str:
    low, high = result.get(f"{key}_low"), result.get(f"{key}_high")
    return f"{result[key]:.2f}" + (f"±{(high - low) / 2:.2f}" if low is not None and high is not None else "")
