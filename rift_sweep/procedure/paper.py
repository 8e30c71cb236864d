"""The paper's procedure in one process (Zhu et al., ICCV 2023): MRC of every candidate module → the lowest →
fine-tune it → evaluate the α path on validation → the paper's α rule → AT vs RiFT on the test split.

This is the baseline the distributed sweep must beat. Every choice is made on validation data; the test
split is touched only for the final report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rift_sweep.core.finetune import FinetuneResult
from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.mrc import MRCResult
from rift_sweep.procedure.experiment import Experiment, experiment_modules
from rift_sweep.procedure.records import AlphaPoint, Scores, Versus
from rift_sweep.procedure.steps import alpha_by_rule, alpha_path, choose_modules, finetune, score_modules


@dataclass
class RiftReport:
    mrc: list[MRCResult]  # ranked, lowest MRC first
    module: str
    finetune: FinetuneResult
    at_val: Scores
    path: list[AlphaPoint]  # validation, per α of the grid
    alpha: float  # the rule's choice; 0.0 when no α keeps robustness (the AT model stands)
    at_test: Scores
    rift_test: Scores
    test_versus_at: Versus  # RiFT against AT on the same test images
    ood_source: str | None  # "real" or "generated"


def run_paper_procedure(
    exp: Experiment, *, progress: bool = True, on_at_val: Callable[[Scores], None] | None = None
) -> RiftReport:
    """The whole procedure; `on_at_val` gets the AT model's validation scores first, before any MRC, so a wrong
    model shows in the first minute."""
    config = exp.config
    at = at_point(exp)
    if on_at_val is not None:
        on_at_val(at.scores)
    ranked = score_modules(exp, experiment_modules(config, exp.model), progress=progress)
    module = choose_modules([r.module for r in ranked], config.modules)[0]
    finetuned = finetune(exp, module, config.finetune, progress=progress)
    path = alpha_path(exp, finetuned.best_state, at, progress=progress)
    alpha = alpha_by_rule(path, at, config.alpha)
    runs = config.attack.test_runs
    rift = interpolate_state(exp.at_state, finetuned.best_state, alpha)
    at_test, rift_test = exp.examples(exp.at_state, "test", runs=runs), exp.examples(rift, "test", runs=runs)
    ood = exp.ood("test")
    return RiftReport(
        mrc=ranked,
        module=module,
        finetune=finetuned,
        at_val=at.scores,
        path=path,
        alpha=alpha,
        at_test=at_test.scores(exp.ood_accuracies(exp.at_state, "test")),
        rift_test=rift_test.scores(exp.ood_accuracies(rift, "test")),
        test_versus_at=rift_test.versus(at_test),
        ood_source=ood.source if ood else None,
    )


def at_point(exp: Experiment) -> AlphaPoint:
    """The AT model on validation, as the α path's α = 0."""
    examples = exp.examples(exp.at_state, "val")
    return AlphaPoint(0.0, examples.scores(exp.ood_accuracies(exp.at_state, "val")), examples)
