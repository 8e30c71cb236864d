"""Tune's events → MLflow (one child run per trial, through tracking.TrialRuns) and the terminal (a line per trial)."""

from __future__ import annotations

from ray.tune import Callback
from tqdm.auto import tqdm

from rift_sweep import names
from rift_sweep.orchestration.tracking import TrialRuns
from rift_sweep.procedure.records import Accuracy, TrialReport

# Interim metric -> the counter that is its MLflow step. Not Tune's training_iteration: that restarts from the
# restored checkpoint after a resume, which would put two values at one step.
INTERIM_METRICS = {
    names.FT_EPOCH: names.FT_EPOCH,
    names.FT_VAL_ACC: names.FT_EPOCH,
    names.ALPHA_POINTS_DONE: names.ALPHA_POINTS_DONE,
}


class MLflowTrialCallback(Callback):
    """Tune's events, written through tracking.TrialRuns: a run per trial, its interim metrics, its result."""

    def __init__(self, runs: TrialRuns) -> None:
        self.runs = runs

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if not self.runs.finished(trial.trial_id):
            self.runs.start(trial.trial_id, {k: v for k, v in trial.config.items() if k in names.TRIAL_PARAMS})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.runs.finished(trial.trial_id):
            return
        steps = {k: (v, result[INTERIM_METRICS[k]]) for k, v in result.items() if k in INTERIM_METRICS}
        self.runs.progress(trial.trial_id, result.get(names.PID), steps)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        report = TrialReport.from_result(trial.last_result)
        if report is not None and not self.runs.finished(trial.trial_id):
            self.runs.finish(trial.trial_id, report)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.runs.fail(trial.trial_id)

    def on_experiment_end(self, trials, **info) -> None:
        self.runs.close_orphans()


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
        report = TrialReport.from_result(trial.last_result)
        if report is None:
            return
        ft, scores = report.finetune, report.scores
        self.bar.write(
            f"trial {trial.trial_id}  lr {ft.lr:.2e}  epochs {ft.epochs:>2}  α {report.alpha:.2f}  "
            f"val std {_with_interval(scores.std)}  rob {_with_interval(scores.rob)}  "
            f"{report.cost.trial_seconds:.0f} s" + ("  (fine-tune reused)" if report.reused else "")
        )
        self.bar.update()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.bar.write(f"trial {trial.trial_id} failed (--verbose shows Tune's report): {trial.error_file}")

    def on_experiment_end(self, trials, **info) -> None:
        if self._bar is not None:
            self._bar.close()


def _with_interval(accuracy: Accuracy) -> str:
    return f"{accuracy.value:.2f}±{accuracy.half_width:.2f}"
