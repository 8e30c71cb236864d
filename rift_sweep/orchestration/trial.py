"""One Tune trial: fine-tune the chosen module at (lr, epochs), or take that fine-tune from the cache, evaluate its whole
α path on validation, and report the point at the trial's own α (a TrialReport).

Tune checkpoints every fine-tuning epoch, and the α path's progress is kept in the fine-tune cache after every point,
so a crashed or killed trial resumes where it stopped (FailureConfig, --resume) and its result still reaches Optuna.
α = 0 is the AT model: its validation metrics are measured once per sweep and reused.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from ray import tune

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.core.finetune import FinetuneResult, FinetuneSettings, FinetuneState
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.orchestration.devices import gpu_job
from rift_sweep.orchestration.workers import Shipped, worker_experiment
from rift_sweep.procedure.experiment import Experiment
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
from rift_sweep.procedure.records import AlphaPoint, FineTune, TrialCost, TrialReport
from rift_sweep.procedure.steps import alpha_by_rule, alpha_path, finetune

CHECKPOINT_FILE = "trial_state.pt"


@dataclass(frozen=True)
class TrialChoice:
    """What a trial runs: the searched values, the configured ones for the rest."""

    module: str
    settings: FinetuneSettings
    alpha: float | None  # None: α not searched, the rule picks it from the path


def trial_choice(config: SweepConfig, params: dict, modules: list[str]) -> TrialChoice:
    settings = dataclasses.replace(
        config.finetune,
        lr=float(params.get(names.LR, config.finetune.lr)),
        epochs=int(params.get(names.EPOCHS, config.finetune.epochs)),
    )
    return TrialChoice(params.get(names.MODULE, modules[0]), settings, params.get(names.ALPHA))


def rift_trial(params: dict, *, config: SweepConfig, modules: list[str], at: AlphaPoint, shipped: Shipped) -> None:
    """Tune's trainable. `at`: the AT model on validation (α = 0 of every path)."""
    trial_id = tune.get_context().get_trial_id()
    with gpu_job(f"trial {trial_id}"):
        report = run_trial(worker_experiment(config, shipped), trial_choice(config, params, modules), at, trial_id)
        tune.report(report.result())


def run_trial(exp: Experiment, choice: TrialChoice, at: AlphaPoint, trial_id: str) -> TrialReport:
    start, config = time.perf_counter(), exp.config
    key = finetune_key(config, exp.checkpoint_sha256, choice.module, choice.settings)
    cached = load_finetune(config, key)
    reused = cached is not None
    if cached is None:
        cached = _finetune_and_evaluate(exp, key, choice, at)
        save_finetune(config, key, cached)
        partial_path(config, key).unlink(missing_ok=True)
    alpha = choice.alpha if choice.alpha is not None else alpha_by_rule(cached.path, at, config.alpha)
    eval_start = time.perf_counter()
    scores = (at if alpha == 0.0 else cached.point(alpha)).scores  # α is a grid point, or the rule's 0: the AT model
    if scores.screened:  # the report stands on all of validation
        scores = exp.evaluate(interpolate_state(exp.at_state, cached.best_state, alpha), "val")
    settings = choice.settings
    return TrialReport(
        finetune=FineTune(key=key, module=choice.module, lr=settings.lr, epochs=settings.epochs, trial_id=trial_id),
        alpha=alpha,
        scores=scores,
        path=tuple((p.alpha, p.scores) for p in cached.path),
        reused=reused,
        cost=TrialCost(
            finetune_seconds=0.0 if reused else cached.finetune_seconds,
            eval_seconds=time.perf_counter() - eval_start + (0.0 if reused else cached.eval_seconds),
            trial_seconds=time.perf_counter() - start,
            alpha_points_evaluated=0 if reused else cached.points_evaluated,
            best_epoch=cached.best_epoch,
        ),
    )


def _finetune_and_evaluate(exp: Experiment, key: str, choice: TrialChoice, at: AlphaPoint) -> CachedFinetune:
    """Fine-tune (a Tune checkpoint after every epoch), then the α path (progress in the fine-tune cache after every
    point; the trial's own α never left screened): a retried or resumed trial carries on where it stopped instead of
    starting again."""
    config = exp.config
    partial = load_partial(config, key)
    if partial is not None:  # killed during the α path: the fine-tune and the points done are kept
        state = partial.state
        result = FinetuneResult(state.best_state, state.best_epoch, list(state.val_acc), 0.0)
    else:
        result = finetune(exp, choice.module, choice.settings, resume=_restore_state(), on_epoch=_report_epoch)
        state = FinetuneState(
            epochs_done=choice.settings.epochs,
            model_state=None,
            optimizer_state=None,
            val_acc=result.val_acc,
            best_epoch=result.best_epoch,
            best_state=result.best_state,
        )
    done = {p.alpha: p for p in (partial.path if partial else [])}
    save_partial(config, key, PartialFinetune(state, list(done.values())))
    evaluated = []

    def report_point(point: AlphaPoint) -> None:
        done[point.alpha] = point
        evaluated.append(point.alpha)
        save_partial(config, key, PartialFinetune(state, list(done.values())))
        tune.report({names.ALPHA_POINTS_DONE: len(done), names.PID: os.getpid()})

    eval_start = time.perf_counter()
    path = alpha_path(
        exp,
        result.best_state,
        at,
        progress=False,
        known=done,
        on_point=report_point,
        in_full=[] if choice.alpha is None else [choice.alpha],
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
        metrics = {names.FT_EPOCH: state.epochs_done, names.FT_VAL_ACC: state.val_acc[-1], names.PID: os.getpid()}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _restore_state() -> FinetuneState | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return FinetuneState(**torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True))
