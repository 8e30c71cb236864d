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

from rift_sweep.core.models import only_trainable


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

    Examples::
        >>> pgd = PGD(eps=8/255, step_size=2/255, steps=10)
        >>> x_adv = pgd.perturb(model, x, y, generator=torch.Generator().manual_seed(0))
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
    ) -> Tensor:
        """Adversarial examples for the batch (x, y); the model is left exactly as found.

        The random starts are drawn on `generator`'s device (the global CPU generator when None) and moved
        to x's device, so a CPU generator gives the same starts on every device. `amp` runs the model's
        forward under autocast (bf16 where supported, else fp16) on CUDA; the perturbation stays fp32.
        It is ignored on other devices.
        """
        _check_batch(model, x, y)
        if len(x) == 0:
            return x.detach().clone()
        amp_dtype = _amp_dtype() if amp and x.device.type == "cuda" else None
        # Frozen parameters: the forward saves nothing for weight gradients, and BatchNorm's backward does less work.
        with eval_mode(model), only_trainable(model), torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone()  # a normal tensor, even if the caller's was made under inference_mode
            if self.restarts == 1:
                return self._attack_once(model, x, y, generator, amp_dtype)
            adv = x.clone()
            best_loss = torch.full((len(x),), -math.inf, device=x.device)
            todo = torch.arange(len(x), device=x.device)
            for _ in range(self.restarts):
                candidate = self._attack_once(model, x[todo], y[todo], generator, amp_dtype)
                adv, best_loss, fooled = _keep_worst(model, candidate, y, todo, adv, best_loss, amp_dtype)
                todo = todo[~fooled]
                if len(todo) == 0:
                    break
            return adv

    def _attack_once(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None, amp_dtype: torch.dtype | None
    ) -> Tensor:
        """One PGD run from one start; the feasible box is [x − eps, x + eps] ∩ [0, 1]."""
        lower = (x - self.eps).clamp_(min=0.0)
        upper = (x + self.eps).clamp_(max=1.0)
        adv = (x + self._random_start(x, generator) if self.random_start else x.clone()).clamp_(lower, upper)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            with _autocast(x.device, amp_dtype):
                logits = model(adv)
            # Summed, not averaged: the same gradient signs, but unscaled by 1/N, so half precision underflows less.
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach().add_(grad.sign_(), alpha=self.step_size).clamp_(lower, upper)
        return adv.detach()

    def _random_start(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        draw_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.rand(x.shape, generator=generator, device=draw_device, dtype=torch.float32)
        # copy_ keeps x's memory format (e.g. channels_last) while the values follow the logical index.
        return torch.empty_like(x).copy_(noise).mul_(2 * self.eps).sub_(self.eps)


def _keep_worst(
    model: nn.Module,
    candidate: Tensor,
    y: Tensor,
    todo: Tensor,
    adv: Tensor,
    best_loss: Tensor,
    amp_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge one restart's examples (for rows `todo`) into the worst case so far; also return which are fooled."""
    with torch.no_grad(), _autocast(candidate.device, amp_dtype):
        logits = model(candidate)
    logits = logits.float()
    labels = y[todo]
    loss = F.cross_entropy(logits, labels, reduction="none")
    fooled = logits.argmax(dim=1) != labels
    # Rows in `todo` are not yet fooled, so a fooled candidate always wins; otherwise the higher loss does.
    better = fooled | (loss > best_loss[todo])
    rows = todo[better]
    adv = adv.index_copy(0, rows, candidate[better])
    best_loss = best_loss.index_copy(0, rows, loss[better])
    return adv, best_loss, fooled


def _amp_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
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
) -> AdversarialSet:
    """An adversarial copy of a whole split (a data.Split or any x/y holder), attacked batch by batch in order.

    The result lives on the CPU in float32 so it can be built once and shipped (e.g. to MRC workers).
    Deterministic given `generator` (and the batch size, which fixes the order of the random draws).
    """
    check_model_device(model, device)
    adversarial = []
    batches = image_batches(split.x, split.y, batch_size, device)
    total = math.ceil(len(split.y) / batch_size)
    for x, y in tqdm(batches, total=total, desc="PGD", disable=not progress, leave=False):
        adversarial.append(pgd.perturb(model, x, y, generator=generator, amp=amp).cpu())
    x_adv = torch.cat(adversarial) if adversarial else torch.empty((0, *split.x.shape[1:]), dtype=torch.float32)
    return AdversarialSet(x_adv, split.y.detach().cpu().long())
