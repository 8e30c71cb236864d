"""GPU placement on real Ray with declared GPUs (this machine has none): every piece of GPU work runs in a process
bound to one GPU for its whole life, jobs spread over the GPUs and never share one beyond `search.trials_per_gpu`,
the driver never touches CUDA, a cluster already running is joined without --address, and a GPU that torch cannot
use stops the sweep before anything is written. The work itself runs on the CPU through the test-only fake-GPU
switch (conftest.fake_gpus), whose log says which GPU each job held and when."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from rift_sweep import cli
from rift_sweep.config import load_config
from rift_sweep.orchestration.devices import bind_worker
from rift_sweep.orchestration.tracking import SweepTracker

from conftest import free_port, gpu_jobs, gpu_of, most_at_once, ray_cluster, trial_runs, wait_for, write_digits_config
from helpers import missing, requires

RAY_ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")  # where `ray start` leaves its address for `ray.init()`

pytestmark = pytest.mark.slow

SPACE = {"lr": {"low": 0.001, "high": 0.1, "log": True}, "epochs": {"low": 1, "high": 2}}
CUDA_QUERIES = ("is_available", "device_count", "init", "_lazy_init", "current_device", "set_device", "mem_get_info")


@pytest.fixture()
def no_cuda_in_driver(monkeypatch):
    """Fails the test if this process (the sweep's driver) asks torch anything about CUDA: on a GPU head that would
    take a CUDA context (and memory) on a GPU the workers need, and the head of a GPU cluster often has no GPU."""
    touched = []

    def guard(name):
        def refuse(*args, **kwargs):
            touched.append(name)
            raise AssertionError(f"the driver called torch.cuda.{name}")

        return refuse

    for name in CUDA_QUERIES:
        monkeypatch.setattr(torch.cuda, name, guard(name))
    yield
    assert touched == [] and not torch.cuda.is_initialized()


def test_a_sweep_on_declared_gpus_binds_every_job_to_one_gpu(
    fake_gpus, no_cuda_in_driver, tmp_path, digits_checkpoint, capsys
):
    search = {"space": SPACE, "num_samples": 4, "max_concurrent": 4, "trials_per_gpu": 2}
    # Small fine-tuning batches: trials last long enough to run side by side.
    path = write_digits_config(
        tmp_path, digits_checkpoint, device="auto", search=search, finetune={"epochs": 2, "batch_size": 16}
    )
    with ray_cluster((4, 2), join=False):  # one node, two GPUs (ids 0 and 1); found as `ray start` leaves it
        assert cli.main(["sweep", "--config", str(path), "--gpus", "2"]) == 0  # no --address: joined, not refused
    assert "GPU node" in capsys.readouterr().out  # the probe ran on the GPU node

    jobs = gpu_jobs(fake_gpus)
    for pid in {j["pid"] for j in jobs}:  # one GPU per process, for its whole life
        assert len({gpu_of(j) for j in jobs if j["pid"] == pid}) == 1, pid
    assert all(j["gpu_ids"] == [j["cuda_visible_devices"]] for j in jobs)
    kinds = {kind: [j for j in jobs if j["what"].startswith(kind)] for kind in ("worker start", "mrc", "trial", "test")}
    trials = most_at_once(kinds["trial"])
    assert len(trials) == 2 and max(trials.values()) == 2  # both GPUs used; two trials share one, never three
    # Two pools of two workers, each worker on its own GPU: MRC's before the trials, the front's after them. Which
    # worker takes which job is the pool's choice (whoever is free first), so only the workers' GPUs are fixed.
    first_trial, last_trial = min(j["start"] for j in kinds["trial"]), max(j["end"] for j in kinds["trial"])
    mrc_pool = [j for j in kinds["worker start"] if j["end"] < first_trial]
    front_pool = [j for j in kinds["worker start"] if j["start"] > last_trial]
    for pool, kind in ((mrc_pool, "mrc"), (front_pool, "test")):
        assert len(pool) == 2 and len({gpu_of(j) for j in pool}) == 2, pool
        assert {j["pid"] for j in kinds[kind]} <= {j["pid"] for j in pool}
        assert max(most_at_once(kinds[kind]).values()) == 1  # one job at a time on a GPU

    config = load_config(path)
    tracker = SweepTracker(config)
    runs = trial_runs(tracker, "FINISHED")
    assert len(runs) == 4


def test_a_gpu_torch_cannot_use_stops_the_sweep_before_anything_is_written(tmp_path, digits_checkpoint, capsys):
    path = write_digits_config(tmp_path, digits_checkpoint, device="auto")
    with ray_cluster((1, 1), join=False) as (_, [node]):
        assert cli.main(["sweep", "--config", str(path)]) == 2
        error = capsys.readouterr().err
        assert f"GPU node {node.node_ip_address}: torch {torch.__version__}" in error and len(error.splitlines()) == 1
        assert not (tmp_path / "out").exists()

        # and a worker given that GPU fails loudly instead of computing on one CPU thread
        with pytest.raises(ray.exceptions.RayTaskError, match="will not fall back to the CPU"):
            ray.get(ray.remote(num_gpus=1)(bind_worker).remote())


def autoscaling_config(gcs_address: str) -> dict:
    """A cluster launcher config whose provider, Ray's own fake_multinode, starts worker nodes in this machine when
    the autoscaler asks for them: the autoscaler `ray up` runs, with made-up GPU nodes (min 0, max 2)."""
    lists = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
    lists += ("head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude")
    return {
        "cluster_name": "fake-gpus",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_node": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        "rsync_filter": [],
        **{key: [] for key in lists},
    }


@pytest.fixture()
def autoscaling_head(tmp_path, fake_gpus):
    """`ray start --head --autoscaling-config ...` with no GPU node up, in its own PID namespace (so every process
    it and its autoscaler start ends with it); its address file restored afterwards."""
    if reason := missing("namespaces"):
        pytest.skip(reason)
    previous = RAY_ADDRESS_FILE.read_text() if RAY_ADDRESS_FILE.exists() else None
    port = free_port()
    config = tmp_path / "autoscaling.json"
    config.write_text(json.dumps(autoscaling_config(f"{ray.util.get_node_ip_address()}:{port}")))
    ray_cli = str(Path(sys.executable).parent / "ray")
    command = [ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"]
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with open(tmp_path / "head.log", "w") as log:
        head = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", *command, f"--autoscaling-config={config}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: RAY_ADDRESS_FILE.exists() and RAY_ADDRESS_FILE.read_text().endswith(f":{port}"), 60)
        yield
    finally:
        ray.shutdown()
        os.kill(head.pid, signal.SIGKILL)  # unshare: its namespace's processes end with it
        head.wait(timeout=30)
        if previous is None:
            RAY_ADDRESS_FILE.unlink(missing_ok=True)
        else:
            RAY_ADDRESS_FILE.write_text(previous)


def test_gpus_asks_the_autoscaler_and_waits_for_its_gpu_nodes(
    autoscaling_head, fake_gpus, tmp_path, digits_checkpoint, capsys
):
    path = write_digits_config(tmp_path, digits_checkpoint, device="auto")
    start = time.monotonic()
    assert cli.main(["mrc", "--config", str(path), "--gpus", "2"]) == 0  # no GPU up when it starts, no --address
    assert capsys.readouterr().out.count("GPU node") == 2  # both GPU nodes it asked for came up and were checked
    used = {job["node"] for job in gpu_jobs(fake_gpus)}  # MRC ran on the autoscaler's GPU nodes
    assert used and used <= {node["NodeID"] for node in ray.nodes() if node["Resources"].get("GPU")}
    assert time.monotonic() - start < 120


@pytest.mark.gpu
@requires("cuda")
def test_a_small_sweep_on_a_real_gpu(tmp_path, digits_checkpoint, capsys, monkeypatch):
    from rift_sweep.orchestration.devices import FAKE_GPUS_ENV

    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    search = {"space": SPACE, "num_samples": 2, "max_concurrent": 2}
    path = write_digits_config(tmp_path, digits_checkpoint, device="cuda", search=search, finetune={"epochs": 2})
    try:
        assert cli.main(["sweep", "--config", str(path)]) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert "GPU node" in out and "fake" not in out and "Pareto front" in out
