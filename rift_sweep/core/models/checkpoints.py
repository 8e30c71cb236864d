"""Checkpoint I/O: weights-only loading of published layouts, strict fitting, atomic saving.

Checkpoint layouts accepted by :func:`load_state_dict_file` / :func:`load_weights`:

- a plain state dict (``torch.save(model.state_dict(), path)``);
- a dict wrapping it under ``state_dict``, ``model_state_dict``, ``model`` or ``net`` (kuangliu saves
  ``{"net": ..., "acc": ..., "epoch": ...}``), nested at most twice;
- keys prefixed by ``module.`` (DataParallel / DistributedDataParallel) and/or ``_orig_mod.`` (torch.compile).
- TRADES-style WideResNet checkpoints also carry ``sub_block1.*`` weights that the forward pass never
  uses; :class:`WideResNet` declares them ignorable rather than growing modules MRC would then score.

Not accepted: whole pickled ``nn.Module`` objects (weights_only loading refuses arbitrary classes by
design) and models wrapped as ``Sequential(normalize, model)`` (``1.``-prefixed keys). Known layout gaps,
reported key by key by :func:`load_weights`: the RiFT reference code pools 64x64 inputs to 2x2, so its
Tiny-ImageNet classifiers take 2048 features (ours pool to 1x1: 512).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rift_sweep.core.errors import InputError
from rift_sweep.core.files import atomic_write

logger = logging.getLogger(__name__)

StateDict = dict[str, Tensor]
PathLike = str | os.PathLike


class CheckpointError(InputError):
    """A checkpoint file is missing, unreadable, unsafe, or does not fit the model."""


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_KEY_PREFIXES = ("module.", "_orig_mod.")
_MAX_WRAPPER_DEPTH = 2
_META_SCALARS = (str, int, float, bool, type(None))


def _torch_load(path: PathLike) -> Any:
    """torch.load with weights_only=True, turning every failure into a CheckpointError that says why."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file: give the path of a torch.save file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on bad input (RuntimeError, EOFError, UnpicklingError, ...)
        refused = re.search(r"unsupported global:? (?:GLOBAL )?(\S+)", str(err), flags=re.IGNORECASE)
        if refused:
            raise CheckpointError(
                f"checkpoint {path} holds a pickled Python object ({refused.group(1)}), which weights_only loading "
                f"refuses because unpickling it could run arbitrary code; if you trust the file, load it in a "
                f"separate trusted session and re-save only the state dict: torch.save(model.state_dict(), path)"
            ) from err
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(err).__name__}: {_short_reason(err)}): the file is truncated, "
            f"corrupt or not written by torch.save; re-download or re-save it"
        ) from err


def _short_reason(err: Exception) -> str:
    """The informative line of a torch.load error (its first lines are generic weights_only advice)."""
    text = str(err)
    detail = re.search(r"Unsupported operand \d+|WeightsUnpickler error: .+", text)
    if detail:
        return detail.group(0)
    lines = text.strip().splitlines()
    return lines[0] if lines else "no further detail"


def _is_state_dict(obj: Any) -> bool:
    if not isinstance(obj, dict) or not obj:
        return False
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _describe(obj: Any) -> str:
    """A short account of what a loaded object is, for error messages."""
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}"
    if not obj:
        return "an empty dict"
    entries = [f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:12]]
    more = f", ... ({len(obj)} entries)" if len(obj) > 12 else ""
    return "a dict {" + ", ".join(entries) + more + "}"


def _unwrap_state_dict(obj: Any, path: PathLike) -> StateDict:
    """Descend through up to two wrapper dicts ("state_dict", "model", ...) to the tensor dict."""
    current = obj
    for _ in range(_MAX_WRAPPER_DEPTH + 1):
        if _is_state_dict(current):
            return current
        if not isinstance(current, dict):
            break
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(current.get(k), dict)), None)
        if wrapper is None:
            break
        current = current[wrapper]
    raise CheckpointError(
        f"checkpoint {path} holds {_describe(current)}; expected a state dict (parameter name -> tensor), "
        f"plain or wrapped under one of {', '.join(repr(k) for k in _WRAPPER_KEYS)}"
    )


def _strip_prefixes(key: str) -> str:
    """Remove any run of 'module.' / '_orig_mod.' wrappers (DataParallel, torch.compile, or both)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def load_state_dict_file(path: PathLike) -> StateDict:
    """Load a checkpoint's state dict on CPU (weights_only), unwrapped and with wrapper prefixes removed."""
    raw = _unwrap_state_dict(_torch_load(path), path)
    state: StateDict = {}
    for key, tensor in raw.items():
        name = _strip_prefixes(key)
        if name in state:
            raise CheckpointError(
                f"checkpoint {path} has key {key!r} that collides with another key once 'module.'/'_orig_mod.' "
                f"prefixes are removed ({name!r}); it mixes two models — re-save one model's state dict"
            )
        state[name] = tensor
    return state


def _drop_ignored_keys(model: nn.Module, state: StateDict) -> StateDict:
    prefixes = getattr(model, "checkpoint_ignored_prefixes", ())
    kept = {k: v for k, v in state.items() if not k.startswith(prefixes)} if prefixes else state
    if len(kept) != len(state):
        dropped = len(state) - len(kept)
        logger.info("ignoring %d checkpoint entries under %s (unused by %s)", dropped, prefixes, type(model).__name__)
    return kept


def _mismatch_report(model: nn.Module, state: StateDict) -> list[str]:
    """Lines naming every missing, unexpected and mis-shaped key; empty when the state fits."""
    expected = model.state_dict()
    # BatchNorm fills in a missing counter itself (pre-0.4.1 checkpoints lack it), so it is no mismatch.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: model expects {tuple(expected[k].shape)}, checkpoint has {tuple(state[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    lines = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  {item}" for item in items)
    return lines


def load_weights(model: nn.Module, path: PathLike) -> None:
    """Load a checkpoint into `model` strictly; on any mismatch raise a CheckpointError that summarises it in
    one line and lists every key in its `details`."""
    state = _drop_ignored_keys(model, load_state_dict_file(path))
    report = _mismatch_report(model, state)
    if report:
        counts = ", ".join(line.rstrip(":") for line in report if not line.startswith("  "))
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(model).__name__} ({counts}): the architecture, num_classes or "
            f"in_channels is probably wrong; build the model that wrote this checkpoint (--verbose lists the keys)",
            details="\n".join(report),
        )
    model.load_state_dict(state, strict=True)


def _check_meta(value: Any, where: str) -> None:
    """Refuse values that weights_only loading could not read back (exact types: np.float64 is not a float)."""
    if type(value) in _META_SCALARS:
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_meta(item, f"{where}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"checkpoint meta {where} has a non-string key {key!r}; use string keys")
            _check_meta(item, f"{where}[{key!r}]")
        return
    raise ValueError(
        f"checkpoint meta {where} is a {type(value).__module__}.{type(value).__name__}; only str, int, float, bool, "
        f"None and lists/dicts of them load with weights_only=True: convert it (float(x), int(x), str(x), x.tolist())"
    )


def save_checkpoint(path: PathLike, model: nn.Module, /, **meta: Any) -> None:
    """Write {"state_dict": CPU tensors, "meta": meta} atomically.

    `path` and `model` are positional-only so that meta may itself hold keys named "model" or "path".
    """
    for key, value in meta.items():
        _check_meta(value, repr(key))
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta}
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint_meta(path: PathLike) -> dict:
    """The "meta" dict that save_checkpoint stored, or {} for checkpoints without one."""
    raw = _torch_load(path)
    meta = raw.get("meta") if isinstance(raw, dict) else None
    return meta if isinstance(meta, dict) else {}


def cpu_copy(state: StateDict) -> StateDict:
    """A detached copy of a state dict on the CPU: a snapshot that later training cannot change."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
