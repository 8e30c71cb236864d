"""Step 3 of RiFT: weight-space interpolation θ_α = (1 − α)·θ_AT + α·θ_FT over every state entry."""

from __future__ import annotations

import torch

from rift_sweep.core.models.checkpoints import StateDict


def check_alpha(alpha: float) -> float:
    """Return alpha as a float, or raise if it lies outside [0, 1]."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (0 = the AT model, 1 = the fine-tuned one); got {alpha}")
    return alpha


def interpolate_state(at_state: StateDict, ft_state: StateDict, alpha: float) -> StateDict:
    """Interpolate two state dicts of the same architecture; `ft_state` may hold only the entries fine-tuning
    changed (finetune.tuned_keys): every other entry is θ_AT's at any α.

    torch.lerp is exact at both ends (α = 0 returns θ_AT bit for bit, α = 1 returns θ_FT), so the α path's
    endpoints are the two models themselves. Integer entries (BatchNorm's num_batches_tracked) are counters,
    not weights: they are rounded from the same interpolation.
    """
    alpha = check_alpha(alpha)
    unknown = sorted(ft_state.keys() - at_state.keys())
    if unknown:
        raise ValueError(f"the fine-tuned state has entries the AT model lacks: {unknown}")
    mixed = dict(at_state)
    for key, b in ft_state.items():
        a = at_state[key]
        if a.shape != b.shape:
            raise ValueError(f"state entry {key!r} has shape {tuple(a.shape)} in AT but {tuple(b.shape)} in fine-tuned")
        if a.is_floating_point():
            mixed[key] = torch.lerp(a, b.to(a.dtype), alpha)
        else:
            mixed[key] = torch.lerp(a.double(), b.double(), alpha).round().to(a.dtype)
    return mixed
