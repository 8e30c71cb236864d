"""Ray start-up and resource decisions, made at run time from what the cluster really has.

Asking Ray for a GPU that no node has hangs forever with only a warning, so every request is checked
against `ray.cluster_resources()` first and refused at once when it can never be met: by a cluster without the GPUs
and without an autoscaler that can add them (`can_add_nodes`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray

from rift_sweep.core.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerShape:
    count: int
    num_cpus: float
    num_gpus: float

    @property
    def describe(self) -> str:
        kind = f"{self.num_gpus:g} GPU" if self.num_gpus else f"{self.num_cpus:g} CPU"
        return f"{self.count} worker(s) x {kind}"


def quiet_dependencies(verbose: bool) -> None:
    """Unless --verbose, our dependencies keep their notices to themselves: MLflow's and Optuna's INFO lines, Ray's
    start-up line and its notice that a new local cluster uses token authentication (its safe default), Tune's
    new-style status boxes (the legacy reporter honours verbose=0) and its TensorBoard logger's complaint about the
    α path (a list, not a scalar)."""
    if verbose:
        return
    import optuna

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name, level in (
        ("mlflow", logging.WARNING),
        ("ray", logging.WARNING),
        ("ray.tune.logger.tensorboardx", logging.ERROR),
        ("ray._private.authentication.authentication_token_setup", logging.ERROR),  # "token auth is on" (good)
    ):
        logging.getLogger(name).setLevel(level)


def ray_address(address: str | None) -> str | None:
    """The cluster this process will join, found as `ray.init()` finds it: --address, else RAY_ADDRESS, else the
    cluster that `ray start` (or `ray up`) left on this node; None: no cluster runs, a local Ray will be started.
    So the sweep's driver joins the cluster on a head node (`ray submit`) without being told."""
    from ray._private.services import canonicalize_bootstrap_address

    if address and address.startswith("ray://"):  # Ray Client: ray.init connects as given
        return address
    try:
        return canonicalize_bootstrap_address(address or None)
    except (ConnectionError, ValueError) as exc:
        raise InputError(f"Ray address {address!r}: {exc}; give HOST:PORT (e.g. 10.0.0.5:6379)") from exc


def init_ray(address: str | None = None, runtime_env: dict | None = None, *, verbose: bool = True) -> None:
    """Join the running cluster (`ray_address`) or start a local Ray."""
    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.WARNING
    # workers' logs (Tune's checkpoint notices, tqdm of each trial) reach the terminal only with --verbose
    common = {"log_to_driver": verbose, "runtime_env": runtime_env or None, "logging_level": level}
    if ray_address(address) is None:
        ray.init(address="local", include_dashboard=False, **common)
    else:  # None: Ray finds the cluster `ray start` left here as above, and uses its auth token (an address never)
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, **common)
    log.info("Ray resources: %s", ray.cluster_resources())


def can_add_nodes(wait_s: float = 10.0) -> bool:
    """Whether the cluster's autoscaler starts nodes when asked (a cluster `ray up` launched with an autoscaling
    config, or KubeRay's autoscaler v2). A local Ray, and nodes started by hand with `ray start`, have a read-only
    autoscaler that only mirrors the nodes present: asking it for GPUs waits forever. Read from the autoscaler's
    own status report (what `ray status` prints), polled up to `wait_s` for a monitor that has just started: its
    first reports name no node types yet (a local Ray's names them within ~2 s)."""
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if is_autoscaler_v2():
        return True
    deadline = time.monotonic() + wait_s
    while not (node_types := _autoscaler_node_types()):
        if time.monotonic() > deadline:
            return False  # no autoscaler reports on this cluster
        time.sleep(0.2)
    mirrors = {format_readonly_node_type(node["NodeID"]) for node in ray.nodes()}
    return bool(node_types - mirrors)


def _autoscaler_node_types() -> set[str]:
    """The node types of the autoscaler's latest report: of the nodes up and of those being launched."""
    import json

    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    report = (json.loads(status).get("autoscaler_report") if status else None) or {}
    return {*(report.get("node_type_mapping") or {}).values(), *(report.get("pending_launches") or {})}


@contextmanager
def gpus_requested(count: int | None, *, timeout_s: float = 1800.0, poll_s: float = 5.0) -> Iterator[None]:
    """Ask the autoscaler for `count` GPUs and wait until the cluster has them; release the request on exit.

    Worker shapes are decided from the GPUs that are up, so on a cluster whose GPU nodes scale from zero the
    GPUs must be there first. A cluster that has too few and cannot add nodes is refused at once. None or 0: no
    request.
    """
    if not count:
        yield
        return
    from ray.autoscaler.sdk import request_resources

    have = int(ray.cluster_resources().get("GPU", 0))
    if have < count and not can_add_nodes():
        raise InputError(
            f"--gpus {count}: this Ray cluster has {have} GPU(s) and no autoscaler to add more (a local Ray, or "
            f"nodes started by hand); drop --gpus, or launch the cluster with `ray up` and a GPU node type"
        )
    request_resources(bundles=[{"GPU": 1}] * count)
    try:
        deadline, shown = time.monotonic() + timeout_s, None
        while (have := int(ray.cluster_resources().get("GPU", 0))) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"asked the autoscaler for {count} GPU(s), but after {timeout_s:.0f} s the cluster "
                    f"has {have}; check `ray status` and the GPU node type's max_workers"
                )
            if have != shown:  # GPU nodes take minutes to boot: say so, once per change
                log.warning("waiting for the autoscaler's GPU nodes: %d of %d GPU(s) up", have, count)
                shown = have
            time.sleep(poll_s)
        yield
    finally:
        request_resources(bundles=[])  # let idle GPU nodes go


def worker_shape(device: str = "auto", workers: int | None = None, *, per_gpu: int = 1) -> WorkerShape:
    """One worker per GPU (`per_gpu` share one) where GPUs are used, else one per CPU slot; `workers` overrides the
    count. `device` is the config's: "cpu" never uses GPUs, "cuda" needs them, "auto" uses them when the cluster
    has any. A GPU worker gets its node's CPUs per GPU (threads for its data work), shared by the `per_gpu` workers
    on one GPU. A request the cluster can never meet raises InputError before anything is scheduled.
    """
    total = ray.cluster_resources()
    cpus, gpus = int(total.get("CPU", 0)), int(total.get("GPU", 0))
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1; got {workers}")
    if device == "cuda" or (device == "auto" and gpus > 0):
        if gpus == 0:
            raise InputError(
                "device: cuda, but this Ray cluster has no GPU "
                f"(resources: {_summary(total)}); add GPU nodes, pass --gpus N to ask the autoscaler, or set device: auto"
            )
        slots = gpus * per_gpu
        count = workers or slots
        if count > slots:
            raise InputError(
                f"{count} GPU workers were asked for, but the cluster has {gpus} GPU(s) x {per_gpu} per GPU; "
                f"use --workers {slots} or fewer"
            )
        return WorkerShape(count, num_cpus=_cpus_per_gpu() / per_gpu, num_gpus=1 / per_gpu)
    if cpus == 0:
        raise InputError(f"this Ray cluster has no CPU to run workers on (resources: {_summary(total)})")
    count = workers or cpus
    if count > cpus:
        raise InputError(
            f"{count} CPU workers were asked for, but the cluster has {cpus} CPU slot(s); use --workers {cpus} or fewer"
        )
    return WorkerShape(count, num_cpus=1, num_gpus=0)


def _cpus_per_gpu() -> float:
    """The CPUs each GPU can count on, on the GPU node with the fewest per GPU (whole CPUs where there are some)."""
    shares = [
        node["Resources"].get("CPU", 0) / node["Resources"]["GPU"]
        for node in ray.nodes()
        if node["Alive"] and node["Resources"].get("GPU", 0) > 0
    ]
    share = min(shares, default=1.0)
    return math.floor(share) if share >= 1 else share


def _summary(resources: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU", "memory"))
