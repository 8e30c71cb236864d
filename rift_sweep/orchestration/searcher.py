"""The search: Optuna's space over the fine-tuning lr, epochs and α (a point of alpha.grid), its sampler, and a Tune
searcher that also learns from each trial's whole α path, so exploring α costs evaluation only."""

from __future__ import annotations

import optuna
from ray.tune.search.optuna import OptunaSearch

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.procedure.records import TrialReport

PAPER_ALPHA = 0.8  # the paper's ablation puts α* in 0.6–0.9; the trial evaluates its whole α path anyway


def search_space(config: SweepConfig, modules: list[str]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions of the searched parameters: the ranges of search.space, α among alpha.grid when
    alpha.searched, a module choice only when several modules compete."""
    space: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, rng in config.search.space.items():
        if name == names.EPOCHS:
            space[name] = optuna.distributions.IntDistribution(int(rng.low), int(rng.high), step=int(rng.step or 1))
        else:
            space[name] = optuna.distributions.FloatDistribution(rng.low, rng.high, log=rng.log, step=rng.step)
    if config.alpha.searched:
        space[names.ALPHA] = optuna.distributions.CategoricalDistribution(config.alpha.grid)
    if len(modules) > 1:
        space[names.MODULE] = optuna.distributions.CategoricalDistribution(modules)
    return space


def make_sampler(config: SweepConfig) -> optuna.samplers.BaseSampler:
    search = config.search
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=search.seed, population_size=max(4, min(50, search.num_samples)))
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed, constant_liar=True)


def paper_point(config: SweepConfig, modules: list[str]) -> dict:
    """The paper's procedure as the first trial: its lr and epochs on the lowest-MRC module. Tune wants a value for
    every searched parameter; α is the one the trial reports (the grid's point nearest the paper's), while its whole
    α path (the rule's α included) reaches the study."""
    point = {
        names.LR: config.finetune.lr,
        names.EPOCHS: config.finetune.epochs,
        names.ALPHA: min(config.alpha.grid, key=lambda a: abs(a - PAPER_ALPHA)),
        names.MODULE: modules[0],
    }
    space = search_space(config, modules)
    return {k: v for k, v in point.items() if k in space}


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
        report = None if error or not result else TrialReport.from_result(result)
        if report is None or names.ALPHA not in self._space:
            return
        ft = report.finetune
        searched = {names.LR: ft.lr, names.EPOCHS: ft.epochs, names.MODULE: ft.module}
        params = {k: v for k, v in searched.items() if k in self._space}
        for alpha, scores in report.path:  # every point of the path is on the grid: α's own values
            if alpha != report.alpha:
                self.add_evaluated_point({**params, names.ALPHA: alpha}, [scores.objective(m) for m in self.metric])


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
