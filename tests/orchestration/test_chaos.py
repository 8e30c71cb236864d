"""Chaos: SIGKILL the sweep's whole process group at four moments — during stage 1, mid-fine-tune, during an α
path, between trials — `--resume` after each, and check the end state an uninterrupted sweep would have."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import pytest

from rift_sweep import names
from rift_sweep.config import load_config
from rift_sweep.core.selection import pareto_mask
from rift_sweep.names import KIND_TAG, MODEL_KEY_TAG, PARETO_TAG, SWEEP_RUN_TAG, TRIAL_TAG
from rift_sweep.orchestration.mrc_pool import read_table
from rift_sweep.orchestration.tracking import SweepTracker

from conftest import assert_in_study, optuna_study, trial_runs, wait_for, write_digits_config

pytestmark = pytest.mark.slow
NUM_SAMPLES = 3
GRID = [0.0, 0.25, 0.5, 0.75, 1.0]  # 4 points to evaluate per fine-tune (α = 0 is the AT model)


def query(config, sql: str) -> list:
    """Read-only SQL on the sweep's store (an MLflow client would race the driver's schema migration)."""
    db = config.output_path / "mlflow.db"
    if not db.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            return connection.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


def latest(config, key: str) -> list[tuple[str, float]]:
    """(run, latest value of `key`) for every RUNNING child run."""
    return query(
        config,
        "SELECT m.run_uuid, m.value FROM latest_metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
        f"WHERE r.status = 'RUNNING' AND m.key = '{key}'",
    )


def finished(config) -> int:
    rows = query(
        config,
        "SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE r.status = 'FINISHED' AND t.key = 'mlflow.parentRunId'",
    )
    return rows[0][0] if rows else 0


def stage_one_half_done(config):
    tables = list((config.output_path / "cache" / "mrc").glob("*.parquet"))
    return tables and 1 <= len(read_table(tables[0])) < 5 and not (config.output_path / "tune").exists()


def mid_finetune(config):
    started = {run for run, value in latest(config, names.FT_EPOCH) if value >= 1}
    return started - {run for run, _ in latest(config, names.ALPHA_POINTS_DONE)}


def during_alpha_path(config):
    """A trial with some of its α points done (each is kept in the fine-tune cache before it is reported)."""
    return [run for run, value in latest(config, names.ALPHA_POINTS_DONE) if 1 <= value < len(GRID) - 1]


def test_sigkill_at_any_moment_then_resume_reaches_the_end_state(tmp_path, digits_checkpoint):
    path = write_digits_config(
        tmp_path,
        digits_checkpoint,
        search={
            "space": {"lr": {"low": 0.001, "high": 0.1, "log": True}},
            "num_samples": NUM_SAMPLES,
            "max_concurrent": 1,
        },
        mrc={"epochs": 10, "batch_size": 16, "variant": "reference"},  # seconds per module: time to kill in stage 1
        finetune={"epochs": 3, "batch_size": 8},
        alpha={"grid": GRID, "screen": 1.0},  # every point costs the same: the α-path moment lasts long enough to hit
    )
    config = load_config(path)
    command = [sys.executable, "-m", "rift_sweep.cli", "sweep", "--config", str(path)]
    delays = random.Random(0)  # the seeded part of each moment: a short wait after its event
    killed_in_alpha, mid_path = None, False
    moments = [
        ("stage 1", stage_one_half_done),
        ("mid-fine-tune", mid_finetune),
        ("α path", during_alpha_path),
        ("between trials", lambda c: finished(c) >= 2),
    ]
    for number, (moment, event) in enumerate(moments):
        log = open(tmp_path / f"run{number}.log", "w")
        driver = subprocess.Popen(
            command + (["--resume"] if number else []), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            seen = wait_for(lambda event=event: event(config), timeout=300)
            if moment == "α path":
                killed_in_alpha = seen[0]
            else:
                time.sleep(delays.uniform(0, 0.5))
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, at once
            driver.wait()
        if moment == "α path":  # still mid-path when killed? (it may have finished in the meantime)
            mid_path = query(config, f"SELECT status FROM runs WHERE run_uuid = '{killed_in_alpha}'") == [("RUNNING",)]
        assert finished(config) < NUM_SAMPLES, f"the sweep ended before the kill {moment}"

    done = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    tracker = SweepTracker(config)
    runs = trial_runs(tracker, "FINISHED")
    assert len(runs) == NUM_SAMPLES and len({r.data.tags[TRIAL_TAG] for r in runs}) == NUM_SAMPLES
    assert trial_runs(tracker, "RUNNING") == []
    assert tracker.client.get_run(tracker.parent_run_id).info.status == "FINISHED"
    study = optuna_study(config)
    for run in runs:
        assert_in_study(study, run)
    models = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`{SWEEP_RUN_TAG}` = '{tracker.parent_run_id}' and tags.`{KIND_TAG}` = 'model'"
    )
    keys = [m.data.tags[MODEL_KEY_TAG] for m in models]
    assert len(keys) == len(set(keys))  # every evaluated model logged once, whatever the kills
    points = [(m.data.metrics["std_acc"], m.data.metrics["rob_acc"]) for m in models]
    assert [m.data.tags[PARETO_TAG] == "true" for m in models] == list(pareto_mask(points))
    twice = query(
        config, "SELECT run_uuid, key, step FROM metrics GROUP BY run_uuid, key, step HAVING count(DISTINCT value) > 1"
    )
    assert twice == [], twice  # no metric holds two different values at one step
    resumed = tracker.client.get_run(killed_in_alpha)
    if mid_path:  # the α-path trial carried on from its last checkpointed point, not from the start of the path
        assert resumed.info.status == "FINISHED"
        assert resumed.data.metrics["alpha_points_evaluated"] < len(GRID) - 1
