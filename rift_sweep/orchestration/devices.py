"""Which device a Ray worker computes on: the one Ray gave it, for its whole life.

- A worker Ray gave a GPU (actor, trial) uses that GPU (Ray sets CUDA_VISIBLE_DEVICES, so it is cuda:0 there) and
  fails loudly when torch cannot use it: never a silent run on one CPU thread while holding a GPU.
- A worker on a CPU slot uses the CPU, also on a GPU node, where Ray 2.60 leaves every GPU visible to it.
- Its torch threads come from its share of the node's CPUs, not from Ray's default of one.
- Before a sweep writes anything, one task per GPU node checks that torch can use that node's GPUs.

The driver never touches CUDA: what the cluster has is Ray's view (ray.cluster_resources).

Tests run GPU scheduling on machines without GPUs through Ray's declared GPUs and the test-only environment
variable FAKE_GPUS_ENV: set to a file path in the environment the Ray nodes start in, a GPU worker whose torch
cannot see CUDA computes on the CPU and appends what it held to that file (one JSON line per job), instead of
raising. Nothing else turns it on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rift_sweep.core.devices import CudaReport, cuda_report
from rift_sweep.core.errors import InputError

FAKE_GPUS_ENV = "RIFT_SWEEP_TEST_FAKE_GPUS"
PROBE_TIMEOUT_S = 120.0  # a GPU busy with another job delays the probe; longer than this is a problem to report


def fake_gpus_log() -> str | None:
    """The tests' fake-GPU record file, when the test-only switch is on."""
    return os.environ.get(FAKE_GPUS_ENV) or None


def bind_worker() -> torch.device:
    """This Ray worker's device (and torch threads) for its whole life, from the resources Ray assigned it."""
    assigned = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
    if not assigned.get("GPU"):
        return torch.device("cpu")
    report = cuda_report()
    if report.usable:
        return torch.device("cuda")  # CUDA_VISIBLE_DEVICES holds only this worker's GPU
    if fake_gpus_log():
        return torch.device("cpu")
    raise RuntimeError(
        f"Ray gave this worker GPU {ray.get_gpu_ids()} on node {_node_ip()}, but {report.problem()}; "
        f"it will not fall back to the CPU"
    )


@contextmanager
def gpu_job(what: str) -> Iterator[None]:
    """Around one piece of work in a GPU worker: with the fake-GPU switch on, record when it ran and which
    GPU the process held (tests check one GPU per process for its life, and no two jobs on one GPU)."""
    log = fake_gpus_log()
    if log is None or not ray.get_runtime_context().get_assigned_resources().get("GPU"):
        yield
        return
    start = time.time()
    try:
        yield
    finally:
        record = {
            "what": what,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
            "start": start,
            "end": time.time(),
        }
        with open(log, "a") as handle:  # one short line per write: appends from several processes stay whole
            handle.write(json.dumps(record) + "\n")


@ray.remote(num_gpus=1)  # in the decorator: the worker exits after the call, releasing its CUDA context
def _probe() -> tuple[str, CudaReport]:
    return _node_ip(), cuda_report()


def check_gpu_nodes() -> list[str]:
    """One probe per GPU node, each holding one of its GPUs: torch's CUDA build, the driver, the device. A node
    whose GPU torch cannot use stops the sweep here, naming the node and the mismatch. Returns one line per node."""
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]
    refs = [
        _probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes
    ]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    if len(ready) < len(refs):
        raise InputError(
            f"{len(refs) - len(ready)} of {len(refs)} GPU node(s) did not run a one-second check within "
            f"{PROBE_TIMEOUT_S:.0f} s: their GPUs are held by another job (`ray status`)"
        )
    lines = []
    for ip, report in ray.get(refs):
        problem = report.problem()
        if problem and not fake_gpus_log():
            raise InputError(f"GPU node {ip}: {problem}")
        lines.append(f"{ip}: {'fake GPU (tests)' if problem else report.describe()}")
    return lines


def _node_ip() -> str:
    return ray.util.get_node_ip_address()
