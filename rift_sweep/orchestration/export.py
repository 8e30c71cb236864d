"""`rift-sweep export`: any model of a sweep (the recommended one, or a trial's at any α of its path) for the user's
own code, in two forms and a sidecar:

- OUT (a state dict): exactly the keys of the input checkpoint (wrappers and `module.` prefixes removed), so it
  loads strictly into the class that wrote that checkpoint; keys our architecture ignores (TRADES' unused
  `sub_block1`) are carried over unchanged. It holds weights only: a model trained on normalised input needs the
  sidecar's mean/std in front of it (built-in architectures take them as arguments).
- OUT with the suffix .pt2 (torch.export): the whole network, normalisation included, for images in [0, 1]; it
  loads with `torch.export.load(path).module()` and needs no class at all.
- OUT.json: where it came from (sweep, trial, fine-tune, α, the input checkpoint's sha256), the normalisation, how
  to load each form, and its validation and test accuracies.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import torch

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.core.data.datasets import dataset_info
from rift_sweep.core.errors import InputError
from rift_sweep.core.files import atomic_write, check_writable, file_sha256
from rift_sweep.core.models.checkpoints import load_state_dict_file
from rift_sweep.orchestration.front import model_of
from rift_sweep.orchestration.tracking import SweepTracker
from rift_sweep.presentation.tables import describe_model
from rift_sweep.procedure.experiment import model_normalization, probe_input
from rift_sweep.procedure.published import read_published
from rift_sweep.procedure.records import NO_FINETUNE, Model


@dataclasses.dataclass(frozen=True)
class Exported:
    path: Path
    program: Path
    sidecar: Path
    model: Model
    registered: str | None


def export_model(
    config: SweepConfig,
    *,
    out: Path,
    trial_id: str | None = None,
    alpha: float | None = None,
    register: str | None = None,
) -> Exported:
    """Write the model of trial `trial_id` at `alpha` (default: the trial's own α), or the recommended model (trial
    None), to `out` and beside it; optionally register its MLflow model under `register`."""
    program = out.with_suffix(".pt2")
    for path in (out, program):
        check_writable(path)
    tracker = SweepTracker(config, create=False)
    if tracker.parent_run_id is None:
        raise InputError(f"no sweep {config.name!r} in {tracker.uri}; run `rift-sweep sweep` first")
    model = _chosen(tracker, trial_id, alpha)
    network = model_of(config, model)
    write_export(config, network, out)
    sidecar = out.with_name(out.name + ".json")
    with atomic_write(sidecar) as tmp:
        tmp.write_text(
            json.dumps(_provenance(config, tracker, model=model, out=out, program=program), indent=2, default=str)
        )
    registered = tracker.register_model(model.run_id, register, network) if register else None
    return Exported(path=out, program=program, sidecar=sidecar, model=model, registered=registered)


def _chosen(tracker: SweepTracker, trial_id: str | None, alpha: float | None) -> Model:
    published = read_published(tracker.config.output_path)
    if published is None:
        raise InputError(f"sweep {tracker.config.name!r} has not published its front yet; finish it first (--resume)")
    front = published.front
    if trial_id is None:
        if front.recommended is None:
            raise InputError(
                f"sweep {tracker.config.name!r} has no recommended model (no fine-tuned model kept validation "
                f"robustness within alpha.tolerance): export a --trial ID [--alpha A] instead"
            )
        return front.recommended
    trials = {t.trial_id: t for t in tracker.trials()}
    if trial_id not in trials:
        raise InputError(
            f"no finished trial {trial_id!r} in sweep {tracker.config.name!r}; trials: {', '.join(trials)}"
        )
    trial = trials[trial_id]
    alpha = trial.alpha if alpha is None else float(alpha)
    found = next(
        (m for m in front.models if m.alpha == alpha and (m.is_at or m.finetune.key == trial.finetune.key)), None
    )
    if found is None:
        grid = sorted(m.alpha for m in front.models if m.finetune and m.finetune.key == trial.finetune.key)
        raise InputError(
            f"trial {trial_id} has no model at α {alpha}; its fine-tune was evaluated at α in {grid} (α 0 is the AT "
            f"model): pass one of those with --alpha"
        )
    return found


def write_export(config: SweepConfig, network: torch.nn.Module, out: Path) -> tuple[Path, Path]:
    """The two forms of `network` (a model of the sweep's architecture): OUT, its weights under the input checkpoint's
    keys, and OUT.pt2, the torch.export program of its forward for [0, 1] images of any batch size."""
    network = network.cpu().eval().to(memory_format=torch.contiguous_format)
    ours = network.state_dict()
    original = load_state_dict_file(config.model.checkpoint)
    with atomic_write(out) as tmp:
        torch.save({key: ours[key].detach() if key in ours else value for key, value in original.items()}, tmp)
    example = probe_input(dataset_info(config.data.dataset)).repeat(2, 1, 1, 1)
    program = torch.export.export(network, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name; the atomic write's temporary file has another
    torch.export.save(program, buffer)
    with atomic_write(out.with_suffix(".pt2")) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return out, out.with_suffix(".pt2")


def _provenance(config: SweepConfig, tracker: SweepTracker, model: Model, out: Path, program: Path) -> dict:
    """Where the exported weights come from, how to load them, and how they scored."""
    mean, std = model_normalization(config, dataset_info(config.data.dataset))
    normalised = any(m != 0 for m in mean) or any(s != 1 for s in std)
    ft = model.finetune
    return {
        "sweep": config.name,
        "model": describe_model(model),
        "mlflow_run_id": model.run_id,
        "trial_id": ft.trial_id if ft else None,
        **(ft.params() if ft else NO_FINETUNE),
        names.ALPHA: model.alpha,
        "input_checkpoint": config.model.checkpoint,
        "input_checkpoint_sha256": file_sha256(config.model.checkpoint),
        "architecture": dataclasses.asdict(config.model),
        "normalization": {"mean": list(mean), "std": list(std)} if normalised else None,
        "load": {
            "program": f"torch.export.load({str(program)!r}).module()  # images in [0, 1]; normalisation included",
            "state_dict": f"net.load_state_dict(torch.load({str(out)!r}, weights_only=True))"
            + ("  # then feed it (x - mean) / std" if normalised else "  # images in [0, 1]"),
        },
        "val": model.val.metrics(),
        "val_versus_at": model.val_versus_at.metrics() if model.val_versus_at else None,
        "test": model.test.metrics() if model.test else None,
        "test_versus_at": model.test_versus_at.metrics() if model.test_versus_at else None,
        "config": dataclasses.asdict(config),
    }
