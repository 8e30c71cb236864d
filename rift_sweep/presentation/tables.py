"""The text the commands print: MRC per module, the paper's procedure, the sweep's front. Plain data in, text out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rift_sweep.procedure.records import Accuracy, Change, Front, Model, Scores, Versus

if TYPE_CHECKING:  # not at run time: `report` formats a front without importing torch
    from rift_sweep.core.mrc import MRCResult
    from rift_sweep.procedure.paper import RiftReport


def describe_at(at_val: Scores) -> str:
    """The AT model's validation accuracy, printed before MRC starts: a wrong model is visible at once."""
    return (
        f"AT model on {at_val.std.images} validation images: std {at_val.std.value:.2f}  rob {at_val.rob.value:.2f}"
        + (f"  ood {at_val.ood:.2f}" if at_val.ood is not None else "")
    )


def format_mrc_table(results: Sequence[MRCResult], chosen: Sequence[str] = ()) -> str:
    """MRC per module, lowest first, the chosen module(s) marked."""
    lines = [
        "Module Robust Criticality (validation adversarial set; lowest first)",
        f"{'module':<28}{'params':>10}{'MRC':>10}{'rob drop':>10}{'|Δ|/|θ|':>9}{'s':>7}",
    ]
    for r in results:
        mark = "  <- fine-tuned" if r.module in chosen else ""
        lines.append(
            f"{r.module:<28}{r.num_params:>10,}{r.mrc:>10.4f}{r.rob_acc_drop:>9.2f}%"
            f"{r.relative_norm:>9.3f}{r.seconds:>7.1f}{mark}"
        )
    return "\n".join(lines)


def format_report(report: RiftReport) -> str:
    """The tables the `rift` command prints: MRC per module, the α path, the choice, AT vs RiFT on test."""
    lines = [format_mrc_table(report.mrc, [report.module])]
    ft = report.finetune
    lines += [
        "",
        f"fine-tuned module: {report.module}  (best epoch {ft.best_epoch}/{len(ft.val_acc)} by val accuracy, "
        f"{ft.seconds:.0f} s)",
        "",
        "α path (validation; ± half the Wilson 95 % interval; * robustness on a screened subset)",
        f"{'alpha':>6}{'std':>14}{'rob':>15}{'ood':>8}",
    ]
    for point in report.path:
        mark = "  <- chosen" if point.alpha == report.alpha else ""
        lines.append(
            f"{point.alpha:>6.2f}{_pm(point.scores.std):>14}{_rob(point.scores):>15}{_ood(point.scores):>8}{mark}"
        )
    at = report.at_val
    lines.append(f"AT on validation: std {_pm(at.std)}  rob {_pm(at.rob)}  ood {_ood(at)}")
    if report.alpha == 0.0:
        lines.append("no α > 0 beats the AT model within the robustness tolerance: the AT model is kept (α = 0)")
    else:
        lines.append(f"chosen α = {report.alpha:.2f} (largest val std_acc with rob_acc >= AT − tolerance)")
    source = f" (OOD: {report.ood_source} corruptions)" if report.ood_source else ""
    lines += ["", f"test split{source}", f"{'model':<10}{'std':>24}{'rob':>24}{'ood':>8}"]
    for name, scores in (("AT", report.at_test), ("AT+RiFT", report.rift_test)):
        lines.append(f"{name:<10}{_range(scores.std):>24}{_range(scores.rob):>24}{_ood(scores):>8}")
    lines.append(describe_versus(report.test_versus_at, "test"))
    return "\n".join(lines)


def format_front(front: Front) -> str:
    """The recommended model first (validation and test, 95 % intervals, the paired comparison with the AT model),
    then the Pareto front of every evaluated model: validation (selection) and test (report)."""
    at = front.at
    rows = [*front.front, *([] if at.key in front.on_front else [at])]
    width = max(len(describe_model(m)) for m in rows) + 1
    header = f"{'model':<{width}}|{'val std':>13}{'rob':>14}{'Δrob vs AT':>21} |{'test std':>13}{'rob':>14}"
    lines = [
        *format_recommended(front),
        "",
        f"Pareto front of {', '.join(front.objectives)} over {len(front.models)} evaluated models (validation; "
        f"± half the Wilson 95 % interval; Δ: paired 95 % interval; * screened): {len(front.front)} models",
        header,
        "-" * len(header),
    ]
    for model in rows:
        test = model.test
        lines.append(
            f"{describe_model(model):<{width}}|{_pm(model.val.std):>13}{_rob(model.val):>14}"
            f"{_change(model.val_versus_at.rob) if model.val_versus_at else '':>21} |"
            f"{_pm(test.std) if test else '-':>13}{_pm(test.rob) if test else '-':>14}"
        )
    return "\n".join(lines)


def format_recommended(front: Front) -> list[str]:
    best = front.recommended
    if best is None:
        return [
            "Recommended: the AT model itself — no fine-tuned model keeps validation robust accuracy within "
            f"{front.tolerance} points of it"
        ]
    at = front.at
    lines = [
        f"Recommended (the paper's rule over all {len(front.models)} evaluated models, on validation): "
        f"{describe_model(best)}",
        f"  validation  std {_pm(best.val.std)}  rob {_pm(best.val.rob)}   AT: std {_pm(at.val.std)}  rob {_pm(at.val.rob)}",
    ]
    if best.test is not None and at.test is not None:
        lines.append(
            f"  test        std {_range(best.test.std)}  rob {_range(best.test.rob)}   "
            f"AT: std {_range(at.test.std)}  rob {_range(at.test.rob)}"
        )
        if best.test.aa is not None and at.test.aa is not None:
            lines.append(f"  AutoAttack (standard) on test: {_range(best.test.aa)}   AT: {_range(at.test.aa)}")
    if best.test_versus_at is not None:
        lines.append(describe_versus(best.test_versus_at, "test"))
        lines.append("  " + verdict(best.test_versus_at))
    return lines


def describe_model(model: Model) -> str:
    """One line that names a model: the AT model, or its fine-tune (trial, module, lr, epochs) and α."""
    ft = model.finetune
    if model.is_at:
        return "AT model"
    return f"{ft.trial_id} {ft.module} lr {ft.lr:.1e} ep {ft.epochs} α {model.alpha:.2f}"


def describe_versus(versus: Versus, split: str) -> str:
    """The paired comparison with the AT model: points gained, the paired 95 % interval, McNemar's p."""
    parts = [f"{name} {_change(change)}, p = {change.p:.3g}" for name, change in versus.items()]
    return f"  vs AT on the same {split} images (paired 95 % interval, exact McNemar): " + "; ".join(parts)


def verdict(versus: Versus, level: float = 0.05) -> str:
    """In words: is the clean gain over the AT model significant, and did robustness hold?"""
    std, rob = versus.std, versus.rob
    gain = (
        f"clean accuracy {std.points:+.2f} points is significant (p = {std.p:.3g} < {level})"
        if std.points > 0 and std.p < level
        else f"the clean change ({std.points:+.2f} points, p = {std.p:.3g}) is not significant at {level}"
    )
    held = "robust accuracy holds" if rob.points >= 0 or rob.p >= level else "robust accuracy drops significantly"
    return f"On test: {gain}; {held} ({rob.points:+.2f} points, p = {rob.p:.3g})."


def _pm(accuracy: Accuracy) -> str:
    return f"{accuracy.value:.2f}±{accuracy.half_width:.2f}"


def _rob(scores: Scores) -> str:
    return _pm(scores.rob) + ("*" if scores.screened else "")


def _range(accuracy: Accuracy) -> str:
    return f"{accuracy.value:.2f} [{accuracy.low:.2f}, {accuracy.high:.2f}]"


def _change(change: Change) -> str:
    return f"{change.points:+.2f} [{change.low:+.1f}, {change.high:+.1f}]"


def _ood(scores: Scores) -> str:
    return "-" if scores.ood is None else f"{scores.ood:.2f}"


def front_markdown(front: Front) -> str:
    """The front (and the AT model) as a Markdown table, the recommended model first: what front.md holds."""
    header = "| model | val std | val rob | Δ std vs AT (val) | Δ rob vs AT (val) | test std | test rob | Δ std (test, p) | Δ rob (test, p) |"
    rows = [
        "# The sweep's front",
        "",
        *(f"> {line.strip()}" for line in format_recommended(front)),
        "",
        f"Pareto front of {', '.join(front.objectives)} over {len(front.models)} evaluated models, validation; "
        "accuracies with Wilson 95 % intervals, Δ with paired 95 % intervals, * robustness on a screened subset.",
        "",
        header,
        "|" + "---|" * header.count(" |"),
    ]
    recommended = front.recommended.key if front.recommended else None
    for model in [*front.front, *([] if front.at.key in front.on_front else [front.at])]:
        name = describe_model(model) + (" **(recommended)**" if model.key == recommended else "")
        val, test = model.val_versus_at, model.test_versus_at
        cells = [
            name,
            _range(model.val.std),
            _range(model.val.rob) + ("*" if model.val.screened else ""),
            _change(val.std) if val else "",
            _change(val.rob) if val else "",
            _range(model.test.std) if model.test else "-",
            _range(model.test.rob) if model.test else "-",
            f"{_change(test.std)}, p = {test.std.p:.3g}" if test else "",
            f"{_change(test.rob)}, p = {test.rob.p:.3g}" if test else "",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
