"""Stage 2, the driver: Ray Tune + Optuna run trials (orchestration.trial) drawn by the searcher
(orchestration.searcher) until `search.num_samples` have finished.

Carries on whatever an earlier call left: an interrupted Tune experiment through Tuner.restore, and a finished one
extended by a new experiment whose searcher starts from the old study.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from ray import tune
from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.orchestration.callbacks import MLflowTrialCallback, ProgressCallback
from rift_sweep.orchestration.mrc_pool import StageOne
from rift_sweep.orchestration.resources import worker_shape
from rift_sweep.orchestration.searcher import make_searcher
from rift_sweep.orchestration.tracking import SweepTracker
from rift_sweep.orchestration.trial import rift_trial


@dataclass
class SweepOutcome:
    finished: int  # trials with a result
    expected: int  # num_samples
    seconds: float

    @property
    def complete(self) -> bool:
        return self.finished >= self.expected


def tune_paths(config: SweepConfig) -> list[Path]:
    """Tune's folders of this sweep (Tune calls each an experiment), oldest first: `sweep`, then `sweep-2`, ...
    when --resume --num-samples extended a finished sweep."""
    root = config.output_path / names.TUNE_DIR
    found = [p for p in root.glob(f"{names.TUNE_NAME}*") if p.is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.removeprefix(names.TUNE_NAME).lstrip("-") or 1))


def run_sweep(
    config: SweepConfig, tracker: SweepTracker, stage: StageOne, *, progress: bool = True, verbose: bool = False
) -> SweepOutcome:
    """The Tune + Optuna search after stage 1 (Ray initialised): carry on an interrupted Tune experiment, then start
    one for the trials still missing."""
    start = time.perf_counter()
    _quiet_tune()
    shape = worker_shape(config.device, per_gpu=config.search.trials_per_gpu)
    trainable = tune.with_resources(
        tune.with_parameters(rift_trial, config=config, modules=stage.modules, at=stage.at, shipped=stage.shipped),
        {"cpu": shape.num_cpus, "gpu": shape.num_gpus},
    )
    tracker.close_orphaned_runs()
    paths = tune_paths(config)
    if paths and Tuner.can_restore(str(paths[-1])):
        grid = Tuner.restore(
            str(paths[-1]), trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        ).fit()
        if _stopped_early(grid, paths[-1]):
            return SweepOutcome(finished_trials(tracker), config.search.num_samples, time.perf_counter() - start)
    finished = finished_trials(tracker)
    if finished < config.search.num_samples:  # a new sweep, or more trials (or replacements) for a finished one
        path = config.output_path / names.TUNE_DIR / (names.TUNE_NAME + (f"-{len(paths) + 1}" if paths else ""))
        size = config.search.num_samples - finished
        _segment_file(path).parent.mkdir(parents=True, exist_ok=True)
        _segment_file(path).write_text(json.dumps({"num_samples": size}))
        tuner = _new_tuner(
            config,
            trainable,
            modules=stage.modules,
            path=path,
            num_samples=size,
            slots=shape.count,
            tracker=tracker,
            history=_searcher_study(paths[-1]) if paths else None,
            progress=progress,
            finished=finished,
            verbose=verbose,
        )
        tuner.fit()
    return SweepOutcome(finished_trials(tracker), config.search.num_samples, time.perf_counter() - start)


def _quiet_tune() -> None:
    # Interim reports carry trial checkpoints, not the objectives: only the final report has them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Each checkpoint forces an experiment snapshot (what a resume needs); Tune warns about every one.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def finished_trials(tracker: SweepTracker) -> int:
    """Trials with a result, across every Tune experiment of the sweep: its FINISHED trial runs."""
    return len({trial.trial_id for trial in tracker.trials()})


def _segment_file(path: Path) -> Path:
    return path.parent / f"{path.name}.json"


def _stopped_early(grid, path: Path) -> bool:
    """Ctrl-C or SIGTERM stopped the experiment before each of its trials ended (finished or failed)."""
    size = json.loads(_segment_file(path).read_text())["num_samples"]
    return grid.num_terminated + grid.num_errors < size


def _new_tuner(
    config: SweepConfig,
    trainable,
    *,
    modules: list[str],
    path: Path,
    num_samples: int,
    slots: int,
    tracker: SweepTracker,
    history: optuna.Study | None,
    progress: bool,
    finished: int,
    verbose: bool,
) -> Tuner:
    searcher = make_searcher(config, modules, history=history)
    callbacks = [MLflowTrialCallback(tracker.trial_runs())]
    if progress:
        callbacks.append(ProgressCallback(config.search.num_samples, finished))
    return Tuner(
        trainable,
        tune_config=TuneConfig(
            num_samples=num_samples,
            search_alg=searcher,
            max_concurrent_trials=min(config.search.max_concurrent, slots),
            reuse_actors=True,  # a new trial in the last one's process: no start-up, its Experiment already loaded
        ),
        run_config=RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            verbose=1 if verbose else 0,  # Tune's status tables: only with --verbose
            failure_config=FailureConfig(max_failures=2),
            # Three, not one: a hard kill between a new checkpoint and Tune's next experiment snapshot leaves
            # the snapshot naming the previous checkpoint, which must still exist for the resume.
            checkpoint_config=CheckpointConfig(num_to_keep=3),
            callbacks=callbacks,
        ),
    )


def _searcher_study(path: Path) -> optuna.Study | None:
    """The Optuna study a finished Tune experiment's searcher saved (Tune's own pickle, in the sweep's own folder;
    Tune itself unpickles it on a restore), the newest."""
    states = sorted(path.glob("searcher-state-*.pkl"))
    if not states:
        return None
    with open(states[-1], "rb") as handle:
        return pickle.load(handle)["_ot_study"]
