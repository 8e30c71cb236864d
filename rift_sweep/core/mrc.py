"""Step 1 of RiFT: Module Robust Criticality (MRC).

MRC(i) = max_{‖Δ‖₂ ≤ ε‖θ⁽ⁱ⁾‖₂} R(θ + Δ) − R(θ), where only module i's weight is perturbed and R is the
cross-entropy on a FIXED adversarial set (built once with PGD against θ_AT). The max is approximated by
gradient ascent on θ⁽ⁱ⁾ (Zhu et al., ICCV 2023, Algorithm 1). A module with low MRC barely matters for
robustness: RiFT fine-tunes the module with the lowest MRC.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rift_sweep.core.errors import InputError
from rift_sweep.core.models.architectures import only_trainable
from rift_sweep.core.robustness.attacks import AdversarialSet, eval_mode
from rift_sweep.core.robustness.evaluate import loss_and_accuracy

#: Module types whose weights are candidates: every convolution and linear layer (BatchNorm excluded).
CANDIDATE_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class MRCSettings:
    """How MRC is approximated.

    variant "paper": after each epoch, if Δ left the ε-ball, project it back onto the sphere and stop.
    variant "reference": the reference code's loop — project but keep ascending for every epoch, re-evaluate
    the loss on the whole adversarial set after each epoch, and report the maximum over epochs.
    """

    epsilon: float = 0.1  # radius, relative to the module's weight norm
    epochs: int = 10
    step_size: float = 1.0  # plain gradient ascent, as the reference code's SGD(lr=1)
    batch_size: int = 512
    variant: Literal["paper", "reference"] = "paper"

    def __post_init__(self) -> None:
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0 (relative weight-norm radius, paper: 0.1); got {self.epsilon}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 (paper: 10); got {self.epochs}")
        if self.step_size <= 0:
            raise ValueError(f"step_size must be > 0 (reference code: 1.0); got {self.step_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.variant not in ("paper", "reference"):
            raise ValueError(f"variant must be 'paper' or 'reference'; got {self.variant!r}")


@dataclass(frozen=True)
class MRCResult:
    module: str
    mrc: float  # robust loss increase
    rob_acc_drop: float  # percentage points of accuracy lost on the adversarial set
    relative_norm: float  # final ‖Δ‖₂ / ‖θ⁽ⁱ⁾‖₂ (≤ ε, up to float rounding)
    loss_before: float
    loss_after: float
    num_params: int
    epochs_run: int
    seconds: float


def candidate_modules(
    model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = (), example: torch.Tensor | None = None
) -> list[str]:
    """Names of the Conv2d/Linear modules whose weights MRC scores, in model order.

    `include`/`exclude` are fnmatch patterns on module names (e.g. "layer4.*"); an empty include keeps all.
    With an `example` input, only modules that run in a forward pass on it are kept: a module the forward
    never calls (TRADES' `sub_block1`) cannot matter, and must never be chosen.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, CANDIDATE_TYPES)]
    if example is not None:
        ran = executed_modules(model, example)
        names = [n for n in names if n in ran]
    if include:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)]
    if exclude:
        names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not names:
        raise InputError(f"no candidate module left after include={list(include)} exclude={list(exclude)}")
    return names


def executed_modules(model: nn.Module, example: torch.Tensor) -> set[str]:
    """Names of the Conv2d/Linear modules called in one forward pass on `example` (eval mode, no gradients)."""
    ran: set[str] = set()
    handles = [
        module.register_forward_hook(lambda *_, name=name: ran.add(name))
        for name, module in model.named_modules()
        if isinstance(module, CANDIDATE_TYPES)
    ]
    try:
        with eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return ran


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The named submodule, or a ValueError listing the candidate names."""
    modules = dict(model.named_modules())
    if name not in modules or not isinstance(modules[name], CANDIDATE_TYPES):
        raise ValueError(f"unknown module {name!r}; candidate modules are: {', '.join(candidate_modules(model))}")
    return modules[name]


def module_robust_criticality(
    model: nn.Module,
    module_name: str,
    adversarial: AdversarialSet,
    settings: MRCSettings = MRCSettings(),
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    baseline: tuple[float, float] | None = None,
) -> MRCResult:
    """MRC of one module; the model is returned unchanged (weights, mode, requires_grad).

    `adversarial` is the fixed adversarial set built once against θ_AT. `baseline` = (loss, accuracy%) of the
    unperturbed model on it, when the caller already has it (the same for every module).
    """
    start = time.perf_counter()
    weight = get_module(model, module_name).weight
    original = weight.detach().clone()
    with eval_mode(model), _perturbing(model, weight, original):  # BN statistics stay those of θ_AT
        if baseline is None:
            baseline = loss_and_accuracy(
                model, adversarial.x, adversarial.y, batch_size=settings.batch_size, device=device
            )
        best = (0.0, 0.0)  # (loss increase, accuracy drop): Δ = 0 is feasible, so MRC >= 0
        radius = settings.epsilon * original.norm().item()
        generator = torch.Generator().manual_seed(seed)
        for epochs_run in range(1, settings.epochs + 1):
            _ascend_one_epoch(
                model, weight, adversarial=adversarial, settings=settings, generator=generator, device=device
            )
            projected = _project(weight, original, radius)
            if settings.variant == "reference":
                best = max(best, _measure(model, adversarial, settings=settings, device=device, baseline=baseline))
            elif projected:
                break
        if settings.variant == "paper":
            best = max(best, _measure(model, adversarial, settings=settings, device=device, baseline=baseline))
        relative_norm = ((weight - original).norm() / original.norm()).item()
    increase, drop = best
    return MRCResult(
        module=module_name,
        mrc=increase,
        rob_acc_drop=drop,
        relative_norm=relative_norm,
        loss_before=baseline[0],
        loss_after=baseline[0] + increase,
        num_params=weight.numel(),
        epochs_run=epochs_run,
        seconds=time.perf_counter() - start,
    )


@contextmanager
def _perturbing(model: nn.Module, weight: nn.Parameter, original: torch.Tensor) -> Iterator[None]:
    """Only `weight` requires grad inside; afterwards it holds `original` again and the flags are as found."""
    try:
        with only_trainable(model, weight):
            yield
    finally:
        with torch.no_grad():
            weight.copy_(original)
        weight.grad = None


def _ascend_one_epoch(model, weight, adversarial, settings, generator, device) -> None:
    """One pass of plain gradient ascent on the cross-entropy w.r.t. the module's weight only."""
    order = torch.randperm(len(adversarial.y), generator=generator)
    for idx in order.split(settings.batch_size):
        x = adversarial.x[idx].to(device, non_blocking=True)
        y = adversarial.y[idx].to(device, non_blocking=True)
        loss = nn.functional.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, weight)
        with torch.no_grad():
            weight.add_(grad, alpha=settings.step_size)


def _project(weight: torch.Tensor, original: torch.Tensor, radius: float) -> bool:
    """Pull Δ back onto the ε-sphere if it left the ball; True when it did."""
    with torch.no_grad():
        delta = weight - original
        norm = delta.norm().item()
        if norm <= radius:
            return False
        weight.copy_(original + delta * (radius / norm))
        return True


def _measure(model, adversarial, settings, device, baseline) -> tuple[float, float]:
    """(loss increase, accuracy drop) of the current perturbation on the whole adversarial set."""
    loss, acc = loss_and_accuracy(model, adversarial.x, adversarial.y, batch_size=settings.batch_size, device=device)
    return loss - baseline[0], baseline[1] - acc
