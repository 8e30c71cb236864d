"""Stage 2: Ray Tune + Optuna search over the fine-tuning lr, epochs and the interpolation α.

A trial fine-tunes the chosen module at (lr, epochs) — or takes that fine-tune from the cache — evaluates the
whole α path on validation, and reports the point at its own α. The rest of the path reaches the Optuna study
as already-evaluated points, so exploring α costs evaluation only. Tune checkpoints every fine-tuning epoch, and
the α path's progress is kept in the fine-tune cache after every point, so a crashed or killed trial resumes
where it stopped (FailureConfig, --resume) and its result still reaches Optuna. α = 0 is the AT model: its
validation metrics are measured once per sweep and reused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path

import optuna
import torch
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from rift_sweep import names
from rift_sweep.config import SweepConfig, on_lattice
from rift_sweep.core.finetune import FinetuneResult, FinetuneSettings, FinetuneState
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.orchestration.devices import gpu_job
from rift_sweep.orchestration.workers import Shipped, worker_experiment
from rift_sweep.procedure.experiment import Experiment, load_experiment
from rift_sweep.procedure.finetune_cache import (
    CachedFinetune,
    PartialFinetune,
    finetune_key,
    load_finetune,
    load_partial,
    partial_path,
    save_finetune,
    save_partial,
)
from rift_sweep.procedure.records import AlphaPoint
from rift_sweep.procedure.steps import alpha_by_rule, alpha_path, finetune

CHECKPOINT_FILE = "trial_state.pt"


# --- the search space and the searcher -------------------------------------------------------------------


def search_space(config: SweepConfig, modules: list[str]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions of the searched parameters; a module choice only when several modules compete."""
    space = {}
    for name, rng in config.search.space.items():
        if name == "epochs":
            space[name] = optuna.distributions.IntDistribution(int(rng.low), int(rng.high), step=int(rng.step or 1))
        else:
            space[name] = optuna.distributions.FloatDistribution(rng.low, rng.high, log=rng.log, step=rng.step)
    if len(modules) > 1:
        space["module"] = optuna.distributions.CategoricalDistribution(modules)
    return space


def make_sampler(config: SweepConfig) -> optuna.samplers.BaseSampler:
    search = config.search
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=search.seed, population_size=max(4, min(50, search.num_samples)))
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed, constant_liar=True)


PAPER_ALPHA = 0.8  # the paper's ablation puts α* in 0.6–0.9; the trial evaluates its whole α path anyway


def paper_point(config: SweepConfig, modules: list[str]) -> dict:
    """The paper's procedure as the first trial: its lr and epochs on the lowest-MRC module. Tune wants a value for
    every searched parameter; α is the one the trial reports, while its whole α path (the rule's α included)
    reaches the study."""
    space = config.search.space
    point = {"lr": config.finetune.lr, "epochs": config.finetune.epochs, "module": modules[0]}
    if "alpha" in space:
        alpha = space["alpha"]
        allowed = alpha.lattice() if alpha.step else [min(max(PAPER_ALPHA, alpha.low), alpha.high)]
        point["alpha"] = min(allowed, key=lambda a: abs(a - PAPER_ALPHA))
    return {k: v for k, v in point.items() if k in space or (k == "module" and len(modules) > 1)}


class MultiObjectiveOptunaSearch(OptunaSearch):
    """OptunaSearch that also learns from each trial's α path.

    Ray's add_evaluated_point passes `value=` to optuna.trial.create_trial, which fails for several objectives
    ("must be real number, not list"); here the point is created with `values=` on the same distributions.
    """

    def add_evaluated_point(
        self, parameters: dict, value, error: bool = False, pruned: bool = False, intermediate_values=None
    ) -> None:
        if not isinstance(value, (list, tuple)):
            return super().add_evaluated_point(parameters, value, error, pruned, intermediate_values)
        trial = optuna.trial.create_trial(
            params=parameters, distributions=self._space, values=list(value), state=optuna.trial.TrialState.COMPLETE
        )
        self._ot_study.add_trial(trial)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error)
        if error or not result or "alpha" not in self._space:
            return
        params = {k: result[k] for k in self._space if k != "alpha"}
        for row in result.get("alpha_path", []):
            if row["alpha"] != result["alpha"] and _allows(self._space["alpha"], row["alpha"]):
                self.add_evaluated_point({**params, "alpha": row["alpha"]}, [row[m] for m in self.metric])


def _allows(distribution: optuna.distributions.FloatDistribution, value: float) -> bool:
    """Whether `value` lies in the range and, when it has a step, on its lattice (else Optuna refuses the point)."""
    inside = distribution.low <= value <= distribution.high
    return inside and (distribution.step is None or on_lattice(value, distribution.low, distribution.step))


def make_searcher(
    config: SweepConfig, modules: list[str], history: optuna.Study | None = None
) -> MultiObjectiveOptunaSearch:
    """The searcher; `history` (an earlier study of this sweep) is copied in, so an extension starts informed."""
    objectives = list(config.search.objectives)
    first = [paper_point(config, modules)] if config.search.start_from_paper and history is None else None
    searcher = MultiObjectiveOptunaSearch(
        space=search_space(config, modules),
        metric=objectives,
        mode=["max"] * len(objectives),
        sampler=make_sampler(config),
        points_to_evaluate=first,
    )
    for trial in history.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if history else ():
        searcher.add_evaluated_point(trial.params, list(trial.values))
    return searcher


# --- the trial ------------------------------------------------------------------------------------------


def trial_choice(config: SweepConfig, params: dict, modules: list[str]) -> tuple[str, FinetuneSettings, float | None]:
    """(module, fine-tune settings, α or None) of a trial; unsearched parameters keep their configured values."""
    settings = dataclasses.replace(
        config.finetune,
        lr=float(params.get("lr", config.finetune.lr)),
        epochs=int(params.get("epochs", config.finetune.epochs)),
    )
    alpha = params.get("alpha")
    if alpha is not None:  # Optuna's lattice values (0.6000000000000001) name the grid's point (0.6)
        alpha = next((a for a in config.alpha.grid if math.isclose(a, alpha, abs_tol=1e-9)), float(alpha))
    return params.get("module", modules[0]), settings, alpha


def rift_trial(params: dict, *, config: SweepConfig, modules: list[str], at: AlphaPoint, shipped: Shipped) -> None:
    """One Tune trial: fine-tune (or reuse), evaluate the α path on validation, report the trial's α. `at`: the AT
    model on validation (α = 0 of every path)."""
    with gpu_job(f"trial {tune.get_context().get_trial_id()}"):
        _trial(params, worker_experiment(config, shipped), modules, at)


def _trial(params: dict, exp: Experiment, modules: list[str], at: AlphaPoint) -> None:
    start, config = time.perf_counter(), exp.config
    module, settings, alpha = trial_choice(config, params, modules)
    key = finetune_key(config, exp.checkpoint_sha256, module, settings)
    cached = load_finetune(config, key)
    reused = cached is not None
    if cached is None:
        cached = _finetune_and_evaluate(exp, key, module, settings, at, in_full=alpha)
        save_finetune(config, key, cached)
        partial_path(config, key).unlink(missing_ok=True)
    if alpha is None:  # α not searched: the paper's rule picks it from the validation path
        alpha = alpha_by_rule(cached.path, at, config.alpha)
    eval_start = time.perf_counter()
    point = cached.point(alpha)
    scores = point.scores if point is not None else None
    if scores is None or scores.screened:  # off the grid, or screened: all of validation
        scores = exp.evaluate(interpolate_state(exp.at_state, cached.best_state, alpha), "val")
    eval_seconds = time.perf_counter() - eval_start + (0.0 if reused else cached.eval_seconds)
    tune.report(
        {
            **scores.metrics(),
            "alpha": alpha,
            "lr": settings.lr,
            "epochs": settings.epochs,
            "module": module,
            "finetune_key": key,
            "finetune_reused": reused,
            "best_epoch": cached.best_epoch,
            "alpha_path": [{"alpha": p.alpha, **p.scores.metrics()} for p in cached.path],  # for the searcher
            "finetune_seconds": 0.0 if reused else cached.finetune_seconds,
            "eval_seconds": eval_seconds,
            "trial_seconds": time.perf_counter() - start,
            "pid": os.getpid(),
            "alpha_points_evaluated": 0 if reused else cached.points_evaluated,
        }
    )


def _finetune_and_evaluate(
    exp: Experiment, key: str, module: str, settings: FinetuneSettings, at: AlphaPoint, in_full: float | None
) -> CachedFinetune:
    """Fine-tune (a Tune checkpoint after every epoch), then the α path (progress in the fine-tune cache after every
    point; the trial's own α `in_full` never left screened): a retried or resumed trial carries on where it stopped
    instead of starting again."""
    config = exp.config
    partial = load_partial(config, key)
    if partial is not None:  # killed during the α path: the fine-tune and the points done are kept
        state = partial.state
        result = FinetuneResult(state.best_state, state.best_epoch, list(state.val_acc), 0.0)
    else:
        result = finetune(exp, module, settings, resume=_restore_state(), on_epoch=_report_epoch)
        state = FinetuneState(settings.epochs, None, None, result.val_acc, result.best_epoch, result.best_state)
    done = {p.alpha: p for p in (partial.path if partial else [])}
    save_partial(config, key, PartialFinetune(state, list(done.values())))
    evaluated = []

    def report_point(point: AlphaPoint) -> None:
        done[point.alpha] = point
        evaluated.append(point.alpha)
        save_partial(config, key, PartialFinetune(state, list(done.values())))
        tune.report({"alpha_points_done": len(done), "pid": os.getpid()})

    eval_start = time.perf_counter()
    path = alpha_path(
        exp,
        result.best_state,
        at,
        progress=False,
        known=done,
        on_point=report_point,
        in_full=[] if in_full is None else [in_full],
    )
    return CachedFinetune(
        best_state=result.best_state,
        best_epoch=result.best_epoch,
        val_acc=result.val_acc,
        path=path,
        finetune_seconds=result.seconds,
        eval_seconds=time.perf_counter() - eval_start,
        points_evaluated=len(evaluated),
    )


def _report_epoch(state: FinetuneState) -> None:
    with tempfile.TemporaryDirectory() as folder:
        torch.save(dataclasses.asdict(state), Path(folder) / CHECKPOINT_FILE)
        metrics = {"epoch": state.epochs_done, "ft_val_acc": state.val_acc[-1], "pid": os.getpid()}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


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
    config: SweepConfig,
    tracker,
    *,
    workers: int | None = None,
    progress: bool = True,
    verbose: bool = False,
    exp: Experiment | None = None,
) -> SweepOutcome:
    """Stage 1 (or its cache), then the Tune + Optuna search until `search.num_samples` trials have finished;
    Ray must be initialised. Carries on whatever an earlier call left: stage 1 from its cache, an interrupted
    Tune experiment through Tuner.restore, and a finished one extended by a new experiment whose searcher
    starts from the old study."""
    from ray.tune import Tuner

    from rift_sweep.orchestration.front import stage_at
    from rift_sweep.orchestration.mrc_pool import run_mrc_stage, stage_pool
    from rift_sweep.orchestration.resources import worker_shape
    from rift_sweep.orchestration.tracking import close_orphaned_runs
    from rift_sweep.procedure.steps import choose_modules
    from rift_sweep.procedure.tables import describe_at

    start = time.perf_counter()
    # Interim reports carry trial checkpoints, not the objectives: only the final report has them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Each checkpoint forces an experiment snapshot (what a resume needs); Tune warns about every one.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    exp = exp or load_experiment(config, device="cpu")  # the driver only reads weights and data
    with stage_pool(config, exp, workers) as pool:  # stage 1's workers, ended with it
        at = stage_at(tracker, exp, pool, "val")
        if progress:
            print(describe_at(at.scores), flush=True)
        stage = run_mrc_stage(config, progress=progress, exp=exp, pool=pool)
    modules = choose_modules([r["module"] for r in stage.rows], config.modules)
    if progress:
        cached = len(stage.rows) - len(stage.computed)
        print(f"MRC: {len(stage.computed)} module(s) scored, {cached} from the cache; fine-tuning {', '.join(modules)}")
        if stage.skipped:
            print(f"never run in a forward pass, so not scored: {', '.join(stage.skipped)}", flush=True)
    tracker.log_mrc(stage.rows, modules, stage.table_path)
    shape = worker_shape(config.device, per_gpu=config.search.trials_per_gpu)
    shipped = Shipped(pool.data)  # the experiment stage 1 shipped, its validation OOD set included
    trainable = tune.with_resources(
        tune.with_parameters(rift_trial, config=config, modules=modules, at=at, shipped=shipped),
        {"cpu": shape.num_cpus, "gpu": shape.num_gpus},
    )
    close_orphaned_runs(tracker.client, tracker.experiment_id, tracker.parent_run_id)
    paths = tune_paths(config)
    if paths and Tuner.can_restore(str(paths[-1])):
        grid = Tuner.restore(
            str(paths[-1]), trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        ).fit()
        if _stopped_early(grid, paths[-1]):
            return SweepOutcome(
                finished_trials(tracker), config.search.num_samples, modules, time.perf_counter() - start
            )
    finished = finished_trials(tracker)
    if finished < config.search.num_samples:  # a new sweep, or more trials (or replacements) for a finished one
        path = config.output_path / names.TUNE_DIR / (names.TUNE_NAME + (f"-{len(paths) + 1}" if paths else ""))
        size = config.search.num_samples - finished
        _segment_file(path).parent.mkdir(parents=True, exist_ok=True)
        _segment_file(path).write_text(json.dumps({"num_samples": size}))
        previous = _searcher_study(paths[-1]) if paths else None
        _new_tuner(
            config, trainable, modules, path, size, shape.count, tracker, previous, progress, finished, verbose
        ).fit()
        finished = finished_trials(tracker)
    return SweepOutcome(finished, config.search.num_samples, modules, time.perf_counter() - start)


def finished_trials(tracker) -> int:
    """Trials with a result, across every Tune experiment of the sweep: its FINISHED trial runs."""
    return len({trial.trial_id for trial in tracker.trials()})


def _segment_file(path: Path) -> Path:
    return path.parent / f"{path.name}.json"


def _stopped_early(grid, path: Path) -> bool:
    """Ctrl-C or SIGTERM stopped the experiment before each of its trials ended (finished or failed)."""
    size = json.loads(_segment_file(path).read_text())["num_samples"]
    return grid.num_terminated + grid.num_errors < size


def _new_tuner(
    config,
    trainable,
    modules,
    path: Path,
    num_samples: int,
    slots: int,
    tracker,
    previous,
    progress,
    finished: int,
    verbose: bool,
):
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

    from rift_sweep.orchestration.callbacks import MLflowTrialCallback, ProgressCallback

    searcher = make_searcher(config, modules, history=previous)
    callbacks = [MLflowTrialCallback(tracker.uri, tracker.experiment_id, tracker.parent_run_id, config.seed)]
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
    """The Optuna study a finished Tune experiment's searcher saved (Tune's own pickle, the newest)."""
    import pickle

    states = sorted(path.glob("searcher-state-*.pkl"))
    if not states:
        return None
    with open(states[-1], "rb") as handle:
        return pickle.load(handle)["_ot_study"]
