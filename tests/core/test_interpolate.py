import pytest
import torch

from rift_sweep.core.interpolate import interpolate_state
from rift_sweep.core.models.architectures import build_model


def two_states():
    torch.manual_seed(0)
    a = build_model("small_cnn", num_classes=10, in_channels=1).state_dict()
    torch.manual_seed(1)
    b = build_model("small_cnn", num_classes=10, in_channels=1).state_dict()
    for k in b:
        if not b[k].is_floating_point():
            b[k] = b[k] + 7
        else:
            b[k] = b[k] + torch.randn_like(b[k]) * 0.3
    return a, b


def test_endpoints_reproduce_both_state_dicts_exactly():
    a, b = two_states()
    at0, at1 = interpolate_state(a, b, 0.0), interpolate_state(a, b, 1.0)
    for k in a:
        assert torch.equal(at0[k], a[k]), k
        assert torch.equal(at1[k], b[k]), k


def test_midpoint_is_the_average():
    a, b = two_states()
    mid = interpolate_state(a, b, 0.5)
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(mid[k], (a[k] + b[k]) / 2)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_is_refused(alpha):
    a, b = two_states()
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        interpolate_state(a, b, alpha)


def test_a_partial_fine_tuned_state_moves_only_its_entries():
    a, b = two_states()
    key = "conv2.weight"
    mixed = interpolate_state(a, {key: b[key]}, 0.5)
    assert mixed.keys() == a.keys()
    torch.testing.assert_close(mixed[key], (a[key] + b[key]) / 2)
    assert all(torch.equal(mixed[k], a[k]) for k in a if k != key)


def test_entries_the_at_model_lacks_are_refused():
    a, b = two_states()
    a.pop("conv2.weight")
    with pytest.raises(ValueError, match="lacks.*conv2.weight"):
        interpolate_state(a, b, 0.5)
