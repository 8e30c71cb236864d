"""Checks made before a sweep spends compute or writes a byte: each failure is one InputError line.

Order: the output folder, the tracking store, the Ray address, then the expensive ones (the checkpoint loads and
fits, the data reads, the split matches) through the procedure's own loader; once Ray is joined (and any --gpus
have come up), the devices: what the cluster has, and a probe of every GPU node.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import ray

from rift_sweep import names
from rift_sweep.config import SweepConfig, load_config
from rift_sweep.core.errors import InputError
from rift_sweep.orchestration.devices import check_gpu_nodes
from rift_sweep.orchestration.resources import ray_address
from rift_sweep.orchestration.tracking import tracking_uri
from rift_sweep.procedure.experiment import Experiment, check_module_choice, load_experiment

TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
CONNECT_TIMEOUT_S = 3.0
SERVER_WAIT_S = 10.0  # a server just started (ray up, then ray submit) answers within this


@dataclass(frozen=True)
class FolderState:
    exists: bool  # the folder holds a sweep (its resolved config)
    config: SweepConfig | None  # that sweep's config, when it exists


def check_output_folder(config: SweepConfig, *, resume: bool) -> FolderState:
    """A new or empty folder for a new sweep; the same sweep's folder for --resume, or without it when only stage 1
    ran there (`rift-sweep mrc`: the sweep carries on from its MRC cache); nothing else."""
    folder = config.output_path
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output folder {folder} is a file; give --output a folder (new or holding this sweep)")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
        raise InputError(
            f"output folder {folder} cannot be created or written ({existing} is not a writable folder); "
            f"choose another --output"
        )
    resolved = folder / names.RESOLVED_CONFIG
    if resolved.is_file():
        previous = load_config(resolved)
        if previous.name != config.name:
            raise InputError(
                f"{folder} holds the sweep {previous.name!r}, not {config.name!r}; resume it with its own "
                f"config or give another --output"
            )
        if not resume and (folder / names.TUNE_DIR).exists():
            raise InputError(
                f"a sweep already exists at {folder}: carry it on with --resume, or give another "
                f"`name`/--output to start a new one"
            )
        return FolderState(True, previous)
    if folder.is_dir() and any(folder.iterdir()):
        raise InputError(f"output folder {folder} is not empty and holds no sweep; give an empty or new --output")
    if resume:
        raise InputError(f"--resume: no sweep to resume at {folder}; start it without --resume")
    return FolderState(False, None)


def check_tracking(config: SweepConfig) -> None:
    """The scheme is one MLflow knows, and a server answers within a few seconds (polled: right after `ray up`
    the head's server may still be starting)."""
    uri = tracking_uri(config)
    scheme = urllib.parse.urlparse(uri).scheme.split("+")[0]
    if scheme not in TRACKING_SCHEMES:
        raise InputError(
            f"tracking.uri {uri!r} has an unknown scheme {scheme!r}; use sqlite:///ABS/PATH.db or "
            f"http://HOST:PORT of an `mlflow server`"
        )
    if scheme not in ("http", "https"):
        return
    deadline = time.monotonic() + SERVER_WAIT_S
    while True:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=CONNECT_TIMEOUT_S):
                return
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise InputError(
                    f"no MLflow server answers at {uri} within {SERVER_WAIT_S:.0f} s "
                    f"({getattr(exc, 'reason', exc)}); start it (`mlflow server ...`) or fix tracking.uri"
                ) from exc
            time.sleep(0.5)


def check_ray_address(address: str | None) -> None:
    """The cluster this process will join (--address, RAY_ADDRESS, or the one `ray start` left on this node)
    accepts a connection within a few seconds."""
    found = ray_address(address)
    if found is None or found.startswith("ray://"):
        return
    host, _, port = found.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        named = address or os.environ.get("RAY_ADDRESS")
        fix = (
            "start it (`ray start --head`) or fix --address / RAY_ADDRESS"
            if named
            else "it was left by a `ray start` on this node: start it again, or `ray stop` to forget it"
        )
        raise InputError(f"no Ray cluster answers at {found} within {CONNECT_TIMEOUT_S:.0f} s ({exc}); {fix}") from exc


def check_devices(config: SweepConfig) -> list[str]:
    """On the Ray cluster joined (after any --gpus wait): `device: cuda` has GPUs to use, and torch can use every
    GPU node's GPUs (devices.check_gpu_nodes). Returns a line per GPU node used. The driver never touches CUDA."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if config.device == "cuda" and gpus == 0:
        raise InputError(
            "device: cuda, but this Ray cluster has no GPU; join a GPU cluster (--address), ask its autoscaler "
            "with --gpus N, or set device: auto (GPUs when the cluster has them) or cpu"
        )
    return check_gpu_nodes() if gpus and config.device != "cpu" else []


def check_sweep(config: SweepConfig, *, resume: bool, address: str | None) -> tuple[FolderState, Experiment]:
    """Everything a sweep needs that can be checked before joining Ray, in order of cost; returns the folder's state
    and the loaded experiment. What the cluster has is checked once joined (check_devices)."""
    folder = check_output_folder(config, resume=resume)
    check_tracking(config)
    check_ray_address(address)
    check_module_choice(config)
    return folder, load_experiment(config, device="cpu", check=True)  # loads, fits, reads, and looks sane
