"""PGD (ℓ∞) on a small CNN trained here on real Fashion-MNIST images; checked against torchattacks and against a
brute-force per-step loop for the early-stop count."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchattacks
from torch import nn
from torch.nn import functional as F

from rift_sweep.core.data.datasets import Split, iterate_batches, load_splits
from rift_sweep.core.robustness.attacks import PGD, AdversarialSet, AttackCost, attack_split
from rift_sweep.core.robustness.evaluate import robust_accuracy

from helpers import missing, requires

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
EPS = 8 / 255


def small_cnn() -> nn.Module:
    """Lighter than models.small_cnn (trains in ~1 s here); BatchNorm makes train/eval mode matter."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, 3, padding=1),
            bn1=nn.BatchNorm2d(16),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 7 * 7, 10),
        )
    )


@pytest.fixture(scope="module")
def data():
    """Real Fashion-MNIST when installed; otherwise scikit-learn's digits (always here) scaled to 28x28, so the
    attack tests and the torchattacks parity check run on every machine."""
    if missing("fashion-mnist") is None:
        splits = load_splits("fashion-mnist", FASHION_MNIST, train_subset=4000, val_subset=100, test_subset=1000)
        return splits.train, splits.test
    digits = load_splits("digits", val_size=1)
    x = torch.cat([digits.train.x, digits.val.x, digits.test.x]).float()
    y = torch.cat([digits.train.y, digits.val.y, digits.test.y])
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return Split(x[:797], y[:797]), Split(x[797:], y[797:])


@pytest.fixture(scope="module")
def model(data) -> nn.Module:
    """Two epochs of Adam on 4,000 training images: about 80% test accuracy, far from robust."""
    train, _ = data
    torch.manual_seed(0)
    net = small_cnn()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for x, y in iterate_batches(train, 64, shuffle=True, generator=generator):
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    return net.eval()


@pytest.fixture(scope="module")
def batch(data) -> tuple[torch.Tensor, torch.Tensor]:
    _, test = data
    return test.x[:128].float() / 255, test.y[:128]


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pgd_lowers_accuracy_and_stays_in_the_eps_ball(model, batch):
    x, y = batch
    adv = PGD(eps=EPS).perturb(model, x, y, generator=seeded(0))
    assert adv.shape == x.shape and adv.dtype == torch.float32
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    clean, robust = correct(model, x, y).float().mean() * 100, correct(model, adv, y).float().mean() * 100
    assert clean > 70
    assert robust < clean - 15, f"PGD barely changed accuracy: {clean:.1f}% -> {robust:.1f}%"


def test_pgd_is_deterministic_given_a_generator(model, batch):
    x, y = batch
    pgd = PGD(eps=EPS, restarts=2)
    first = pgd.perturb(model, x, y, generator=seeded(3))
    again = pgd.perturb(model, x, y, generator=seeded(3))
    other = pgd.perturb(model, x, y, generator=seeded(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_without_random_start_pgd_needs_no_generator(model, batch):
    x, y = batch
    pgd = PGD(eps=EPS, random_start=False)
    assert torch.equal(pgd.perturb(model, x, y), pgd.perturb(model, x, y))


def test_restarts_keep_the_worst_case_per_example(model, data):
    _, test = data
    x, y = test.x[:500].float() / 255, test.y[:500]
    one = PGD(eps=EPS, restarts=1).perturb(model, x, y, generator=seeded(0))
    three = PGD(eps=EPS, restarts=3).perturb(model, x, y, generator=seeded(0))
    assert (three - x).abs().max() <= EPS + 1e-6
    fooled_once, fooled_thrice = ~correct(model, one, y), ~correct(model, three, y)
    # The first restart is the restarts=1 attack: nothing fooled there may come back, and more may fall.
    assert not (fooled_once & ~fooled_thrice).any()
    assert fooled_thrice.sum() >= fooled_once.sum()
    with torch.no_grad():
        loss_once = F.cross_entropy(model(one), y, reduction="none")
        loss_thrice = F.cross_entropy(model(three), y, reduction="none")
    still_correct = ~fooled_thrice
    assert (loss_thrice[still_correct] >= loss_once[still_correct] - 1e-4).all()


@pytest.mark.parametrize("start_mode", ["train", "eval", "mixed"])
def test_model_is_left_exactly_as_found(model, batch, start_mode):
    x, y = batch
    net = small_cnn()
    net.load_state_dict(model.state_dict())
    net.train(start_mode != "eval")
    if start_mode == "mixed":
        net.bn1.eval()  # e.g. BatchNorm frozen while the rest trains
    modes = [m.training for m in net.modules()]
    net.conv1.weight.grad = torch.full_like(net.conv1.weight, 0.5)
    existing_grad = net.conv1.weight.grad
    net.fc1.bias.requires_grad_(False)
    flags = [p.requires_grad for p in net.parameters()]
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    weights = {name: p.detach().clone() for name, p in net.named_parameters()}

    PGD(eps=EPS, restarts=2).perturb(net, x, y, generator=seeded(0))

    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == flags
    assert net.conv1.weight.grad is existing_grad and torch.all(existing_grad == 0.5)
    assert all(p.grad is None for name, p in net.named_parameters() if name != "conv1.weight")
    for name, buffer in net.named_buffers():  # eval() during the attack: BatchNorm statistics untouched
        assert torch.equal(buffer, buffers[name]), name
    for name, param in net.named_parameters():
        assert torch.equal(param, weights[name]), name


def test_robust_accuracy_matches_torchattacks(model, data):
    _, test = data
    assert len(test) >= 1000
    theirs_correct = 0
    torch.manual_seed(0)  # torchattacks draws its random start from the global generator
    theirs = torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=10, random_start=True)
    ours = PGD(eps=EPS, step_size=2 / 255, steps=10, random_start=True)
    for x, y in iterate_batches(test, 250):
        theirs_correct += correct(model, theirs(x, y), y).sum().item()
    # Ours counts with early stopping (any fooled iterate breaks an example), theirs the last iterate: ours may be
    # a little lower, never much.
    ours_acc = robust_accuracy(model, test, ours, batch_size=250, seed=0)
    theirs_acc = 100 * theirs_correct / len(test)
    assert abs(ours_acc - theirs_acc) <= 1.0, f"ours {ours_acc:.1f}% vs torchattacks {theirs_acc:.1f}%"
    assert ours_acc < 100 * correct(model, test.x.float() / 255, test.y).float().mean() - 15


class Bump(nn.Module):
    """Class 1 wins only within 0.1 of the pixel value 0.5, so one signed-gradient step can jump into that window
    and the next out of it again: an example fooled midway but not at the last iterate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixel = x.flatten(1)[:, 0]
        return torch.stack([torch.zeros_like(pixel), 1 - 100 * (pixel - 0.5) ** 2], dim=1)


def test_an_example_fooled_only_midway_counts_as_broken():
    # From 0.3: one step of 0.25 lands on 0.55 (class 1 wins), the next goes back to 0.30 (class 0 again).
    # From 0.9 the steps go down to 0.65 and the box edge 0.62, outside the window: robust throughout.
    x, y = torch.tensor([0.3, 0.9]).reshape(2, 1, 1, 1), torch.tensor([0, 0])
    pgd = PGD(eps=0.28, step_size=0.25, steps=2, random_start=False)
    last = pgd.perturb(Bump(), x, y)
    assert torch.allclose(last.flatten(), torch.tensor([0.30, 0.62]))
    assert correct(Bump(), last, y).all()  # the last iterates are both classified right ...
    cost = AttackCost()
    assert pgd.robust_correct(Bump(), x, y, cost=cost).tolist() == [False, True]  # ... but 0.55 fooled the first
    # Clean check 2; step 1 at x0 for 2, step 2 at x1 for 2 (where the first is found fooled); final check 1.
    assert cost == AttackCost(gradient_evals=4, forward_evals=3)


def brute_force_correct(model: nn.Module, pgd: PGD, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    """Bool [steps + 2, N]: correct on the clean image, then at each iterate x_0 ... x_steps of a plain PGD loop
    over the whole batch (nothing dropped), with the random start drawn as PGD draws it."""
    noise = torch.rand(x.shape, generator=seeded(seed)) * (2 * pgd.eps) - pgd.eps
    lower, upper = (x - pgd.eps).clamp(min=0), (x + pgd.eps).clamp(max=1)
    adv, rows = (x + noise).clamp(lower, upper), [correct(model, x, y)]
    for _ in range(pgd.steps):
        rows.append(correct(model, adv, y))
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y, reduction="sum"), adv)
        adv = (adv.detach() + pgd.step_size * grad.sign()).clamp(lower, upper)
    rows.append(correct(model, adv, y))
    return torch.stack(rows)


def test_early_stop_matches_a_brute_force_per_step_loop_and_counts_its_passes(model, batch):
    x, y = batch
    pgd = PGD(eps=EPS, step_size=2 / 255, steps=10)
    every = brute_force_correct(model, pgd, x, y, seed=0)
    cost = AttackCost()
    robust = pgd.robust_correct(model, x, y, generator=seeded(0), cost=cost)
    assert torch.equal(robust, every.all(dim=0))
    # Step t runs on the examples right so far (clean and x_0 ... x_t-1): fewer and fewer as they break.
    standing = [int(every[: t + 1].all(dim=0).sum()) for t in range(pgd.steps)]
    assert standing[-1] < standing[0] <= len(x)
    assert cost.gradient_evals == sum(standing) < len(x) * pgd.steps
    assert cost.forward_evals == len(x) + int(every[:-1].all(dim=0).sum())


def test_early_stop_never_counts_more_than_the_last_iterate(model, data):
    _, test = data
    x, y = test.x[:500].float() / 255, test.y[:500]
    for restarts in (1, 2):
        pgd = PGD(eps=EPS, step_size=2 / 255, steps=10, restarts=restarts)
        last = correct(model, pgd.perturb(model, x, y, generator=seeded(0)), y)
        early = pgd.robust_correct(model, x, y, generator=seeded(0))
        assert not (early & ~last).any(), "an example survived early stopping but not its last iterate"
        assert early.sum() <= last.sum()
    one = PGD(eps=EPS, restarts=1).robust_correct(model, x, y, generator=seeded(0))
    assert not (early & ~one).any()  # restart 1 of 2 is the restarts=1 attack; the second can only break more


def test_early_stop_is_deterministic_whatever_is_skipped(model, batch):
    x, y = batch
    pgd = PGD(eps=EPS, restarts=2)
    first_generator, skipping_generator = seeded(5), seeded(5)
    full_cost, skipping_cost = AttackCost(), AttackCost()
    first = pgd.robust_correct(model, x, y, generator=first_generator, cost=full_cost)
    assert torch.equal(pgd.robust_correct(model, x, y, generator=seeded(5)), first)
    skip = torch.arange(len(y)) % 3 == 0
    skipped = pgd.robust_correct(model, x, y, generator=skipping_generator, skip=skip, cost=skipping_cost)
    # The others got the very starts they get without skipping, and the generator moved on by the same draws.
    assert torch.equal(skipped, first & ~skip)
    assert torch.equal(torch.rand(3, generator=first_generator), torch.rand(3, generator=skipping_generator))
    # Skipped rows cost nothing, not even the clean check.
    assert skipping_cost.gradient_evals < full_cost.gradient_evals
    assert skipping_cost.forward_evals <= full_cost.forward_evals - int(skip.sum())
    with pytest.raises(ValueError, match="skip must be a bool mask"):
        pgd.robust_correct(model, x, y, skip=skip[:-1])


def test_last_iterate_attack_costs_one_pass_per_example_and_step(model, batch):
    x, y = batch
    cost = AttackCost()
    PGD(eps=EPS, steps=4).perturb(model, x, y, generator=seeded(0), cost=cost)
    assert cost == AttackCost(gradient_evals=4 * len(x), forward_evals=0)
    PGD(eps=EPS, steps=4, restarts=2).perturb(model, x, y, generator=seeded(0), cost=cost)
    assert 8 * len(x) < cost.gradient_evals < 12 * len(x)  # the second restart only on the unbroken
    assert len(x) < cost.forward_evals < 2 * len(x)  # each restart's result is judged once


def test_attack_split_builds_a_float_adversarial_set(model, data):
    _, test = data
    subset = Split(test.x[:300], test.y[:300])
    adversarial = attack_split(PGD(eps=EPS), model, subset, batch_size=128, device="cpu", generator=seeded(0))
    assert isinstance(adversarial, AdversarialSet) and len(adversarial) == 300
    assert adversarial.x.dtype == torch.float32 and adversarial.x.device.type == "cpu"
    assert torch.equal(adversarial.y, subset.y)
    x = subset.x.float() / 255
    assert (adversarial.x - x).abs().max() <= EPS + 1e-6
    # Not quantised: the attack leaves pixel values between the uint8 levels.
    assert not torch.equal(adversarial.x, (adversarial.x * 255).round() / 255)
    # Batch by batch with one generator, exactly as perturb would do it by hand.
    generator = seeded(0)
    by_hand = [PGD(eps=EPS).perturb(model, xb, yb, generator=generator) for xb, yb in iterate_batches(subset, 128)]
    assert torch.equal(adversarial.x, torch.cat(by_hand))


def test_amp_is_ignored_on_cpu(model, batch):
    x, y = batch
    pgd = PGD(eps=EPS)
    with_amp = pgd.perturb(model, x, y, generator=seeded(1), amp=True)
    assert torch.equal(with_amp, pgd.perturb(model, x, y, generator=seeded(1)))


def test_perturb_works_inside_no_grad_and_inference_mode(model, batch):
    x, y = batch
    expected = PGD(eps=EPS).perturb(model, x, y, generator=seeded(2))
    with torch.no_grad():
        assert torch.equal(PGD(eps=EPS).perturb(model, x, y, generator=seeded(2)), expected)
    with torch.inference_mode():
        x_inference = x.clone()
        assert torch.equal(PGD(eps=EPS).perturb(model, x_inference, y, generator=seeded(2)), expected)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": -8 / 255}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"step_size": 0.0}, "step_size"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"restarts": 3, "random_start": False}, "random_start"),
    ],
)
def test_bad_settings_raise_naming_the_field(settings, field):
    with pytest.raises(ValueError, match=f"PGD.{field}"):
        PGD(**settings)


def test_bad_inputs_raise_before_attacking(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="float images"):
        PGD().perturb(model, (x * 255).to(torch.uint8), y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD().perturb(model, (x - 0.5) / 0.25, y)
    with pytest.raises(ValueError, match="int64 labels"):
        PGD().perturb(model, x, y[:-1])
    with pytest.raises(ValueError, match="model is on meta"):
        PGD().perturb(small_cnn().to("meta"), x, y)


def test_adversarial_set_checks_its_contents():
    with pytest.raises(ValueError, match="float32"):
        AdversarialSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="must match"):
        AdversarialSet(torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.int64))


@pytest.mark.gpu
@requires("cuda")
def test_cuda_matches_cpu_and_runs_with_amp(model, batch):
    x, y = batch
    gpu_model = small_cnn().cuda().eval()
    gpu_model.load_state_dict(model.state_dict())
    # One tiny step: what remains is the random start, drawn on the CPU generator, so equal on both devices.
    start_only = PGD(eps=EPS, step_size=1e-4, steps=1)
    on_cpu = start_only.perturb(model, x, y, generator=seeded(0))
    on_gpu = start_only.perturb(gpu_model, x.cuda(), y.cuda(), generator=seeded(0)).cpu()
    assert (on_gpu - on_cpu).abs().max() <= 2e-4 + 1e-6
    pgd = PGD(eps=EPS)
    with_amp = pgd.perturb(gpu_model, x.cuda(), y.cuda(), generator=seeded(0), amp=True)
    assert with_amp.dtype == torch.float32 and (with_amp.cpu() - x).abs().max() <= EPS + 1e-6
    assert correct(gpu_model, with_amp, y.cuda()).float().mean() < correct(gpu_model, x.cuda(), y.cuda()).float().mean()
    robust = pgd.robust_correct(gpu_model, x.cuda(), y.cuda(), generator=seeded(0), amp=True)
    assert robust.device.type == "cuda" and robust.dtype == torch.bool
    assert robust.sum() < correct(gpu_model, x.cuda(), y.cuda()).sum()


def test_fp16_attack_gradients_are_loss_scaled_so_small_gradients_keep_their_sign():
    """Robust models have small input gradients; in fp16 they underflow to 0 (sign 0: the attack stalls) unless the
    loss is scaled. CPU autocast runs the same fp16 arithmetic as CUDA's here."""
    from rift_sweep.core.robustness import attacks

    torch.manual_seed(0)
    model = small_cnn().eval()
    with torch.no_grad():
        model.fc1.weight.mul_(1e-4)  # input gradients ~1e-8: below fp16's smallest subnormal (6e-8)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    _, exact = attacks._logits_and_gradient(model, x, y, None, AttackCost())
    _, scaled = attacks._logits_and_gradient(model, x, y, torch.float16, AttackCost())
    assert (exact != 0).all()
    assert (scaled.sign() == exact.sign()).float().mean() > 0.95
    assert scaled.norm() / exact.norm() == pytest.approx(1, rel=0.05)  # unscaled again: the gradient's own size


def test_amp_is_bf16_only_where_native_and_never_off_cuda():
    from rift_sweep.core.robustness.attacks import amp_dtype_for

    assert amp_dtype_for(torch.device("cpu")) is None
    if torch.cuda.is_available():
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        assert amp_dtype_for(torch.device("cuda")) == (torch.bfloat16 if native else torch.float16)
