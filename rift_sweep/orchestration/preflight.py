"""Checks made before a sweep spends compute or writes a byte: each failure is one InputError line.

Order: the output folder, the tracking store, the Ray address, the device and GPU request, then the expensive
ones (the checkpoint loads and fits, the data reads, the split matches) through the procedure's own loader.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import torch

from rift_sweep import names
from rift_sweep.config import SweepConfig, load_config
from rift_sweep.core.errors import InputError
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
    """A new or empty folder for a new sweep; the same sweep's folder for --resume; nothing else."""
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
        if not resume:
            raise InputError(
                f"a sweep already exists at {folder}: carry it on with --resume, or give another "
                f"`name`/--output to start a new one"
            )
        if previous.name != config.name:
            raise InputError(
                f"{folder} holds the sweep {previous.name!r}, not {config.name!r}; resume it with its own "
                f"config or give another --output"
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
    """A cluster named by --address or RAY_ADDRESS accepts a connection within a few seconds."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep:
        raise InputError(f"Ray address {address!r} must be HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise InputError(
            f"no Ray cluster answers at {address} within {CONNECT_TIMEOUT_S:.0f} s ({exc}); start it "
            f"(`ray start --head`) or fix --address / RAY_ADDRESS"
        ) from exc


def check_local_devices(config: SweepConfig, *, address: str | None, gpus: int | None) -> None:
    """Without a cluster, CUDA and GPUs must be on this machine: a local Ray has no autoscaler to wait for."""
    if address or os.environ.get("RAY_ADDRESS"):
        return  # a cluster's GPUs are checked once connected (resources.worker_shape, gpus_requested)
    have = torch.cuda.device_count()
    if config.device == "cuda" and have == 0:
        raise InputError(
            "device: cuda was asked for but this machine has no CUDA device; use device: auto or cpu, "
            "or join a GPU cluster with --address"
        )
    if gpus and gpus > have:
        raise InputError(
            f"--gpus {gpus}: a local Ray has no autoscaler and this machine has {have} GPU(s); "
            f"drop --gpus, or join an autoscaling cluster with --address"
        )


def check_sweep(
    config: SweepConfig, *, resume: bool, address: str | None, gpus: int | None
) -> tuple[FolderState, Experiment]:
    """Everything a sweep needs, checked in order of cost; returns the folder's state and the loaded experiment."""
    folder = check_output_folder(config, resume=resume)
    check_tracking(config)
    check_ray_address(address)
    check_local_devices(config, address=address, gpus=gpus)
    check_module_choice(config)
    return folder, load_experiment(config, device="cpu", check=True)  # loads, fits, reads, and looks sane
