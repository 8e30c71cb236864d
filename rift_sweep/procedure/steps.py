"""The RiFT steps as the procedure and the sweep both call them, on an Experiment: score modules, choose one,
fine-tune it, walk the α path, apply the paper's α rule. Each has exactly one home here."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from tqdm.auto import tqdm

from rift_sweep.config import ModuleChoice
from rift_sweep.core.errors import InputError
from rift_sweep.core.finetune import FinetuneResult, FinetuneSettings, FinetuneState, finetune_module
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.models import StateDict
from rift_sweep.core.mrc import MRCResult, module_robust_criticality
from rift_sweep.core.selection import paper_rule
from rift_sweep.core.statistics import mcnemar, wilson_interval
from rift_sweep.names import ROB_ACC, STD_ACC
from rift_sweep.procedure.experiment import Experiment


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
    grid: Sequence[float],
    *,
    progress: bool = True,
    known: Mapping[float, dict] | None = None,
    on_point: Callable[[dict], None] | None = None,
) -> list[dict[str, float]]:
    """Validation metrics of θ_α for every α in `grid` (fine-tuning paid once, α costs evaluation only).

    `known` maps α to metrics already measured (α = 0 is the AT model; a resumed trial's finished points);
    `on_point` receives each newly evaluated row (e.g. to checkpoint it).
    """
    known = dict(known or {})
    rows = []
    for alpha in tqdm(grid, desc="α path", disable=not progress):
        if alpha not in known:
            known[alpha] = exp.evaluate(interpolate_state(exp.at_state, ft_state, alpha), "val")
            if on_point is not None:
                on_point({"alpha": alpha, **known[alpha]})
        rows.append({**known[alpha], "alpha": alpha})
    return rows


def alpha_by_rule(path: Sequence[Mapping[str, float]], at_val: Mapping[str, float], tolerance: float) -> float:
    """The paper's α: the largest val std_acc with rob_acc ≥ AT − tolerance; 0 (the AT model) when none qualifies."""
    chosen = paper_rule(path, at_rob_acc=at_val["rob_acc"], tolerance=tolerance)
    return float(chosen["alpha"]) if chosen else 0.0


def versus_at(exp: Experiment, state: StateDict, split: str = "test") -> dict:
    """`state` against the AT model on the same images: each one's accuracies with Wilson 95 % intervals, and
    exact McNemar p-values (clean and robust) on the examples where the two disagree."""
    runs = exp.config.attack.test_runs if split == "test" else 1
    at, model = exp.examples(exp.at_state, split, runs=runs), exp.examples(state, split, runs=runs)
    return {
        "model": summarize(model),
        "at": summarize(at),
        "p_std": mcnemar(at["clean"], model["clean"])[2],
        "p_rob": mcnemar(at["robust"], model["robust"])[2],
    }


def summarize(examples: dict) -> dict[str, float]:
    """std_acc / rob_acc (%) with Wilson 95 % bounds, from per-example correctness."""
    out = {}
    for key, name in (("clean", STD_ACC), ("robust", ROB_ACC)):
        correct, total = int(examples[key].sum()), len(examples[key])
        low, high = wilson_interval(correct, total)
        out.update({name: 100.0 * correct / total, f"{name}_low": low, f"{name}_high": high})
    return out


def alpha_points(finetunes: Sequence[Mapping]) -> list[dict]:
    """Every α point of every fine-tune, as candidate models: (the fine-tune's fields..., alpha, metrics)."""
    return [
        {**{k: v for k, v in ft.items() if k != "alpha_path"}, **row} for ft in finetunes for row in ft["alpha_path"]
    ]
