"""Stage 2: Ray Tune + Optuna search over the fine-tuning lr, epochs and the interpolation α.

A trial fine-tunes the chosen module at (lr, epochs) — or takes that fine-tune from the cache — evaluates the
whole α path on validation, and reports the point at its own α. The rest of the path reaches the Optuna study
as already-evaluated points, so exploring α costs evaluation only. Tune checkpoints every fine-tuning epoch,
so a crashed trial resumes where it stopped (FailureConfig) and its result still reaches Optuna.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import optuna
import torch
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from rift_sweep.config import SweepConfig
from rift_sweep.experiment import Experiment, load_experiment
from rift_sweep.finetune import FinetuneSettings, FinetuneState, finetune_module
from rift_sweep.interpolate import interpolate_state
from rift_sweep.rift import alpha_path
from rift_sweep.selection import choose_alpha

CHECKPOINT_FILE = "finetune_state.pt"


# --- the search space and the searcher -------------------------------------------------------------------

def search_space(config: SweepConfig, modules: list[str]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions of the searched parameters; a module choice only when several modules compete."""
    space = {}
    for name, rng in config.search.space.items():
        if name == "epochs":
            space[name] = optuna.distributions.IntDistribution(int(rng.low), int(rng.high))
        else:
            space[name] = optuna.distributions.FloatDistribution(rng.low, rng.high, log=rng.log)
    if len(modules) > 1:
        space["module"] = optuna.distributions.CategoricalDistribution(modules)
    return space


def make_sampler(config: SweepConfig) -> optuna.samplers.BaseSampler:
    search = config.search
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=search.seed, population_size=max(4, min(50, search.num_samples)))
    return optuna.samplers.TPESampler(seed=search.seed, constant_liar=True)


class MultiObjectiveOptunaSearch(OptunaSearch):
    """OptunaSearch that also learns from each trial's α path.

    Ray's add_evaluated_point passes `value=` to optuna.trial.create_trial, which fails for several objectives
    ("must be real number, not list"); here the point is created with `values=` on the same distributions.
    """

    def add_evaluated_point(self, parameters: dict, value, error: bool = False, pruned: bool = False,
                            intermediate_values=None) -> None:
        if not isinstance(value, (list, tuple)):
            return super().add_evaluated_point(parameters, value, error, pruned, intermediate_values)
        trial = optuna.trial.create_trial(params=parameters, distributions=self._space, values=list(value),
                                          state=optuna.trial.TrialState.COMPLETE)
        self._ot_study.add_trial(trial)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error)
        if error or not result or "alpha" not in self._space:
            return
        params = {k: result[k] for k in self._space if k != "alpha"}
        alpha_range = self._space["alpha"]
        for row in result.get("alpha_path", []):
            if row["alpha"] != result["alpha"] and alpha_range.low <= row["alpha"] <= alpha_range.high:
                self.add_evaluated_point({**params, "alpha": row["alpha"]}, [row[m] for m in self.metric])


def make_searcher(config: SweepConfig, modules: list[str]) -> MultiObjectiveOptunaSearch:
    objectives = list(config.search.objectives)
    return MultiObjectiveOptunaSearch(space=search_space(config, modules), metric=objectives,
                                      mode=["max"] * len(objectives), sampler=make_sampler(config))


# --- the fine-tune cache --------------------------------------------------------------------------------

def finetune_key(config: SweepConfig, checkpoint_sha256: str, module: str, settings: FinetuneSettings) -> str:
    """Hash of everything a fine-tune (and its α path) depends on."""
    payload = {"checkpoint": checkpoint_sha256, "module": module, "finetune": dataclasses.asdict(settings),
               "seed": config.seed, "data": dataclasses.asdict(config.data), "attack": dataclasses.asdict(config.attack),
               "ood": dataclasses.asdict(config.ood), "alpha_grid": list(config.alpha.grid)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finetune_cache_path(config: SweepConfig, key: str) -> Path:
    return config.output_path / "cache" / "finetune" / f"{key}.pt"


def save_atomically(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_cached_finetune(config: SweepConfig, key: str) -> dict | None:
    path = finetune_cache_path(config, key)
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


# --- the trial ------------------------------------------------------------------------------------------

def trial_choice(config: SweepConfig, params: dict, modules: list[str]) -> tuple[str, FinetuneSettings, float | None]:
    """(module, fine-tune settings, α or None) of a trial; unsearched parameters keep their configured values."""
    settings = dataclasses.replace(config.finetune, lr=float(params.get("lr", config.finetune.lr)),
                                   epochs=int(params.get("epochs", config.finetune.epochs)))
    alpha = params.get("alpha")
    return params.get("module", modules[0]), settings, None if alpha is None else float(alpha)


def rift_trial(params: dict, *, config: SweepConfig, modules: list[str], at_val: dict) -> None:
    """One Tune trial: fine-tune (or reuse), evaluate the α path on validation, report the trial's α."""
    start = time.perf_counter()
    exp = load_experiment(config)
    module, settings, alpha = trial_choice(config, params, modules)
    key = finetune_key(config, exp.checkpoint_sha256, module, settings)
    cached = load_cached_finetune(config, key)
    reused = cached is not None
    if cached is None:
        cached = _finetune_and_evaluate(exp, module, settings)
        save_atomically(cached, finetune_cache_path(config, key))
    path = cached["alpha_path"]
    if alpha is None:  # α not searched: the paper's rule picks it from the validation path
        chosen = choose_alpha(path, at_rob_acc=at_val["rob_acc"], tolerance=config.alpha.tolerance)
        alpha = chosen["alpha"] if chosen else 0.0
    eval_start = time.perf_counter()
    metrics = next((row for row in path if row["alpha"] == alpha), None)
    if metrics is None:
        metrics = exp.evaluate(interpolate_state(exp.at_state, cached["best_state"], alpha), "val")
    eval_seconds = time.perf_counter() - eval_start + (0.0 if reused else cached["eval_seconds"])
    tune.report({
        **{k: v for k, v in metrics.items() if k != "alpha"},
        "alpha": alpha, "lr": settings.lr, "epochs": settings.epochs, "module": module,
        "finetune_key": key, "finetune_reused": reused, "best_epoch": cached["best_epoch"],
        "alpha_path": path, "finetune_seconds": 0.0 if reused else cached["finetune_seconds"],
        "eval_seconds": eval_seconds, "trial_seconds": time.perf_counter() - start, "pid": os.getpid(),
    })


def _finetune_and_evaluate(exp: Experiment, module: str, settings: FinetuneSettings) -> dict:
    """Fine-tune with a Tune checkpoint after every epoch (a retried trial resumes there), then the α path."""
    info = exp.splits.info
    resume = _restore_state()
    model = exp.load_state(exp.at_state)
    result = finetune_module(model, module, exp.splits.train, exp.splits.val, settings, augment=info.augment,
                             crop_padding=info.crop_padding, seed=exp.config.seed, device=exp.device,
                             resume=resume, on_epoch=_report_epoch)
    eval_start = time.perf_counter()
    path = alpha_path(exp, result.best_state, exp.config.alpha.grid, progress=False)
    return {"best_state": result.best_state, "best_epoch": result.best_epoch, "val_acc": result.val_acc,
            "alpha_path": path, "finetune_seconds": result.seconds, "eval_seconds": time.perf_counter() - eval_start,
            "module": module}


def _report_epoch(state: FinetuneState) -> None:
    with tempfile.TemporaryDirectory() as folder:
        torch.save(dataclasses.asdict(state), Path(folder) / CHECKPOINT_FILE)
        tune.report({"epoch": state.epochs_done, "ft_val_acc": state.val_acc[-1], "pid": os.getpid()},
                    checkpoint=tune.Checkpoint.from_directory(folder))


def _restore_state() -> FinetuneState | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return FinetuneState(**torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True))


# --- the driver -----------------------------------------------------------------------------------------

@dataclasses.dataclass
class SweepOutcome:
    finished: int  # trials with a result
    expected: int  # num_samples
    modules: list[str]
    experiment_path: Path
    seconds: float

    @property
    def complete(self) -> bool:
        return self.finished >= self.expected


def experiment_path(config: SweepConfig) -> Path:
    return config.output_path / "tune" / "sweep"


def run_sweep(config: SweepConfig, *, resume: bool = False, workers: int | None = None, progress: bool = True,
              tracker=None) -> SweepOutcome:
    """Stage 1 (or its cache), then the Tune + Optuna search; Ray must be initialised."""
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

    from rift_sweep.mrc_pool import run_mrc_stage
    from rift_sweep.report import at_metrics
    from rift_sweep.resources import worker_shape
    from rift_sweep.rift import choose_modules
    from rift_sweep.tracking import MLflowTrialCallback, SweepTracker, close_orphaned_runs

    start = time.perf_counter()
    path = experiment_path(config)
    _check_resume(path, resume)
    # Interim per-epoch reports carry trial checkpoints, not the objectives: only the final report has them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Each epoch checkpoint forces an experiment snapshot (what a resume needs); Tune warns about every one.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    tracker = tracker or SweepTracker(config)
    stage = run_mrc_stage(config, workers=workers, progress=progress)
    modules = choose_modules([r["module"] for r in stage.rows], config.modules)
    tracker.log_mrc(stage.rows, modules, stage.table_path)
    at_val = at_metrics(tracker, "val")
    shape = worker_shape()
    trainable = tune.with_resources(
        tune.with_parameters(rift_trial, config=config, modules=modules, at_val=at_val),
        {"cpu": shape.num_cpus, "gpu": shape.num_gpus})
    if resume:
        close_orphaned_runs(tracker.client, tracker.experiment_id, tracker.parent_run_id)
        tuner = Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False, restart_errored=False)
    else:
        tuner = Tuner(
            trainable,
            tune_config=TuneConfig(num_samples=config.search.num_samples, search_alg=make_searcher(config, modules),
                                   max_concurrent_trials=min(config.search.max_concurrent, shape.count)),
            run_config=RunConfig(
                name=path.name, storage_path=str(path.parent), verbose=1 if progress else 0,
                failure_config=FailureConfig(max_failures=2), checkpoint_config=CheckpointConfig(num_to_keep=1),
                callbacks=[MLflowTrialCallback(tracker.uri, tracker.experiment_id, tracker.parent_run_id, config.seed)],
            ),
        )
    grid = tuner.fit()
    finished = sum(1 for r in grid if r.error is None and "std_acc" in (r.metrics or {}))
    return SweepOutcome(finished, config.search.num_samples, modules, path, time.perf_counter() - start)


def _check_resume(path: Path, resume: bool) -> None:
    from ray.tune import Tuner

    if resume and not Tuner.can_restore(str(path)):
        raise ValueError(f"--resume: no sweep to resume at {path}; start it without --resume")
    if not resume and path.exists():
        raise ValueError(f"a sweep already exists at {path}: carry it on with --resume, "
                         "or give another `name`/--output to start a new one")
