"""The text the commands print: MRC per module, the paper's procedure, the sweep's front. Plain data in, text out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from rift_sweep.names import AA_ACC, OOD_ACC, ROB_ACC, STD_ACC, TEST_PREFIX
from rift_sweep.procedure.paper import RiftReport


@dataclass
class FrontReport:
    trials: list[dict]  # every finished trial (its own α point), with an "on_front" flag
    at_val: dict[str, float]
    at_test: dict[str, float]
    objectives: tuple[str, ...]
    artifact_uri: str
    ui_hint: str
    points: list[dict] = field(default_factory=list)  # every α point of every fine-tune (validation)
    recommended: dict | None = None  # the paper's rule over `points`, with "test": versus_at's result
    tolerance: float = 0.1

    @property
    def front(self) -> list[dict]:
        return sorted((t for t in self.trials if t["on_front"]), key=lambda t: -t[STD_ACC])


def describe_at(at_val: dict, examples: int) -> str:
    """The AT model's validation accuracy, printed before MRC starts: a wrong model is visible at once."""
    return f"AT model on {examples} validation images: std {at_val[STD_ACC]:.2f}  rob {at_val[ROB_ACC]:.2f}" + (
        f"  ood {at_val[OOD_ACC]:.2f}" if OOD_ACC in at_val else ""
    )


def format_mrc_table(rows: Sequence[dict], chosen: Sequence[str] = ()) -> str:
    """MRC per module, lowest first, the chosen module(s) marked."""
    lines = [
        "Module Robust Criticality (validation adversarial set; lowest first)",
        f"{'module':<28}{'params':>10}{'MRC':>10}{'rob drop':>10}{'|Δ|/|θ|':>9}{'s':>7}",
    ]
    for r in rows:
        mark = "  <- fine-tuned" if r["module"] in chosen else ""
        lines.append(
            f"{r['module']:<28}{r['num_params']:>10,}{r['mrc']:>10.4f}{r['rob_acc_drop']:>9.2f}%"
            f"{r['relative_norm']:>9.3f}{r['seconds']:>7.1f}{mark}"
        )
    return "\n".join(lines)


def format_report(report: RiftReport) -> str:
    """The tables the `rift` command prints: MRC per module, the α path, the choice, AT vs RiFT on test."""
    lines = [format_mrc_table([dataclasses.asdict(r) for r in report.mrc], [report.module])]
    ft = report.finetune
    lines += [
        "",
        f"fine-tuned module: {report.module}  (best epoch {ft.best_epoch}/{len(ft.val_acc)} by val accuracy, "
        f"{ft.seconds:.0f} s)",
        "",
        "α path (validation)",
        f"{'alpha':>6}{'std':>8}{'rob':>8}{'ood':>8}",
    ]
    for row in report.path:
        mark = "  <- chosen" if row["alpha"] == report.alpha else ""
        lines.append(f"{row['alpha']:>6.2f}{row[STD_ACC]:>8.2f}{row[ROB_ACC]:>8.2f}{_acc(row, OOD_ACC):>8}{mark}")
    at = report.at_val
    lines.append(f"AT on validation: std {at[STD_ACC]:.2f}  rob {at[ROB_ACC]:.2f}  ood {_acc(at, OOD_ACC)}")
    if report.alpha == 0.0:
        lines.append("no α > 0 beats the AT model within the robustness tolerance: the AT model is kept (α = 0)")
    else:
        lines.append(f"chosen α = {report.alpha:.2f} (largest val std_acc with rob_acc >= AT − tolerance)")
    source = f" (OOD: {report.ood_source} corruptions)" if report.ood_source else ""
    lines += ["", f"test split{source}", f"{'model':<10}{'std':>8}{'rob':>8}{'ood':>8}"]
    for name, row in (("AT", report.at_test), ("AT+RiFT", report.rift_test)):
        lines.append(f"{name:<10}{row[STD_ACC]:>8.2f}{row[ROB_ACC]:>8.2f}{_acc(row, OOD_ACC):>8}")
    return "\n".join(lines)


def format_front(report: FrontReport) -> str:
    """The recommended model first (validation and test, 95 % intervals, McNemar vs the AT model), then the
    front of the trials: validation (selection) and test (report) metrics, the AT model for reference."""

    def accs(row: dict, prefix: str = "") -> str:
        return (
            "".join(f"{_acc(row, prefix + k, interval=True):>15}" for k in (STD_ACC, ROB_ACC))
            + f"{_acc(row, prefix + OOD_ACC):>7}"
        )

    header = (
        f"{'trial':<14}{'lr':>9}{'ep':>4}{'alpha':>6} |{'val std':>15}{'rob':>15}{'ood':>7} |"
        f"{'test std':>15}{'rob':>15}{'ood':>7}"
    )
    lines = [
        *format_recommended(report),
        "",
        f"Pareto front over {', '.join(report.objectives)} (validation; ± half the Wilson 95 % interval); "
        f"{len(report.front)} of {len(report.trials)} trials",
        header,
        "-" * len(header),
    ]
    for t in report.front:
        lines.append(
            f"{t['trial_id']:<14}{t['lr']:>9.2e}{t['epochs']:>4}{t['alpha']:>6.2f} |{accs(t)} |{accs(t, TEST_PREFIX)}"
        )
    lines.append(f"{'AT model':<33} |{accs(report.at_val)} |{accs(report.at_test)}")
    return "\n".join(lines)


def format_recommended(report: FrontReport) -> list[str]:
    best = report.recommended
    if best is None:
        return [
            "Recommended: the AT model itself — no fine-tuned point keeps validation robust accuracy within "
            f"{report.tolerance} points of it"
        ]
    test = best.get("test")
    lines = [
        f"Recommended (the paper's rule over all {len(report.points)} α points, on validation): trial "
        f"{best['trial_id']} ({best['module']}), lr {best['lr']:.2e}, {best['epochs']} epochs, α {best['alpha']:.2f}",
        f"  validation  std {_acc(best, STD_ACC, interval=True)}  rob {_acc(best, ROB_ACC, interval=True)}"
        f"   AT: std {_acc(report.at_val, STD_ACC, interval=True)}  rob {_acc(report.at_val, ROB_ACC, interval=True)}",
    ]
    if test:
        model, at = test["model"], test["at"]
        lines += [
            f"  test        std {_range(model, STD_ACC)}  rob {_range(model, ROB_ACC)}   "
            f"AT: std {_range(at, STD_ACC)}  rob {_range(at, ROB_ACC)}",
            f"  vs AT on the same test images (exact McNemar): std {model[STD_ACC] - at[STD_ACC]:+.2f} points, "
            f"p = {test['p_std']:.3g}; rob {model[ROB_ACC] - at[ROB_ACC]:+.2f} points, p = {test['p_rob']:.3g}",
        ]
        if AA_ACC in model:
            lines.append(
                f"  AutoAttack (standard) on test: {_range(model, AA_ACC)}   AT: {_range(at, AA_ACC)}   "
                f"{model[AA_ACC] - at[AA_ACC]:+.2f} points, McNemar p = {test['p_aa']:.3g}"
            )
    return lines


def _range(row: dict, key: str) -> str:
    return f"{row[key]:.2f} [{row[key + '_low']:.2f}, {row[key + '_high']:.2f}]"


def _acc(row: dict, key: str, *, interval: bool = False) -> str:
    if key not in row:
        return "-"
    if interval and f"{key}_low" in row:
        return f"{row[key]:.2f}±{(row[key + '_high'] - row[key + '_low']) / 2:.2f}"
    return f"{row[key]:.2f}"
