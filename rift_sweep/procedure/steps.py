"""The RiFT steps as the procedure and the sweep both call them, on an Experiment: score modules, choose one,
fine-tune it, walk the α path, apply the paper's α rule. Each has exactly one home here."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rift_sweep.config import AlphaConfig, ModuleChoice
from rift_sweep.core.errors import InputError
from rift_sweep.core.finetune import FinetuneResult, FinetuneSettings, FinetuneState, finetune_module
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.models.checkpoints import StateDict
from rift_sweep.core.mrc import MRCResult, module_robust_criticality
from rift_sweep.core.robustness.statistics import paired_gain_interval
from rift_sweep.core.selection import at_least, best_qualifying
from rift_sweep.procedure.experiment import Experiment
from rift_sweep.procedure.records import AlphaPoint, Examples, Scores, Versus


def score_modules(exp: Experiment, modules: Sequence[str], *, progress: bool = True) -> list[MRCResult]:
    """MRC of each module on the shared adversarial validation set, ranked lowest first."""
    adversarial = exp.adversarial_val
    model = exp.load_state(exp.at_state)
    results = [
        module_robust_criticality(model, name, adversarial, exp.config.mrc, device=exp.device, seed=exp.config.seed)
        for name in tqdm(modules, desc="MRC", disable=None if progress else True)
    ]
    return sorted(results, key=lambda r: r.mrc)


def choose_modules(names: Sequence[str], choice: ModuleChoice) -> list[str]:
    """The module(s) to fine-tune from `names` ranked lowest MRC first: the lowest, the k lowest, or the named one."""
    names = list(names)
    if choice.choice == "named":
        if choice.name not in names:
            raise InputError(f"modules.name {choice.name!r} is not a scored module; scored: {', '.join(names)}")
        return [choice.name]
    return names[: choice.top_k if choice.choice == "top_k" else 1]


def finetune(
    exp: Experiment,
    module: str | Sequence[str],
    settings: FinetuneSettings,
    *,
    resume: FinetuneState | None = None,
    on_epoch: Callable[[FinetuneState], None] | None = None,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune `module` of θ_AT (several, or finetune.EVERY_LAYER, for the paper's ablations) on the clean training
    split with the dataset's augmentation."""
    info = exp.splits.info
    return finetune_module(
        exp.load_state(exp.at_state),
        module,
        train=exp.splits.train,
        val=exp.splits.val,
        settings=settings,
        augment=info.augment,
        crop_padding=info.crop_padding,
        seed=exp.config.seed,
        device=exp.device,
        resume=resume,
        on_epoch=on_epoch,
        progress=progress,
    )


def alpha_path(
    exp: Experiment,
    ft_state: StateDict,
    at: AlphaPoint,
    *,
    progress: bool = True,
    known: Mapping[float, AlphaPoint] | None = None,
    on_point: Callable[[AlphaPoint], None] | None = None,
    in_full: Collection[float] = (),
) -> list[AlphaPoint]:
    """θ_α on validation for every α of `alpha.grid` (fine-tuning paid once, α costs evaluation only).

    `at` is the AT model on validation (α = 0, measured once per sweep); `known` maps α to points already measured
    (a resumed trial's); `on_point` receives each new point once it is final (e.g. to checkpoint it).

    Screening (`alpha.screen` < 1): every new point's clean and OOD accuracy are measured on all of validation, its
    robust accuracy first on a seeded `screen` fraction of it. Then, from the best clean accuracy down, a point
    gets the rest of validation unless `_settled_by_screen` (never those `in_full`, e.g. a trial's own α). A
    screened point's robustness (and interval) rests on the screen's images only: `examples.measured`.
    """
    config, n = exp.config, len(exp.splits.val)
    points = {**({0.0: at} if 0.0 in config.alpha.grid else {}), **(known or {})}
    todo = [a for a in config.alpha.grid if a not in points]
    screen = screen_mask(n, config.alpha.screen, config.seed)
    first, ood = {}, {}

    def finish(alpha: float, examples: Examples) -> None:
        points[alpha] = AlphaPoint(alpha, examples.scores(ood[alpha]), examples)
        if on_point is not None:
            on_point(points[alpha])

    for alpha in tqdm(
        todo, desc="α path (screen)" if not screen.all() else "α path", disable=None if progress else True
    ):
        state = interpolate_state(exp.at_state, ft_state, alpha)
        among = None if screen.all() else torch.from_numpy(screen)
        first[alpha], ood[alpha] = exp.examples(state, "val", among=among), exp.ood_accuracies(state)
        if screen.all():  # no screening: final at once, so progress (and a resume) goes point by point
            finish(alpha, first[alpha])
    full = [p for p in points.values() if not p.scores.screened]
    for alpha in sorted((a for a in todo if a not in points), key=lambda a: (-first[a].clean.mean(), a)):
        examples = first[alpha]
        keeps = [keeps_robustness(p.scores, p.examples.versus(at.examples), at.scores, config.alpha) for p in full]
        if alpha not in in_full and _settled_by_screen(examples, screen, full, keeps):
            finish(alpha, examples)
            continue
        state = interpolate_state(exp.at_state, ft_state, alpha)
        rest = exp.examples(state, "val", among=torch.from_numpy(~screen)).robust
        finish(alpha, Examples(examples.clean, examples.robust | rest))
        full.append(points[alpha])
    return [points[alpha] for alpha in config.alpha.grid]


def screen_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Bool [n]: the seeded random `fraction` of validation on which every α point's robustness is first measured."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: math.ceil(fraction * n)]] = True
    return mask


def _settled_by_screen(
    candidate: Examples, screen: np.ndarray, full: Sequence[AlphaPoint], keeps: Sequence[bool]
) -> bool:
    """Whether the rest of validation cannot change the path's answers beyond what the full set can resolve.

    Two conditions, both on points already measured in full (`keeps`: which of them keep robustness by the rule):
    (1) one with higher clean accuracy keeps robustness, so the candidate is not the rule's pick and the pick is
    exactly what it would be without screening; (2) one with at least its clean accuracy is, on the screen's images,
    robust-better or behind by less than that point's own full-set Wilson half-width (a paired 95 % upper bound,
    see statistics.paired_gain_interval), so the candidate cannot be told apart from a point that dominates it.
    """
    std = 100.0 * candidate.clean.mean()
    if not any(p.scores.std.value > std and kept for p, kept in zip(full, keeps)):
        return False
    return any(
        p.scores.std.value >= std
        and paired_gain_interval(candidate.robust[screen], p.examples.robust[screen])[1] < p.scores.rob.half_width
        for p in full
    )


def keeps_robustness(scores: Scores, versus: Versus | None, at: Scores, alpha: AlphaConfig) -> bool:
    """Whether a model keeps the AT model's robustness by the configured rule (`alpha.rule`): "paper", its validation
    rob_acc ≥ AT's − tolerance (two point estimates); "paired", the lower end of the paired 95 % interval of its
    change against the AT model on the same images ≥ −tolerance (the AT model itself, `versus` None, always keeps)."""
    if alpha.rule == "paired":
        return versus is None or at_least(versus.rob.low, -alpha.tolerance)
    return at_least(scores.rob.value, at.rob.value - alpha.tolerance)


def rule_pick(candidates: Sequence[tuple[Scores, Versus | None, float]], at: Scores, alpha: AlphaConfig) -> int | None:
    """The rule's choice among (validation scores, change against the AT model, α): the largest std_acc among the
    models that keep robustness (`keeps_robustness`); None when none does."""
    points = [(scores.std.value, scores.rob.value, a) for scores, _, a in candidates]
    return best_qualifying(points, [keeps_robustness(s, v, at, alpha) for s, v, _ in candidates])


def alpha_by_rule(path: Sequence[AlphaPoint], at: AlphaPoint, alpha: AlphaConfig) -> float:
    """The rule's α on one fine-tune's path; 0 (the AT model) when no point keeps robustness."""
    chosen = rule_pick([(p.scores, p.examples.versus(at.examples), p.alpha) for p in path], at.scores, alpha)
    return 0.0 if chosen is None else float(path[chosen].alpha)
