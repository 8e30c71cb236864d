"""The RiFT steps as the procedure and the sweep both call them, on an Experiment: score modules, choose one,
fine-tune it, walk the α path, apply the paper's α rule. Each has exactly one home here."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rift_sweep.config import ModuleChoice
from rift_sweep.core.errors import InputError
from rift_sweep.core.evaluate import with_interval
from rift_sweep.core.finetune import FinetuneResult, FinetuneSettings, FinetuneState, finetune_module
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.models import StateDict
from rift_sweep.core.mrc import MRCResult, module_robust_criticality
from rift_sweep.core.selection import paper_rule
from rift_sweep.core.statistics import mcnemar, paired_gain_upper
from rift_sweep.names import AA_ACC, ROB_ACC, ROB_IMAGES, STD_ACC
from rift_sweep.procedure.experiment import Experiment

# Per-example correctness -> (the p-value's name, the accuracy's name)
SUMMARIES = {"clean": ("std", STD_ACC), "robust": ("rob", ROB_ACC), "autoattack": ("aa", AA_ACC)}


def score_modules(exp: Experiment, modules: Sequence[str], *, progress: bool = True) -> list[MRCResult]:
    """MRC of each module on the shared adversarial validation set, ranked lowest first."""
    adversarial = exp.adversarial_val
    model = exp.load_state(exp.at_state)
    results = [
        module_robust_criticality(model, name, adversarial, exp.config.mrc, device=exp.device, seed=exp.config.seed)
        for name in tqdm(modules, desc="MRC", disable=not progress)
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
    module: str,
    settings: FinetuneSettings,
    *,
    resume: FinetuneState | None = None,
    on_epoch: Callable[[FinetuneState], None] | None = None,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune `module` of θ_AT on the clean training split with the dataset's augmentation."""
    info = exp.splits.info
    return finetune_module(
        exp.load_state(exp.at_state),
        module,
        exp.splits.train,
        exp.splits.val,
        settings,
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
    at_val: Mapping[str, float],
    *,
    progress: bool = True,
    known: Mapping[float, dict] | None = None,
    on_point: Callable[[dict], None] | None = None,
    in_full: Collection[float] = (),
) -> list[dict[str, float]]:
    """Validation metrics of θ_α for every α of `alpha.grid` (fine-tuning paid once, α costs evaluation only).

    α = 0 is the AT model (`at_val`, measured once per sweep); `known` maps α to rows already measured (a resumed
    trial's points); `on_point` receives each new row once it is final (e.g. to checkpoint it).

    Screening (`alpha.screen` < 1): every new point's clean and OOD accuracy are measured on all of validation, its
    robust accuracy first on a seeded `screen` fraction of it. Then, from the best clean accuracy down, a point
    gets the rest of validation unless `_settled_by_screen` (never those `in_full`, e.g. a trial's own α). Each
    row's "rob_images" says how many images its rob_acc (and interval) rests on.
    """
    config, n = exp.config, len(exp.splits.val)
    known = {**({0.0: {**at_val, ROB_IMAGES: n}} if 0.0 in config.alpha.grid else {}), **(known or {})}
    todo = [a for a in config.alpha.grid if a not in known]
    screen = screen_mask(n, config.alpha.screen, config.seed)
    rows, first, ood = dict(known), {}, {}

    def finish(alpha: float, row: dict) -> None:
        rows[alpha] = {**row, **ood[alpha], "alpha": alpha}
        if on_point is not None:
            on_point(rows[alpha])

    for alpha in tqdm(todo, desc="α path (screen)" if not screen.all() else "α path", disable=not progress):
        state = interpolate_state(exp.at_state, ft_state, alpha)
        first[alpha], ood[alpha] = exp.examples(state, "val", among=screen), exp.ood_metrics(state)
        if screen.all():  # no screening: final at once, so progress (and a resume) goes point by point
            finish(alpha, {**summarize(first[alpha]), ROB_IMAGES: n})
    full = [(row, None) for row in known.values() if row.get(ROB_IMAGES, n) == n]  # (row, per-example robustness)
    floor = at_val[ROB_ACC] - config.alpha.tolerance
    for alpha in sorted((a for a in todo if a not in rows), key=lambda a: (-first[a]["clean"].mean(), a)):
        examples = first[alpha]
        if alpha not in in_full and _settled_by_screen(examples, screen, full, floor):
            robust = examples["robust"][screen]
            finish(alpha, {**summarize({"clean": examples["clean"], "robust": robust}), ROB_IMAGES: len(robust)})
            continue
        state = interpolate_state(exp.at_state, ft_state, alpha)
        rest = exp.examples(state, "val", among=~screen)["robust"]
        examples = {**examples, "robust": examples["robust"] | rest}
        full.append((summarize(examples), examples["robust"]))
        finish(alpha, {**full[-1][0], ROB_IMAGES: n})
    return [{**rows[alpha], "alpha": alpha} for alpha in config.alpha.grid]


def screen_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Bool [n]: the seeded random `fraction` of validation on which every α point's robustness is first measured."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: math.ceil(fraction * n)]] = True
    return mask


def _settled_by_screen(
    candidate: Mapping[str, np.ndarray], screen: np.ndarray, full: Sequence[tuple], rob_floor: float
) -> bool:
    """Whether the rest of validation cannot change the path's answers beyond what the full set can resolve.

    Two conditions, both on points already measured in full: (1) one with higher clean accuracy meets the paper's
    rule (rob_acc >= rob_floor), so the candidate is not the rule's pick and the pick is exactly what it would be
    without screening; (2) one with at least its clean accuracy is, on the screen's images, robust-better or
    behind by less than that point's own full-set Wilson half-width (a paired 95 % upper bound, see
    statistics.paired_gain_upper), so the candidate cannot be told apart from a point that dominates it.
    """
    std = summarize({"clean": candidate["clean"]})[STD_ACC]
    if not any(row[STD_ACC] > std and row[ROB_ACC] >= rob_floor for row, _ in full):
        return False
    return any(
        row[STD_ACC] >= std
        and paired_gain_upper(candidate["robust"][screen], robust[screen])
        < (row[f"{ROB_ACC}_high"] - row[f"{ROB_ACC}_low"]) / 2
        for row, robust in full
        if robust is not None
    )


def alpha_by_rule(path: Sequence[Mapping[str, float]], at_val: Mapping[str, float], tolerance: float) -> float:
    """The paper's α: the largest val std_acc with rob_acc ≥ AT − tolerance; 0 (the AT model) when none qualifies."""
    chosen = paper_rule(path, at_rob_acc=at_val["rob_acc"], tolerance=tolerance)
    return float(chosen["alpha"]) if chosen else 0.0


def versus_at(at: Mapping[str, Any], model: Mapping[str, Any]) -> dict:
    """A model against the AT model on the same images, from each one's per-example correctness and "ood" metrics
    (as front.model_examples gives them): each one's accuracies with Wilson 95 % intervals and OOD accuracy, and
    exact McNemar p-values (clean, robust, and AutoAttack where measured) on the examples where the two disagree."""
    return {
        "model": model_metrics(model),
        "at": model_metrics(at),
        **{f"p_{SUMMARIES[key][0]}": mcnemar(at[key], model[key])[2] for key in SUMMARIES if key in model},
    }


def model_metrics(examples: Mapping[str, Any]) -> dict[str, float]:
    """`summarize`'s accuracies plus the "ood" metrics measured beside them."""
    return {**summarize(examples), **examples.get("ood", {})}


def summarize(examples: dict) -> dict[str, float]:
    """std_acc / rob_acc / aa_acc (%) with Wilson 95 % bounds, from per-example correctness (`SUMMARIES`' keys)."""
    out = {}
    for key, (_, name) in SUMMARIES.items():
        if key in examples:
            out.update(with_interval(name, examples[key]))
    return out


def alpha_points(finetunes: Sequence[Mapping]) -> list[dict]:
    """Every α point of every fine-tune, as candidate models: (the fine-tune's fields..., alpha, metrics)."""
    return [
        {**{k: v for k, v in ft.items() if k != "alpha_path"}, **row} for ft in finetunes for row in ft["alpha_path"]
    ]
