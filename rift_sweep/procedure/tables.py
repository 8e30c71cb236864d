"""The text the commands print: MRC per module, the paper's procedure, the sweep's front. Plain data in, text out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from rift_sweep.names import OOD_ACC, ROB_ACC, STD_ACC, TEST_PREFIX
from rift_sweep.procedure.paper import RiftReport


@dataclass
class FrontReport:
    trials: list[dict]  # every finished trial, with an "on_front" flag
    at_val: dict[str, float]
    at_test: dict[str, float]
    objectives: tuple[str, ...]
    artifact_uri: str
    ui_hint: str

    @property
    def recommended(self) -> dict | None:
        """The paper's rule applied to the trials (validation), or None: no trial keeps robustness."""
        return next((t for t in self.trials if t.get("recommended")), None)

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
    """The front as a table: validation (selection) and test (report) metrics, the AT model for reference."""

    def accs(row: dict, prefix: str = "") -> str:
        return "".join(f"{_acc(row, prefix + k):>8}" for k in (STD_ACC, ROB_ACC, OOD_ACC))

    header = (
        f"{'trial':<14}{'module':<18}{'lr':>9}{'ep':>4}{'alpha':>7} |{'val std':>8}{'rob':>8}{'ood':>8} |"
        f"{'test std':>8}{'rob':>8}{'ood':>8}"
    )
    best = report.recommended
    lines = [
        f"Recommended (the paper's rule on validation): trial {best['trial_id']}, lr {best['lr']:.2e}, "
        f"{best['epochs']} epochs, α {best['alpha']:.2f}"
        if best
        else "Recommended: the AT model (no trial keeps validation robustness within the tolerance)",
        "",
        f"Pareto front over {', '.join(report.objectives)} (validation); {len(report.front)} of "
        f"{len(report.trials)} trials",
        header,
        "-" * len(header),
    ]
    for t in sorted({id(t): t for t in [*([best] if best else []), *report.front]}.values(), key=lambda t: -t[STD_ACC]):
        mark = "  <- recommended" if t is best else ""
        lines.append(
            f"{t['trial_id']:<14}{t['module']:<18}{t['lr']:>9.2e}{t['epochs']:>4}{t['alpha']:>7.2f} |"
            f"{accs(t)} |{accs(t, TEST_PREFIX)}{mark}"
        )
    lines.append(f"{'AT model':<52} |{accs(report.at_val)} |{accs(report.at_test)}")
    return "\n".join(lines)


def _acc(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "-"
