"""A whole sweep on several Ray nodes (ray.cluster_utils.Cluster), and a GPU node lost while it runs a trial.

Made-up GPUs: the head has none and each worker node has one, as on a GPU cluster; the digits config runs
on CPU inside them. The worker node running a trial is removed as soon as a first trial has finished; the
lost trial is retried (from its epoch checkpoint) on the other GPU node, and the sweep ends with exactly one
finished MLflow child run per trial.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from rift_sweep import cli
from rift_sweep.config import load_config
from rift_sweep.names import PID_TAG, TRIAL_TAG
from rift_sweep.orchestration.resources import worker_shape
from rift_sweep.orchestration.tracking import SweepTracker

from conftest import finished_children, gpu_jobs, most_at_once, trial_runs, wait_for, write_digits_config

pytestmark = pytest.mark.slow

NUM_SAMPLES = 4
SPACE = {
    "lr": {"low": 0.001, "high": 0.1, "log": True},
    "epochs": {"low": 3, "high": 4},
}  # α: searched among alpha.grid


def test_sweep_survives_losing_a_gpu_node_mid_trial(gpu_cluster, fake_gpus, tmp_path, digits_checkpoint):
    cluster, workers = gpu_cluster
    assert (worker_shape("auto").count, worker_shape("auto").num_gpus) == (2, 1)  # trials go to the GPU nodes
    search = {"space": SPACE, "num_samples": NUM_SAMPLES, "max_concurrent": 2}
    # Small batches: a second or two per fine-tuning epoch, time to lose a node mid-trial.
    path = write_digits_config(
        tmp_path, digits_checkpoint, device="auto", search=search, finetune={"batch_size": 4, "epochs": 3}
    )
    config = load_config(path)
    box = {}
    thread = threading.Thread(target=lambda: box.update(code=cli.main(["sweep", "--config", str(path)])))
    thread.start()

    db = config.output_path / "mlflow.db"
    run_id, pid = wait_for(lambda: finished_children(config) >= 1 and _trial_mid_finetune(db), timeout=240)
    cluster.remove_node(_node_of(pid, workers), allow_graceful=False)  # as if the machine died
    thread.join(timeout=300)
    assert not thread.is_alive(), "the sweep did not finish after a node left"
    assert box["code"] == 0

    tracker = SweepTracker(config)
    runs = trial_runs(tracker)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * NUM_SAMPLES  # none RUNNING, no duplicate
    assert len({r.data.tags[TRIAL_TAG] for r in runs}) == NUM_SAMPLES
    lost = tracker.client.get_run(run_id)
    assert lost.info.status == "FINISHED" and int(lost.data.tags[PID_TAG]) != pid  # finished elsewhere
    assert tracker.client.get_run(tracker.parent_run_id).info.status == "FINISHED"
    trials = [job for job in gpu_jobs(fake_gpus) if job["what"].startswith("trial")]  # the lost one never ended
    assert len(trials) == NUM_SAMPLES  # each trial's finished attempt (the one on the lost node never ended)
    assert max(most_at_once(trials).values()) == 1  # trials that overlapped held different GPUs


def _trial_mid_finetune(db: Path) -> tuple[str, int] | None:
    """(run id, pid) of a running trial with at least one fine-tuning epoch still to go."""
    rows = _query(
        db,
        "SELECT runs.run_uuid, pid.value FROM runs "
        "JOIN tags AS pid ON pid.run_uuid = runs.run_uuid AND pid.key = 'rift.pid' "
        "JOIN latest_metrics AS epoch ON epoch.run_uuid = runs.run_uuid AND epoch.key = 'epoch' "
        "JOIN params AS epochs ON epochs.run_uuid = runs.run_uuid AND epochs.key = 'epochs' "
        "WHERE runs.status = 'RUNNING' AND epoch.value < CAST(epochs.value AS INTEGER)",
    )
    return (rows[0][0], int(rows[0][1])) if rows else None


def _query(db: Path, sql: str) -> list:
    """A read-only look at the store: an MLflow client would race the driver's own schema migration."""
    if not db.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            return connection.execute(sql).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []


def _node_of(pid: int, nodes):
    """The cluster_utils node whose raylet started the process `pid` (its parent chain reaches that raylet)."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in nodes}
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    raise AssertionError("the trial does not run on a worker node")
