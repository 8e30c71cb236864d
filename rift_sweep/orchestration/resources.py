"""Ray start-up and resource decisions, made at run time from what the cluster really has.

Asking Ray for a GPU that no node has hangs forever with only a warning, so every request is checked
against `ray.cluster_resources()` first and refused at once when it can never be met.
"""

from __future__ import annotations

import logging
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


def init_ray(address: str | None = None, runtime_env: dict | None = None, *, verbose: bool = True) -> None:
    """Join a running cluster (`address`, or RAY_ADDRESS / "auto") or start a local Ray.

    `address=None` joins the cluster named by RAY_ADDRESS when set, otherwise starts a local instance.
    """
    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.WARNING
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=verbose, runtime_env=runtime_env, logging_level=level)
    else:  # workers' logs (Tune's checkpoint notices, tqdm of each trial) reach the terminal only with --verbose
        ray.init(include_dashboard=False, log_to_driver=verbose, runtime_env=runtime_env, logging_level=level)
    log.info("Ray resources: %s", ray.cluster_resources())


@contextmanager
def gpus_requested(count: int | None, *, timeout_s: float = 1800.0, poll_s: float = 5.0) -> Iterator[None]:
    """Ask the autoscaler for `count` GPUs and wait until the cluster has them; release the request on exit.

    Worker shapes are decided from the GPUs that are up, so on a cluster whose GPU nodes scale from zero the
    GPUs must be there first. None or 0: no request.
    """
    if not count:
        yield
        return
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"GPU": 1}] * count)
    try:
        deadline, have = time.monotonic() + timeout_s, 0
        while (have := int(ray.cluster_resources().get("GPU", 0))) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"asked the autoscaler for {count} GPU(s), but after {timeout_s:.0f} s the cluster "
                    f"has {have}; check `ray status` and the GPU node type's max_workers"
                )
            log.info("waiting for GPUs: %d of %d up", have, count)
            time.sleep(poll_s)
        yield
    finally:
        request_resources(bundles=[])  # let idle GPU nodes go


def worker_shape(workers: int | None = None, *, gpus_per_worker: float | None = None) -> WorkerShape:
    """One worker per GPU where GPUs exist, else one per CPU slot; `workers` overrides the count.

    `gpus_per_worker` forces GPU use (1) or CPU use (0); None decides from the cluster. A request the
    cluster can never meet raises InputError before anything is scheduled.
    """
    total = ray.cluster_resources()
    cpus, gpus = int(total.get("CPU", 0)), int(total.get("GPU", 0))
    use_gpus = gpus > 0 if gpus_per_worker is None else gpus_per_worker > 0
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1; got {workers}")
    if use_gpus:
        if gpus == 0:
            raise InputError(
                "a GPU worker was asked for, but this Ray cluster has no GPU "
                f"(resources: {_summary(total)}); run without a GPU request or add GPU nodes"
            )
        count = workers or gpus
        if count > gpus:
            raise InputError(
                f"{count} GPU workers were asked for, but the cluster has {gpus} GPU(s); use --workers {gpus} or fewer"
            )
        return WorkerShape(count, num_cpus=1, num_gpus=1)
    if cpus == 0:
        raise InputError(f"this Ray cluster has no CPU to run workers on (resources: {_summary(total)})")
    count = workers or cpus
    if count > cpus:
        raise InputError(
            f"{count} CPU workers were asked for, but the cluster has {cpus} CPU slot(s); use --workers {cpus} or fewer"
        )
    return WorkerShape(count, num_cpus=1, num_gpus=0)


def _summary(resources: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU", "memory"))
