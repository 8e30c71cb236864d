"""The paper's procedure in one process (Zhu et al., ICCV 2023): MRC of every candidate module → the lowest →
fine-tune it → evaluate the α path on validation → the paper's α rule → AT vs RiFT on the test split.

This is the baseline the distributed sweep must beat. Every choice is made on validation data; the test
split is touched only for the final report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from rift_sweep.config import ModuleChoice
from rift_sweep.experiment import Experiment
from rift_sweep.finetune import FinetuneResult, finetune_module
from rift_sweep.interpolate import interpolate_state
from rift_sweep.models import StateDict
from rift_sweep.mrc import MRCResult, candidate_modules, module_robust_criticality
from rift_sweep.selection import choose_alpha



@dataclass
class RiftReport:
    mrc: list[MRCResult]  # ranked, lowest MRC first
    module: str
    finetune: FinetuneResult
    at_val: dict[str, float]
    path: list[dict[str, float]]  # validation metrics per α
    chosen: dict[str, float] | None  # None: no α keeps robustness; the AT model stands
    at_test: dict[str, float]
    rift_test: dict[str, float]
    ood_source: str | None  # "real" or "generated"


def experiment_modules(exp: Experiment) -> list[str]:
    choice = exp.config.modules
    return candidate_modules(exp.model, choice.include, choice.exclude)


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
            raise ValueError(f"modules.name {choice.name!r} is not a scored module; scored: {', '.join(names)}")
        return [choice.name]
    return names[: choice.top_k if choice.choice == "top_k" else 1]


def alpha_path(exp: Experiment, ft_state: StateDict, grid: Sequence[float], *, progress: bool = True) -> list[dict[str, float]]:
    """Validation metrics of θ_α for every α in `grid` (fine-tuning paid once, α costs evaluation only)."""
    rows = []
    for alpha in tqdm(grid, desc="α path", disable=not progress):
        rows.append({"alpha": alpha, **exp.evaluate(interpolate_state(exp.at_state, ft_state, alpha), "val")})
    return rows


def run_paper_procedure(exp: Experiment, *, progress: bool = True) -> RiftReport:
    config = exp.config
    ranked = score_modules(exp, experiment_modules(exp), progress=progress)
    module = choose_modules([r.module for r in ranked], config.modules)[0]
    data = exp.splits
    model = exp.load_state(exp.at_state)
    finetuned = finetune_module(
        model, module, data.train, data.val, config.finetune, augment=data.info.augment,
        crop_padding=data.info.crop_padding, seed=config.seed, device=exp.device, progress=progress,
    )
    at_val = exp.evaluate(exp.at_state, "val")
    path = alpha_path(exp, finetuned.best_state, config.alpha.grid, progress=progress)
    chosen = choose_alpha(path, at_rob_acc=at_val["rob_acc"], tolerance=config.alpha.tolerance)
    alpha = chosen["alpha"] if chosen else 0.0
    runs = config.attack.test_runs
    at_test = exp.evaluate(exp.at_state, "test", runs=runs)
    rift_test = exp.evaluate(interpolate_state(exp.at_state, finetuned.best_state, alpha), "test", runs=runs)
    ood = exp.ood("test")
    return RiftReport(ranked, module, finetuned, at_val, path, chosen, at_test, rift_test, ood.source if ood else None)


def format_report(report: RiftReport) -> str:
    """The tables the `rift` command prints: MRC per module, the α path, the choice, AT vs RiFT on test."""
    lines = [format_mrc_table([dataclasses.asdict(r) for r in report.mrc], [report.module])]
    ft = report.finetune
    lines += ["", f"fine-tuned module: {report.module}  (best epoch {ft.best_epoch}/{len(ft.val_acc)} by val accuracy, "
              f"{ft.seconds:.0f} s)", "",
              "α path (validation)", f"{'alpha':>6}{'std':>8}{'rob':>8}{'ood':>8}"]
    for row in report.path:
        mark = "  <- chosen" if report.chosen is not None and row["alpha"] == report.chosen["alpha"] else ""
        lines.append(f"{row['alpha']:>6.2f}{row['std_acc']:>8.2f}{row['rob_acc']:>8.2f}{_ood(row):>8}{mark}")
    at = report.at_val
    lines.append(f"AT on validation: std {at['std_acc']:.2f}  rob {at['rob_acc']:.2f}  ood {_ood(at)}")
    if report.chosen is None:
        lines.append("no α keeps robust accuracy within the tolerance: the AT model is kept (α = 0)")
    else:
        lines.append(f"chosen α = {report.chosen['alpha']:.2f} (largest val std_acc with rob_acc >= AT − tolerance)")
    source = f" (OOD: {report.ood_source} corruptions)" if report.ood_source else ""
    lines += ["", f"test split{source}", f"{'model':<10}{'std':>8}{'rob':>8}{'ood':>8}"]
    for name, row in (("AT", report.at_test), ("AT+RiFT", report.rift_test)):
        lines.append(f"{name:<10}{row['std_acc']:>8.2f}{row['rob_acc']:>8.2f}{_ood(row):>8}")
    return "\n".join(lines)


def format_mrc_table(rows: Sequence[dict], chosen: Sequence[str] = ()) -> str:
    """MRC per module, lowest first, the chosen module(s) marked."""
    lines = ["Module Robust Criticality (validation adversarial set; lowest first)",
             f"{'module':<28}{'params':>10}{'MRC':>10}{'rob drop':>10}{'|Δ|/|θ|':>9}{'s':>7}"]
    for r in rows:
        mark = "  <- fine-tuned" if r["module"] in chosen else ""
        lines.append(f"{r['module']:<28}{r['num_params']:>10,}{r['mrc']:>10.4f}{r['rob_acc_drop']:>9.2f}%"
                     f"{r['relative_norm']:>9.3f}{r['seconds']:>7.1f}{mark}")
    return "\n".join(lines)


def _ood(row: dict[str, float]) -> str:
    return f"{row['ood_acc']:.2f}" if "ood_acc" in row else "-"
