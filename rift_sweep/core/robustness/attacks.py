"""Adversarial attacks: PGD under the ℓ∞ distance, and adversarial copies of whole splits.

Images are float32 in [0, 1] when fed to models (uint8 at rest); ε and step sizes are in pixel units
(8/255). Models normalise inside, so attacks never see mean/std.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from rift_sweep.core.data.datasets import to_unit
from rift_sweep.core.models.architectures import only_trainable


class LabelledImages(Protocol):
    """Anything with images `x` [N, C, H, W] (uint8, or float in [0, 1]) and labels `y` int64 [N]."""

    x: Tensor
    y: Tensor


@dataclass
class AdversarialSet:
    """Adversarial examples kept in float32 (quantising to uint8 would undo part of the attack).

    x: float32 [N, C, H, W] in [0, 1]; y: int64 [N], the true labels. Built once (e.g. by `attack_split`)
    and passed around as is; this is what MRC consumes.
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.float32:
            raise ValueError(f"AdversarialSet.x must be float32, got {self.x.dtype}; convert with x.float()")
        if self.y.dtype != torch.int64 or self.y.ndim != 1:
            raise ValueError(f"AdversarialSet.y must be int64 [N], got {self.y.dtype} {tuple(self.y.shape)}")
        if len(self.x) != len(self.y):
            raise ValueError(f"AdversarialSet has {len(self.x)} images but {len(self.y)} labels; they must match")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> AdversarialSet:
        return AdversarialSet(self.x.to(device), self.y.to(device))


@dataclass
class AttackCost:
    """Model passes an attack spent, counted per example: what evaluation time is made of.

    gradient_evals: forward+backward passes, one per example per PGD step (N examples x `steps` for a
        last-iterate attack; fewer with early stopping, which drops broken examples).
    forward_evals: forward-only passes, one per example: the clean check, the final check of the last iterate,
        and the comparison of restarts.

    Pass one object to as many calls as should be added up; it is only ever incremented.
    """

    gradient_evals: int = 0
    forward_evals: int = 0


@dataclass(frozen=True)
class PGD:
    r"""PGD in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks' (Madry et al., ICLR 2018)
    [https://arxiv.org/abs/1706.06083]

    Distance Measure : Linf

    Arguments:
        eps: maximum perturbation, pixel units. (Default: 8/255)
        step_size: size of each signed-gradient step. (Default: 2/255)
        steps: number of steps, at least 1. (Default: 10)
        restarts: random restarts; per example the worst case is kept (misclassified first, else the highest
            loss). Examples already misclassified are not attacked again. (Default: 1)
        random_start: start from a uniform draw in [-eps, eps] (clipped to [0, 1]) rather than from x. (Default: True)

    Shape:
        - x: (N, C, H, W) float in [0, 1].
        - y: (N) int64 with 0 <= y_i < number of classes.
        - output: (N, C, H, W) float, ‖output − x‖∞ <= eps, values in [0, 1].

    Random starts: every call draws the starts of all restarts for the whole batch at once, before attacking
    ([restarts, N, C, H, W] uniform draws on `generator`), so the starts of an example, and the generator's state
    afterwards, do not depend on which examples were dropped along the way.

    Examples::
        >>> pgd = PGD(eps=8/255, step_size=2/255, steps=10)
        >>> x_adv = pgd.perturb(model, x, y, generator=torch.Generator().manual_seed(0))
        >>> robust = pgd.robust_correct(model, x, y, generator=torch.Generator().manual_seed(0))
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    restarts: int = 1
    random_start: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"PGD.eps must be a finite number > 0 (pixel units, e.g. 8/255), got {self.eps}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(
                f"PGD.step_size must be a finite number > 0 (pixel units, e.g. 2/255), got {self.step_size}"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"PGD.steps must be an integer >= 1, got {self.steps!r}")
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 1:
            raise ValueError(f"PGD.restarts must be an integer >= 1, got {self.restarts!r}")
        if self.restarts > 1 and not self.random_start:
            raise ValueError("PGD.restarts > 1 needs PGD.random_start=True (without it every restart is identical)")

    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        generator: torch.Generator | None = None,
        amp: bool = False,
        cost: AttackCost | None = None,
    ) -> Tensor:
        """Adversarial examples for the batch (x, y), each the last iterate of its (worst) restart; the model is
        left exactly as found. Use these to train on or to keep (MRC's fixed set); to count robust examples use
        `robust_correct`, which also counts examples fooled only at an intermediate step.

        The random starts are drawn on `generator`'s device (the global CPU generator when None) and moved
        to x's device, so a CPU generator gives the same starts on every device. `amp` runs the gradient steps'
        forward under autocast on CUDA (see `amp_dtype`); the perturbation, and the comparison of restarts, stay
        fp32. It is ignored on other devices. `cost`, when given, is incremented by the passes spent.
        """
        _check_batch(model, x, y)
        if len(x) == 0:
            return x.detach().clone()
        amp_dtype = amp_dtype_for(x.device) if amp else None
        starts = self._draw_starts(x, generator)
        cost = cost if cost is not None else AttackCost()
        # Frozen parameters: the forward saves nothing for weight gradients, and BatchNorm's backward does less work.
        with eval_mode(model), only_trainable(model), torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone()  # a normal tensor, even if the caller's was made under inference_mode
            if self.restarts == 1:
                return self._attack_once(
                    model, x, y=y, start=_start(starts, 0, None, x), amp_dtype=amp_dtype, cost=cost
                )
            adv = x.clone()
            best_loss = torch.full((len(x),), -math.inf, device=x.device)
            todo = torch.arange(len(x), device=x.device)
            for restart in range(self.restarts):
                start = _start(starts, restart, todo, x)
                candidate = self._attack_once(model, x[todo], y=y[todo], start=start, amp_dtype=amp_dtype, cost=cost)
                adv, best_loss, fooled = _keep_worst(
                    model, candidate, y=y, todo=todo, adv=adv, best_loss=best_loss, cost=cost
                )
                todo = todo[~fooled]
                if len(todo) == 0:
                    break
            return adv

    def robust_correct(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        generator: torch.Generator | None = None,
        amp: bool = False,
        cost: AttackCost | None = None,
        skip: Tensor | None = None,
    ) -> Tensor:
        """Which examples withstand the attack, with early stopping (AutoAttack's convention): bool [N] on x's device.

        Example i counts as robust (True) only if the model classifies correctly its clean image and every
        PGD iterate of every restart: the start x_0 (random, or x itself), each of the `steps` updates x_1 ...
        x_steps. It counts as broken (False) as soon as one of them is misclassified, and is then dropped from
        the batch: no further steps or restarts are spent on it. Examples misclassified clean are broken
        without any attack. From the same generator the starts and steps are those of `perturb`, so it never
        counts more robust examples than `perturb`'s last iterates do (up to float rounding that may differ
        between batch sizes), and usually a few fewer.

        Cost: one fp32 forward per example for the clean check; per step, one forward+backward per example
        still standing, whose logits (at the current iterate) also decide who is fooled there, so no extra
        forward is spent; after the last step one fp32 forward on the survivors judges the last iterate. With
        `amp` (CUDA only, see `amp_dtype`) the step's half-precision logits only propose who is fooled: each
        proposed example is judged again by an fp32 forward, so every verdict is fp32's. `cost`, when given, is
        incremented by these passes.

        `skip`: bool [N], examples already known broken (e.g. by an earlier run); they are reported False
        without any pass. The random starts are still drawn for the whole batch, so the other examples get
        exactly the starts they would get without `skip`.
        """
        _check_batch(model, x, y)
        if skip is not None and (skip.dtype != torch.bool or skip.shape != y.shape):
            raise ValueError(
                f"skip must be a bool mask [N] over the {len(y)} examples, got {skip.dtype} {tuple(skip.shape)}"
            )
        robust = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        starts = self._draw_starts(x, generator)
        if len(x) == 0:
            return robust
        amp_dtype = amp_dtype_for(x.device) if amp else None
        cost = cost if cost is not None else AttackCost()
        rows = torch.arange(len(x), device=x.device) if skip is None else (~skip.to(x.device)).nonzero().squeeze(1)
        with eval_mode(model), only_trainable(model), torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone()  # a normal tensor, even if the caller's was made under inference_mode
            rows = rows[_predicts(model, x[rows], y[rows], cost)]
            for restart in range(self.restarts):
                if len(rows) == 0:
                    break
                start = _start(starts, restart, rows, x)
                rows = rows[self._survivors(model, x[rows], y=y[rows], start=start, amp_dtype=amp_dtype, cost=cost)]
        return robust.index_fill_(0, rows, True)

    def _attack_once(
        self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, amp_dtype: torch.dtype | None, cost: AttackCost
    ) -> Tensor:
        """One PGD run from one start (noise, or zeros without a random start), to the last iterate."""
        lower, upper = self._box(x)
        adv = (x + start).clamp_(lower, upper)
        for _ in range(self.steps):
            _, grad = _logits_and_gradient(model, adv, y=y, amp_dtype=amp_dtype, cost=cost)
            adv = adv.add_(grad.sign_(), alpha=self.step_size).clamp_(lower, upper)
        return adv

    def _survivors(
        self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, amp_dtype: torch.dtype | None, cost: AttackCost
    ) -> Tensor:
        """Bool [len(x)]: True where no iterate of one PGD run from `start` fools the model.

        Each step's forward both gives the gradient and judges the current iterate (in fp32: under autocast its
        verdict "fooled" is checked by an fp32 forward on those rows); fooled rows leave the batch.
        """
        lower, upper = self._box(x)
        adv = (x + start).clamp_(lower, upper)
        rows = torch.arange(len(x), device=x.device)
        for _ in range(self.steps):
            logits, grad = _logits_and_gradient(model, adv, y=y, amp_dtype=amp_dtype, cost=cost)
            held = logits.argmax(dim=1) == y
            if amp_dtype is not None and not held.all():
                proposed = ~held
                held[proposed] = _predicts(model, adv[proposed], y[proposed], cost)
            if not held.all():
                rows, adv, grad, y, lower, upper = (t[held] for t in (rows, adv, grad, y, lower, upper))
                if len(rows) == 0:
                    return torch.zeros(len(x), dtype=torch.bool, device=x.device)
            adv = adv.add_(grad.sign_(), alpha=self.step_size).clamp_(lower, upper)
        survived = rows[_predicts(model, adv, y, cost)]
        return torch.zeros(len(x), dtype=torch.bool, device=x.device).index_fill_(0, survived, True)

    def _box(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The feasible set [x − eps, x + eps] ∩ [0, 1], as lower and upper bounds."""
        return (x - self.eps).clamp_(min=0.0), (x + self.eps).clamp_(max=1.0)

    def _draw_starts(self, x: Tensor, generator: torch.Generator | None) -> Tensor | None:
        """Uniform noise in [-eps, eps], [restarts, *x.shape], on the generator's device; None without random starts.

        Drawn in one go for the whole batch, so which rows later drop out changes neither the starts nor the
        generator's state afterwards. With one restart these are the same numbers as one draw of x.shape.
        """
        if not self.random_start:
            return None
        draw_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.rand((self.restarts, *x.shape), generator=generator, device=draw_device, dtype=torch.float32)
        return noise.mul_(2 * self.eps).sub_(self.eps)


def _start(starts: Tensor | None, restart: int, rows: Tensor | None, x: Tensor) -> Tensor:
    """The start offsets of `restart` for `rows` (all when None), shaped and placed like x[rows]; zeros if no noise."""
    like = x if rows is None else x[rows]
    if starts is None:
        return torch.zeros_like(like)
    noise = starts[restart] if rows is None else starts[restart][rows.to(starts.device)]
    # copy_ keeps x's memory format (e.g. channels_last) while the values follow the logical index.
    return torch.empty_like(like).copy_(noise)


def _logits_and_gradient(
    model: nn.Module, adv: Tensor, y: Tensor, amp_dtype: torch.dtype | None, cost: AttackCost
) -> tuple[Tensor, Tensor]:
    """Logits at `adv` (as float32) and the gradient of the summed cross-entropy with respect to it: one pass per
    example. Under fp16 the loss is scaled by FP16_LOSS_SCALE before the backward pass, so small input gradients
    (robust models have them) do not underflow to 0, whose sign would stall the attack; a step whose scaled gradient
    overflows is computed again in fp32."""
    adv = adv.detach().requires_grad_(True)
    scale = FP16_LOSS_SCALE if amp_dtype == torch.float16 else 1.0
    with _autocast(adv.device, amp_dtype):
        logits = model(adv)
    logits = logits.float()
    # Summed, not averaged: the same gradient signs, but unscaled by 1/N, so half precision underflows less.
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum") * scale, adv)
    cost.gradient_evals += len(adv)
    if scale != 1.0 and not torch.isfinite(grad).all():
        return _logits_and_gradient(model, adv, y=y, amp_dtype=None, cost=cost)
    return logits.detach(), grad.div_(scale)


def _predicts(model: nn.Module, x: Tensor, y: Tensor, cost: AttackCost) -> Tensor:
    """Bool [len(x)]: the model's fp32 prediction is y; one forward-only pass per example."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device)
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    cost.forward_evals += len(x)
    return correct


def _keep_worst(
    model: nn.Module,
    candidate: Tensor,
    y: Tensor,
    todo: Tensor,
    adv: Tensor,
    best_loss: Tensor,
    cost: AttackCost,
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge one restart's examples (for rows `todo`) into the worst case so far (by fp32 logits); also return which
    are fooled."""
    with torch.no_grad():
        logits = model(candidate).float()
    cost.forward_evals += len(candidate)
    labels = y[todo]
    loss = F.cross_entropy(logits, labels, reduction="none")
    fooled = logits.argmax(dim=1) != labels
    # Rows in `todo` are not yet fooled, so a fooled candidate always wins; otherwise the higher loss does.
    better = fooled | (loss > best_loss[todo])
    rows = todo[better]
    adv = adv.index_copy(0, rows, candidate[better])
    best_loss = best_loss.index_copy(0, rows, loss[better])
    return adv, best_loss, fooled


FP16_LOSS_SCALE = 2.0**16  # GradScaler's initial scale; only the gradient's sign is used, so any scale is exact


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an `amp` attack on `device`: bf16 where the GPU has it natively (Ampere and newer),
    else fp16 with a loss scale (T4, V100: emulated bf16 is slower than fp32); None (fp32) off CUDA."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    """Autocast for the model's forward when amp_dtype is set; a disabled no-op otherwise."""
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def _check_batch(model: nn.Module, x: Tensor, y: Tensor) -> None:
    if not x.is_floating_point():
        raise ValueError(f"PGD needs float images in [0, 1], got {x.dtype}; convert uint8 with x.float() / 255")
    if y.ndim != 1 or len(y) != len(x) or y.dtype != torch.int64:
        raise ValueError(
            f"PGD needs int64 labels [N] matching {len(x)} images, got {y.dtype} {tuple(y.shape)}; "
            "pass y.long() with one label per image"
        )
    if y.device != x.device:
        raise ValueError(f"labels are on {y.device} but images on {x.device}; move both to the model's device")
    check_model_device(model, x.device)
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError("PGD needs images in [0, 1]; models normalise inside, so pass unnormalised x (uint8 / 255)")


def check_model_device(model: nn.Module, device: torch.device | str) -> None:
    """Raise if the model's parameters are not on `device` (an index-less device such as "cuda" matches any index)."""
    wanted = torch.device(device)
    param = next(model.parameters(), None)
    if param is None:
        return
    found = param.device
    same_index = wanted.index is None or found.index is None or found.index == wanted.index
    if found.type != wanted.type or not same_index:
        raise ValueError(f"model is on {found} but the data is on {wanted}; move it with model.to({str(wanted)!r})")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval() and restore each one's own mode afterwards.

    Restoring per submodule (not model.train(was_training)) keeps mixed states intact, e.g. a model in
    train() whose BatchNorm layers were frozen in eval().
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def image_batches(
    images: Tensor, labels: Tensor, batch_size: int, device: torch.device | str
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (float32 images in [0, 1], int64 labels) on `device`, in order.

    uint8 images are scaled by 1/255; float images pass through unchanged.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; they must match")
    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        x = to_unit(x) if x.dtype == torch.uint8 else x.float()
        yield x, labels[start : start + batch_size].to(device, non_blocking=True)


def attack_split(
    pgd: PGD,
    model: nn.Module,
    split: LabelledImages,
    batch_size: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    *,
    amp: bool = False,
    progress: bool = False,
    cost: AttackCost | None = None,
) -> AdversarialSet:
    """An adversarial copy of a whole split (a data.Split or any x/y holder), attacked batch by batch in order.

    The result lives on the CPU in float32 so it can be built once and shipped (e.g. to MRC workers).
    Deterministic given `generator` (and the batch size, which fixes the order of the random draws).
    `cost`, when given, is incremented by the passes spent (see `AttackCost`).
    """
    check_model_device(model, device)
    adversarial = []
    batches = image_batches(split.x, split.y, batch_size, device)
    total = math.ceil(len(split.y) / batch_size)
    for x, y in tqdm(batches, total=total, desc="PGD", disable=None if progress else True, leave=False):
        adversarial.append(pgd.perturb(model, x, y, generator=generator, amp=amp, cost=cost).cpu())
    x_adv = torch.cat(adversarial) if adversarial else torch.empty((0, *split.x.shape[1:]), dtype=torch.float32)
    return AdversarialSet(x_adv, split.y.detach().cpu().long())
