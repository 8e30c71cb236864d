"""`rift-sweep export`: a trial's model (or the recommended one) as a plain state dict for the user's own code.

The file holds exactly the keys of the input checkpoint (wrappers and `module.` prefixes removed), so it loads
strictly into the class that wrote that checkpoint; keys our architecture ignores (TRADES' unused `sub_block1`)
are carried over unchanged. A JSON sidecar records where it came from.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.core.errors import InputError
from rift_sweep.core.files import atomic_write, check_writable, file_sha256
from rift_sweep.core.models import load_state_dict_file
from rift_sweep.orchestration.front import trial_model
from rift_sweep.orchestration.tracking import SweepTracker, child_runs, tag_filter


@dataclasses.dataclass
class Exported:
    path: Path
    sidecar: Path
    trial: dict
    registered: str | None


def export_model(
    config: SweepConfig, *, out: Path, trial_id: str | None = None, register: str | None = None
) -> Exported:
    """Write the model of trial `trial_id` (None: the recommended one) to `out`, and optionally register the
    MLflow model of that run under `register`."""
    check_writable(out)
    tracker = SweepTracker(config, create=False)
    if tracker.parent_run_id is None:
        raise InputError(f"no sweep {config.name!r} in {tracker.uri}; run `rift-sweep sweep` first")
    run = _find_run(tracker, trial_id)
    alpha = run.data.tags.get(names.RECOMMENDED_ALPHA_TAG) if trial_id is None else None
    trial = {
        "run_id": run.info.run_id,
        "trial_id": run.data.tags[names.TRIAL_TAG],
        "finetune_key": run.data.tags[names.FINETUNE_KEY_TAG],
        "alpha": float(alpha if alpha is not None else run.data.params["alpha"]),
    }
    model = trial_model(config, trial)
    ours = model.state_dict()
    original = load_state_dict_file(config.model.checkpoint)
    state = {key: ours[key].detach().cpu() if key in ours else value for key, value in original.items()}
    with atomic_write(out) as tmp:
        torch.save(state, tmp)
    sidecar = out.with_name(out.name + ".json")
    with atomic_write(sidecar) as tmp:
        tmp.write_text(json.dumps(_provenance(config, run, trial["alpha"], tracker), indent=2, default=str))
    registered = None
    if register:
        registered = tracker.register_model(trial["run_id"], register, model)
    return Exported(out, sidecar, trial, registered)


def _find_run(tracker: SweepTracker, trial_id: str | None):
    tags = {names.PARENT_TAG: tracker.parent_run_id}
    tags.update({names.TRIAL_TAG: trial_id} if trial_id else {names.RECOMMENDED_TAG: "true"})
    runs = [
        r
        for r in tracker.client.search_runs([tracker.experiment_id], tag_filter(**tags), max_results=2)
        if r.info.status == "FINISHED"
    ]
    if runs:
        return runs[0]
    if trial_id:
        known = sorted(
            r.data.tags.get(names.TRIAL_TAG, "?")
            for r in child_runs(tracker.client, tracker.experiment_id, tracker.parent_run_id, "FINISHED")
        )
        raise InputError(f"no finished trial {trial_id!r} in sweep {tracker.config.name!r}; trials: {', '.join(known)}")
    raise InputError(
        f"sweep {tracker.config.name!r} has no recommended trial (no trial kept validation robustness "
        f"within alpha.tolerance, or the sweep has not finished): export a --trial ID instead"
    )


def _provenance(config: SweepConfig, run, alpha: float, tracker: SweepTracker) -> dict:
    """Where the exported weights come from, and how they scored. The recommended model is an α of its trial's
    path (maybe not the trial's own α): its metrics are the ones kept on the parent run."""
    metrics = run.data.metrics
    if run.data.tags.get(names.RECOMMENDED_ALPHA_TAG) == str(alpha):
        parent = tracker.client.get_run(tracker.parent_run_id).data.metrics
        metrics = {
            k.removeprefix(names.RECOMMENDED_PREFIX): v
            for k, v in parent.items()
            if k.startswith(names.RECOMMENDED_PREFIX)
        }
        val = {k.removeprefix("val_"): v for k, v in metrics.items() if k.startswith("val_")}
    else:
        val = {k: v for k, v in metrics.items() if k.removesuffix("_low").removesuffix("_high") in names.OBJECTIVES}
    return {
        "sweep": config.name,
        "trial_id": run.data.tags.get(names.TRIAL_TAG),
        "mlflow_run_id": run.info.run_id,
        "recommended": run.data.tags.get(names.RECOMMENDED_ALPHA_TAG) == str(alpha),
        "input_checkpoint": config.model.checkpoint,
        "input_checkpoint_sha256": file_sha256(config.model.checkpoint),
        "model": dataclasses.asdict(config.model),
        "module": run.data.params.get("module"),
        "lr": float(run.data.params["lr"]),
        "epochs": int(run.data.params["epochs"]),
        "alpha": alpha,
        "val": val,
        "test": {k.removeprefix(names.TEST_PREFIX): v for k, v in metrics.items() if k.startswith(names.TEST_PREFIX)},
        "config": dataclasses.asdict(config),
    }
