import pytest
import torch

from rift_sweep.core.mrc import MRCSettings, candidate_modules, module_robust_criticality
from rift_sweep.core.robustness.attacks import attack_split

from conftest import DIGITS_PGD


@pytest.fixture(scope="module")
def adversarial(digits, digits_model):
    return attack_split(
        DIGITS_PGD, digits_model, digits.val, batch_size=256, device="cpu", generator=torch.Generator().manual_seed(0)
    )


def weight_of(model, name):
    return dict(model.named_modules())[name].weight


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_mrc_respects_the_norm_ball_and_is_nonnegative(fresh_digits_model, adversarial, variant):
    settings = MRCSettings(epsilon=0.1, epochs=4, step_size=1.0, batch_size=128, variant=variant)
    results = [
        module_robust_criticality(fresh_digits_model, name, adversarial, settings)
        for name in candidate_modules(fresh_digits_model)
    ]
    for r in results:
        assert r.mrc >= 0, r
        assert r.relative_norm <= 0.1 + 1e-5, r
        assert r.loss_after == pytest.approx(r.loss_before + r.mrc)
    assert max(r.mrc for r in results) > 0  # ascent does raise the robust loss somewhere


def test_mrc_leaves_the_model_as_found(fresh_digits_model, adversarial):
    model = fresh_digits_model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    next(model.parameters()).requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    module_robust_criticality(model, candidate_modules(model)[1], adversarial, MRCSettings(epochs=2))
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_small_steps_stay_inside_the_ball(fresh_digits_model, adversarial):
    name = candidate_modules(fresh_digits_model)[-1]
    r = module_robust_criticality(fresh_digits_model, name, adversarial, MRCSettings(epochs=1, step_size=1e-6))
    assert r.relative_norm < 0.1
    assert r.epochs_run == 1


def test_reference_variant_is_at_least_the_paper_value_when_both_run_all_epochs(fresh_digits_model, adversarial):
    name = candidate_modules(fresh_digits_model)[0]
    tiny = dict(epochs=3, step_size=1e-4)  # never reaches the sphere: both run every epoch
    paper = module_robust_criticality(fresh_digits_model, name, adversarial, MRCSettings(variant="paper", **tiny))
    ref = module_robust_criticality(fresh_digits_model, name, adversarial, MRCSettings(variant="reference", **tiny))
    assert ref.mrc >= paper.mrc - 1e-6  # the max over epochs includes the last epoch


def test_candidate_modules_patterns(digits_model):
    names = candidate_modules(digits_model)
    assert all(isinstance(dict(digits_model.named_modules())[n], (torch.nn.Conv2d, torch.nn.Linear)) for n in names)
    convs = candidate_modules(digits_model, include=["conv*"])
    assert convs and all(n.startswith("conv") for n in convs)
    assert set(candidate_modules(digits_model, exclude=["conv*"])) == set(names) - set(convs)
    with pytest.raises(ValueError, match="no candidate module"):
        candidate_modules(digits_model, include=["nothing*"])


def test_unknown_module_is_refused_with_the_candidates(digits_model, adversarial):
    with pytest.raises(ValueError, match="unknown module 'layer9'.*candidate modules are"):
        module_robust_criticality(digits_model, "layer9", adversarial)


@pytest.mark.parametrize(
    "field,value", [("epsilon", 0.0), ("epsilon", -1.0), ("epochs", 0), ("step_size", 0.0), ("variant", "other")]
)
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        MRCSettings(**{field: value})
