"""The core on a CUDA device: each test runs on the CPU too (the same logic, seconds) and on CUDA where there is one.

The project has never run on CUDA; bench/gpu_check.py runs these there (`pytest -m gpu`). What differs across
devices is floating point (cuDNN's TF32 convolutions, other summation orders, atomics in backward passes), so
results are compared within tolerances and never bit for bit; a count of examples may move by a few flips.

Most tests use the digits model lifted to 3 input channels (`digits3`): with one channel an NCHW batch and its
channels-last copy have the same memory, so only a multi-channel input exercises the layout that
core.models.architectures.on_device puts every model in.
"""

from __future__ import annotations

import copy
import dataclasses
import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rift_sweep.core.data.datasets import Split
from rift_sweep.core.finetune import FinetuneResult, FinetuneSettings, FinetuneState, finetune_module
from rift_sweep.core.models.architectures import build_model, on_device
from rift_sweep.core.mrc import MRCSettings, module_robust_criticality
from rift_sweep.core.robustness.attacks import PGD, AttackCost, attack_split
from rift_sweep.core.robustness.evaluate import evaluate_examples, robust_examples

from conftest import DIGITS_PGD
from helpers import requires

CUDA = pytest.param("cuda", marks=[requires("cuda"), pytest.mark.gpu])
DEVICES = ["cpu", CUDA]


def is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def three_channels(split: Split) -> Split:
    return Split(split.x.repeat(1, 3, 1, 1), split.y)


@pytest.fixture(scope="module")
def digits3(digits, digits_model) -> nn.Module:
    """The digits model taking 3 identical channels: conv1's weights split in thirds over them, the rest as is,
    so on grey images it computes what the 1-channel model computes."""
    info = digits.info
    model = build_model("small_cnn", num_classes=10, in_channels=3, mean=info.mean, std=info.std)
    state = dict(digits_model.state_dict())
    state["conv1.weight"] = state["conv1.weight"].repeat(1, 3, 1, 1) / 3
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def val3(digits) -> Split:
    return three_channels(digits.val)


@pytest.fixture(scope="module")
def test3(digits) -> Split:
    return three_channels(digits.test)


def placed(model: nn.Module, device: str) -> nn.Module:
    """A private copy of `model` as the project runs it: on `device`, channels-last, in eval mode."""
    return on_device(copy.deepcopy(model), device).eval()


def test_the_lifted_digits_model_computes_what_the_digits_model_computes(digits, digits_model, digits3):
    x = digits.val.x[:64].float() / 255
    with torch.no_grad():
        assert torch.allclose(digits3(x.repeat(1, 3, 1, 1)), digits_model(x), atol=1e-5)


# --- channels-last models -----------------------------------------------------------------------------------


def with_random_bn_statistics(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics, so eval-mode BatchNorm matters in the comparison."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model.eval()


LAYOUT_CASES = [("small_cnn", 8), ("resnet18", 4), ("preact_resnet18", 4)]


@pytest.mark.parametrize(
    "device,name,batch",
    [("cpu", name, batch) for name, batch in LAYOUT_CASES]  # WideResNet-34-10 takes ~3 s on the CPU: CUDA only
    + [pytest.param("cuda", name, batch, marks=CUDA.marks) for name, batch in [*LAYOUT_CASES, ("wrn34_10", 2)]],
)
def test_a_channels_last_model_on_the_device_gives_the_cpu_logits_and_input_gradients(device, name, batch):
    torch.manual_seed(0)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    reference = with_random_bn_statistics(build_model(name, num_classes=10, in_channels=3, mean=mean, std=std), 1)
    moved = placed(reference, device)
    convs = [m.weight for m in moved.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert all(torch.equal(v.cpu(), reference.state_dict()[k]) for k, v in moved.state_dict().items())

    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.arange(batch) % 10

    def logits_and_input_gradient(model, x, y):
        x = x.clone().requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
        return logits.detach().cpu(), grad.cpu()

    logits, grad = logits_and_input_gradient(reference, x, y)
    logits_dev, grad_dev = logits_and_input_gradient(moved, x.to(device), y.to(device))
    # cuDNN runs fp32 convolutions in TF32 by default (10-bit mantissa): about 1e-3 relative per layer.
    tolerance = 3e-2 if is_cuda(device) else 1e-4
    assert (logits_dev - logits).abs().max() <= tolerance * max(1.0, logits.abs().max().item())
    assert F.cosine_similarity(grad_dev.flatten(), grad.flatten(), dim=0) > (0.99 if is_cuda(device) else 0.9999)


# --- MRC ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adversarial3(digits3, val3):
    """PGD examples against the lifted model on validation, made once on the CPU (as the MRC pool ships them)."""
    return attack_split(DIGITS_PGD, digits3, val3, batch_size=256, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("module,variant", [("conv2", "paper"), ("fc1", "reference")])
def test_mrc_of_a_module_on_the_device_matches_the_contiguous_cpu_model(digits3, adversarial3, device, module, variant):
    settings = MRCSettings(epsilon=0.1, epochs=3, batch_size=128, variant=variant)
    on_cpu = module_robust_criticality(digits3, module, adversarial3, settings, seed=5)
    model = placed(digits3, device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = module_robust_criticality(model, module, adversarial3, settings, device=device, seed=5)
    rel = 2e-2 if is_cuda(device) else 1e-4
    assert on_cpu.mrc > 0  # the comparison below would hold trivially at 0
    assert found.mrc == pytest.approx(on_cpu.mrc, rel=rel, abs=1e-4)
    assert found.loss_before == pytest.approx(on_cpu.loss_before, rel=rel, abs=1e-5)
    assert found.relative_norm == pytest.approx(on_cpu.relative_norm, rel=rel)
    assert found.epochs_run == on_cpu.epochs_run
    flips = 6 if is_cuda(device) else 1  # the perturbed model is far from θ: a nudge of Δ flips a few examples
    assert abs(found.rob_acc_drop - on_cpu.rob_acc_drop) <= flips * 100 / len(adversarial3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is left as found


# --- fine-tuning, resumed mid-way ------------------------------------------------------------------------------


def round_trip(state: FinetuneState) -> FinetuneState:
    """A trial checkpoint: saved as the sweep saves it, read back onto the CPU in another process's way."""
    buffer = io.BytesIO()
    torch.save(dataclasses.asdict(state), buffer)
    buffer.seek(0)
    return FinetuneState(**torch.load(buffer, map_location="cpu", weights_only=True))


@pytest.mark.parametrize("device", DEVICES)
def test_a_finetune_resumed_from_an_epoch_checkpoint_matches_the_uninterrupted_one(digits, digits3, device):
    train, val = three_channels(digits.train), three_channels(digits.val)
    settings = FinetuneSettings(lr=0.01, epochs=3, batch_size=64)
    checkpoints: dict[str, list[FinetuneState]] = {"full": [], "resumed": []}

    def keeper(run: str):
        return lambda state: checkpoints[run].append(round_trip(state))

    def finetune(run: str, resume: FinetuneState | None = None) -> FinetuneResult:
        model = placed(digits3, device)
        return finetune_module(
            model, "conv2", train, val, settings, seed=3, device=device, resume=resume, on_epoch=keeper(run)
        )

    full = finetune("full")
    resume = checkpoints["full"][0]
    assert resume.epochs_done == 1 and resume.optimizer_state["state"], "no momentum saved: nothing to resume"
    resumed = finetune("resumed", resume)

    assert [c.epochs_done for c in checkpoints["resumed"]] == [2, 3] and len(resumed.val_acc) == 3
    weight = "conv2.weight"
    last, last_resumed = checkpoints["full"][-1].model_state[weight], checkpoints["resumed"][-1].model_state[weight]
    assert not torch.equal(last, digits3.state_dict()[weight])  # it did train
    assert all(v.device.type == "cpu" for v in resumed.best_state.values())  # checkpoints stay on the CPU
    if is_cuda(device):  # cuDNN's backward passes may sum in another order: equal up to float noise
        assert torch.allclose(last_resumed, last, rtol=1e-4, atol=1e-6)
        assert np.allclose(resumed.val_acc, full.val_acc, atol=100 / len(val) + 1e-9)
        best = np.array(full.val_acc)
        assert resumed.best_epoch == full.best_epoch or abs(best[resumed.best_epoch - 1] - best.max()) <= 100 / len(val)
    else:
        assert torch.equal(last_resumed, last)
        assert resumed.val_acc == full.val_acc and resumed.best_epoch == full.best_epoch
        assert all(torch.equal(resumed.best_state[k], v) for k, v in full.best_state.items())


# --- robustness counted in chunks ------------------------------------------------------------------------------

ATTACK = PGD(eps=0.1, step_size=0.025, steps=5)


@pytest.mark.parametrize("device", DEVICES)
def test_robustness_in_chunks_on_the_device_adds_up_to_one_whole_call(digits3, test3, device):
    model = placed(digits3, device)
    n, chunks = len(test3), 3
    whole_cost = AttackCost()
    whole = robust_examples(model, test3, ATTACK, seed=4, batch_size=128, device=device, cost=whole_cost)
    parts, part_cost = [], AttackCost()
    for chunk in range(chunks):  # the contiguous chunks the front's workers get
        among = torch.arange(n) * chunks // n == chunk
        part = robust_examples(model, test3, ATTACK, seed=4, batch_size=128, device=device, among=among, cost=part_cost)
        assert part.device.type == "cpu" and not part[~among].any()  # outside its chunk: never attacked
        parts.append(part)
    joined = parts[0] | parts[1] | parts[2]
    assert 0 < int(whole.sum()) < n  # some robust, some broken: the comparison means something
    # The same starts: only float rounding differs (other batch compositions; on CUDA TF32 and cuDNN's choices);
    # other starts would flip ~10 of these examples.
    assert int((joined != whole).sum()) <= (2 if is_cuda(device) else 1)
    assert part_cost.gradient_evals == pytest.approx(whole_cost.gradient_evals, rel=0.02)
    on_cpu = robust_examples(digits3, test3, ATTACK, seed=4, batch_size=128)
    assert int((whole != on_cpu).sum()) <= (4 if is_cuda(device) else 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", [False, True])
def test_clean_and_robust_examples_on_the_device_match_the_cpu(digits3, test3, device, amp):
    model = placed(digits3, device)
    found = evaluate_examples(model, test3, pgd=ATTACK, batch_size=100, device=device, seed=2, amp=amp)
    on_cpu = evaluate_examples(digits3, test3, pgd=ATTACK, batch_size=100, seed=2)
    assert int((found.clean != on_cpu.clean).sum()) <= (1 if is_cuda(device) else 0)
    # bf16 autocast (amp, CUDA only: ignored elsewhere) moves the attack's iterates a little: a few more flips
    flips = (3 + 3 * amp) if is_cuda(device) else 1
    assert int((found.robust != on_cpu.robust).sum()) <= flips
    assert not (found.robust & ~found.clean).any()
    assert 0 < found.robust.sum() < found.clean.sum()


# --- AutoAttack -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow), CUDA])
def test_autoattack_on_the_device_breaks_at_least_what_pgd_breaks(digits3, test3, device):
    """On the CPU this takes ~8 s (AutoAttack's Square runs 5000 queries per robust image): `slow`."""
    pytest.importorskip("pyautoattack", reason="pyautoattack is not installed (pip install 'rift-sweep[autoattack]')")
    from rift_sweep.core.robustness.autoattack import autoattack_examples

    images = Split(test3.x[:4], test3.y[:4])
    model = placed(digits3, device)
    robust = autoattack_examples(model, images, eps=0.1, batch_size=4, device=device)
    pgd = evaluate_examples(model, images, pgd=ATTACK, device=device)
    assert pgd.robust.any()  # else the comparison below holds trivially
    assert robust.dtype == np.bool_ and robust.shape == (4,)
    assert not (robust & ~pgd.clean).any()  # misclassified clean: never robust
    assert robust.sum() <= pgd.robust.sum()  # the standard ensemble is at least as strong as PGD-5
    assert next(model.parameters()).device.type == torch.device(device).type  # the model stays where it was
