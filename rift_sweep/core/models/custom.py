"""The user's own model: a class or factory named by `target`, its input normalisation, and checks on what it
returns. Code named by the user is the user's own code; a checkpoint never chooses code (weights_only loading).

target: "path/to/file.py:Name" (a file) or "package.module:Name" (importable). On a Ray worker that lacks the
file, the module is imported by the file's stem, which the orchestration layer ships in Ray's runtime_env.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from rift_sweep.core.errors import InputError
from rift_sweep.core.models.architectures import Normalize

NORMALIZE_ATTRIBUTE = "rift_sweep_normalize"  # a submodule with non-persistent buffers: no state-dict key


def split_target(target: str) -> tuple[str, str]:
    """("path/file.py" or "pkg.module", "Name")."""
    module, sep, name = target.rpartition(":")
    if not sep or not module or not name.isidentifier():
        raise InputError(
            f"model.target {target!r} must be FILE.py:Name or package.module:Name, e.g. ./nets.py:WideResNet"
        )
    return module, name


def import_target(target: str) -> Callable[..., nn.Module]:
    """The class or factory `target` names."""
    module_name, name = split_target(target)
    try:
        if module_name.endswith(".py"):
            module = _import_file(Path(module_name))
        else:
            module = importlib.import_module(module_name)
    except InputError:
        raise
    except Exception as exc:  # the user's module failed to import: say which and why, in one line
        raise InputError(f"model.target {target!r} does not import ({type(exc).__name__}: {exc})") from exc
    found = getattr(module, name, None)
    if not callable(found):
        raise InputError(f"model.target {target!r}: {module.__name__} has no class or function {name!r}")
    return found


def _import_file(path: Path):
    stem = path.stem
    if not path.is_file():
        if stem in sys.modules or importlib.util.find_spec(stem) is not None:  # shipped to this Ray worker
            return importlib.import_module(stem)
        raise InputError(f"model.target file {path} does not exist; give FILE.py:Name relative to the config")
    spec = importlib.util.spec_from_file_location(stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[stem] = module  # pickling (Ray, MLflow) finds classes by module name
    spec.loader.exec_module(module)
    return module


def build_custom(target: str, kwargs: dict, mean: Sequence[float], std: Sequence[float], channels: int) -> nn.Module:
    """The user's model, called with `kwargs`, normalising its [0, 1] input with mean/std first."""
    factory = import_target(target)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise InputError(
            f"model.kwargs do not fit {target} ({exc}); its parameters: {list(inspect.signature(factory).parameters)}"
        ) from exc
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise InputError(f"model.target {target} returned a {type(model).__name__}, not a torch.nn.Module")
    attach_normalization(model, mean, std, channels)
    return model


def attach_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    """Normalise the input before the model's own forward, leaving its state-dict keys exactly as they are."""
    normalize = Normalize(mean, std, channels)
    model.add_module(NORMALIZE_ATTRIBUTE, normalize)
    model.register_forward_pre_hook(normalize.pre_hook)


def normalization_of(model: nn.Module) -> Normalize:
    """The Normalize layer of a built-in or custom model."""
    found = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no Normalize layer; build it with build_model or build_custom")
    return found


def check_logits(output: object, batch: int, num_classes: int, what: str) -> Tensor:
    """The model must return one logits tensor [batch, num_classes]; probabilities or tuples are refused."""
    if not isinstance(output, Tensor):
        raise InputError(
            f"{what} returned a {type(output).__name__}, not one logits tensor; make forward() return "
            f"the logits only (e.g. the first item of the tuple)"
        )
    if tuple(output.shape) != (batch, num_classes):
        raise InputError(
            f"{what} returned shape {tuple(output.shape)}; expected logits [{batch}, {num_classes}] "
            f"(num_classes of the dataset)"
        )
    rows = output.detach().float()
    if batch > 1 and (rows >= 0).all() and torch.allclose(rows.sum(1), torch.ones(batch), atol=1e-3):
        raise InputError(
            f"{what} returns probabilities (rows sum to 1); return logits instead: attacks and the "
            f"cross-entropy need them"
        )
    return output
