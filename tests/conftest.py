"""Shared fixtures: a small model trained for real on scikit-learn's digits (always offline, seconds on CPU)."""

from __future__ import annotations

import glob
import json
import os
import pickle
import socket
import sqlite3
import time
from collections import defaultdict
from contextlib import closing, contextmanager

import pytest
import torch

from rift_sweep.core.data.datasets import load_splits
from rift_sweep.core.models.architectures import build_model
from rift_sweep.core.robustness.attacks import PGD

DIGITS_PGD = PGD(eps=0.1, step_size=0.025, steps=5)


def pytest_configure(config):
    """One Ray auth mode for the whole test process, set before any test module imports Ray. Ray caches the mode per
    process, so a per-test switch leaves a later cluster's driver and GCS disagreeing (AuthenticationError at
    start-up). The in-process nodes of ray.cluster_utils carry no token, so the tests go without one; their nodes
    listen on 127.0.0.1 only."""
    os.environ["RAY_AUTH_MODE"] = "disabled"


def train_small_cnn(splits, epochs: int = 4, seed: int = 0) -> torch.nn.Module:
    """A few epochs of plain SGD: enough for ~90% clean accuracy on digits."""
    torch.manual_seed(seed)
    info = splits.info
    model = build_model(
        "small_cnn", num_classes=info.num_classes, in_channels=info.image_shape[0], mean=info.mean, std=info.std
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = splits.train.x.float() / 255
    y = splits.train.y
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits():
    return load_splits("digits", val_size=300, seed=0)


@pytest.fixture(scope="session")
def digits_model(digits):
    return train_small_cnn(digits)


@pytest.fixture()
def fresh_digits_model(digits, digits_model):
    """A private copy, for tests that change weights."""
    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=digits.info.mean, std=digits.info.std)
    model.load_state_dict(digits_model.state_dict())
    return model.eval()


DIGITS_CONFIG = {
    "name": "digits-test",
    "device": "cpu",
    "data": {"dataset": "digits", "val_size": 300},
    "model": {"name": "small_cnn"},
    "attack": {"eps": 0.1, "step_size": 0.025, "steps": 5, "test_runs": 1},
    "ood": {
        "corruptions": ["gaussian_noise", "defocus_blur", "fog", "contrast"],
        "severities": [1, 3, 5],
        "per_corruption": 100,
    },
    "mrc": {"examples": 300, "epochs": 3, "batch_size": 64},
    "finetune": {"lr": 0.01, "epochs": 2, "batch_size": 64},
    "alpha": {"grid": [0.0, 0.5, 1.0]},
    "adversarial_training": {"epochs": 1, "lr": 0.05, "batch_size": 64},
    "eval_batch_size": 512,
}


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory, digits_model):
    from rift_sweep.core.models.checkpoints import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "digits_small_cnn.pt"
    save_checkpoint(path, digits_model, split={"dataset": "digits", "val_size": 300, "split_seed": 0})
    return path


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_digits_config(folder, checkpoint, **overrides):
    """The digits config with `overrides`, written to folder/config.yaml (output in folder/out)."""
    import yaml

    raw = merge(DIGITS_CONFIG, {"model": {"checkpoint": str(checkpoint)}, "output_dir": str(folder / "out")})
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(merge(raw, overrides)))
    return path


DIGITS_SPACE = {"lr": {"low": 0.001, "high": 0.1, "log": True}, "epochs": {"low": 1, "high": 3}}  # α: alpha.grid


@pytest.fixture(scope="session")
def finished_digits_sweep(tmp_path_factory, digits_checkpoint):
    """The config of one finished 4-trial digits sweep (AutoAttack on 20 test images: the recommended model's final
    attack, end to end, in under a minute), shared by the tests that only read a finished sweep."""
    import ray

    from rift_sweep import cli
    from rift_sweep.config import load_config

    folder = tmp_path_factory.mktemp("finished-sweep")
    search = {"space": DIGITS_SPACE, "num_samples": 4, "max_concurrent": 2}
    path = write_digits_config(
        folder, digits_checkpoint, search=search, attack={"final": "autoattack"}, data={"test_subset": 20}
    )
    try:
        assert cli.main(["sweep", "--config", str(path)]) == 0
    finally:
        ray.shutdown()
    return load_config(path)


@pytest.fixture()
def digits_config(tmp_path, digits_checkpoint):
    """A factory: the digits config (with overrides) written as YAML, loaded and validated."""
    from rift_sweep.config import load_config

    return lambda **overrides: load_config(write_digits_config(tmp_path, digits_checkpoint, **overrides))


@pytest.fixture()
def fake_gpus(tmp_path, monkeypatch):
    """The test-only switch (orchestration.devices.FAKE_GPUS_ENV): a worker holding a declared GPU that torch cannot
    see computes on the CPU instead of failing, and logs each job with the GPU it held to the returned file. Set
    before a cluster starts, so its nodes' workers inherit it."""
    from rift_sweep.orchestration.devices import FAKE_GPUS_ENV

    log = tmp_path / "gpu_jobs.jsonl"
    monkeypatch.setenv(FAKE_GPUS_ENV, str(log))
    return log


def gpu_jobs(log) -> list[dict]:
    """The fake-GPU log's records: one per job a GPU worker ran (what, pid, node, the GPU it held, start, end)."""
    return [json.loads(line) for line in log.read_text().splitlines()]


def gpu_of(job: dict) -> tuple[str, str]:
    return job["node"], job["cuda_visible_devices"]


def most_at_once(jobs: list[dict]) -> dict[tuple[str, str], int]:
    """Per GPU (node, id): the most jobs that ran on it at the same time."""
    events = sorted((j[kind], +1 if kind == "start" else -1, gpu_of(j)) for j in jobs for kind in ("start", "end"))
    running, peak = defaultdict(int), defaultdict(int)
    for _, step, gpu in events:  # at the same instant an end (-1) sorts before a start
        running[gpu] += step
        peak[gpu] = max(peak[gpu], running[gpu])
    return dict(peak)


@contextmanager
def ray_cluster(*gpu_nodes: tuple[int, int], join: bool = True):
    """A head without GPUs (1 CPU) and one node per (CPUs, declared GPUs), all in this machine; joined unless
    `join` is False (then `ray.init()` finds it as it finds a cluster made by `ray start`)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=cpus, num_gpus=gpus) for cpus, gpus in gpu_nodes]
    cluster.wait_for_nodes()
    if join:
        ray.init(address=cluster.address)
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture()
def gpu_cluster(fake_gpus):
    """Three Ray nodes in this machine: a head without GPUs and two workers with one made-up GPU each."""
    with ray_cluster((1, 1), (1, 1)) as made:
        yield made


def wait_for(probe, timeout: float, interval: float = 0.3):
    """The first truthy value of probe(), polled until `timeout` s; an OSError (a server not up yet) is a no."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = probe()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a sweep's end state, read from outside ------------------------------------------------------


def optuna_study(config):
    from rift_sweep.orchestration.sweep import tune_paths

    states = glob.glob(str(tune_paths(config)[-1] / "searcher-state-*.pkl"))
    with open(max(states), "rb") as handle:  # the newest by the timestamp in its name, as Tune restores
        return pickle.load(handle)["_ot_study"]


def assert_in_study(study, run):
    """The trial's (params, values) reached Optuna as a COMPLETE trial."""
    params = run.data.params
    values = [run.data.metrics["std_acc"], run.data.metrics["rob_acc"]]

    def same_point(trial):  # the searched parameters only: the others are fixed by the config
        return all(float(params[k]) == pytest.approx(v) for k, v in trial.params.items())

    matches = [t for t in study.trials if t.state.name == "COMPLETE" and same_point(t)]
    assert any(t.values == pytest.approx(values) for t in matches), (dict(params), values)


def trial_runs(tracker, status: str | None = None) -> list:
    """The sweep's trial runs (its other children are the models it evaluated), read with MLflow's own client."""
    from rift_sweep.orchestration.tracking import child_runs

    runs = child_runs(tracker.client, tracker.experiment_id, tracker.parent_run_id, status)
    return [run for run in runs if run.data.tags.get("rift.kind") == "trial"]


def finished_children(config) -> int:
    """Finished trial runs, by a read-only look at the store: an MLflow client would race the driver's own schema
    migration."""
    db = config.output_path / "mlflow.db"
    if not db.exists():
        return 0
    query = (
        "SELECT count(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
        "WHERE runs.status = 'FINISHED' AND tags.key = 'rift.kind' AND tags.value = 'trial'"
    )
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            return connection.execute(query).fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0
