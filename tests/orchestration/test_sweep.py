"""Stage 2 for real: Ray Tune + Optuna on a local Ray, MLflow on sqlite and over HTTP, the driver killed."""

import os
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest
import ray

from rift_sweep import cli
from rift_sweep.config import load_config
from rift_sweep.core.selection import pareto_mask
from rift_sweep.names import (
    FINETUNE_REUSED_TAG,
    KIND_TAG,
    PARETO_TAG,
    PID_TAG,
    RECOMMENDED_TAG,
    SWEEP_RUN_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)
from rift_sweep.orchestration.mrc_pool import run_stage_one
from rift_sweep.orchestration.sweep import run_sweep
from rift_sweep.orchestration.tracking import SweepTracker
from rift_sweep.procedure.experiment import load_experiment
from rift_sweep.procedure.published import read_published

from conftest import DIGITS_SPACE, assert_in_study, free_port, optuna_study, trial_runs, wait_for, write_digits_config

pytestmark = pytest.mark.slow


def sweep_config(folder, checkpoint, *, num_samples=4, max_concurrent=2, space=DIGITS_SPACE, **overrides):
    return write_digits_config(
        folder,
        checkpoint,
        search={"space": space, "num_samples": num_samples, "max_concurrent": max_concurrent},
        **overrides,
    )


def model_runs(tracker):
    """One run per evaluated model: the AT model, every α > 0 point of every fine-tune."""
    query = f"tags.`{SWEEP_RUN_TAG}` = '{tracker.parent_run_id}' and tags.`{KIND_TAG}` = 'model'"
    return tracker.client.search_runs([tracker.experiment_id], query)


@pytest.fixture()
def ray_shutdown():
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def finished_sweep(finished_digits_sweep):
    return finished_digits_sweep, SweepTracker(finished_digits_sweep)


def test_one_trial_is_the_papers_procedure(finished_sweep):
    # Trials start concurrently, so start order says nothing; a sampled lr never equals the paper's exactly
    config, tracker = finished_sweep
    paper = [r for r in trial_runs(tracker) if float(r.data.params["lr"]) == config.finetune.lr]
    assert [int(r.data.params["epochs"]) for r in paper] == [config.finetune.epochs]


def test_one_run_per_trial_and_one_per_evaluated_model(finished_sweep):
    config, tracker = finished_sweep
    parents = tracker.client.search_runs([tracker.experiment_id], f"tags.`{SWEEP_TAG}` = '{config.name}'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = trial_runs(tracker)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags[TRIAL_TAG] for r in runs}) == 4
    for run in runs:
        assert {"lr", "epochs", "alpha", "module", "seed"} <= set(run.data.params)
        assert {"std_acc", "rob_acc", "ood_acc"} <= set(run.data.metrics)
        assert float(run.data.params["alpha"]) in config.alpha.grid  # a stepped α names a path point
        assert run.data.metrics["rob_images"] == config.data.val_size  # the trial's own α never left screened
    models = model_runs(tracker)
    fine_tunes = {r.data.tags["rift.finetune_key"] for r in runs}
    assert len(models) == 1 + len(fine_tunes) * len([a for a in config.alpha.grid if a > 0])  # the AT model once
    assert len({r.data.tags["rift.model"] for r in models}) == len(models)  # each model once
    for model in models:
        metrics = model.data.metrics
        assert metrics["std_acc_low"] <= metrics["std_acc"] <= metrics["std_acc_high"]
        screened = metrics["rob_images"] < metrics["images"]
        assert model.data.tags["rift.screened"] == str(screened).lower()


def test_the_front_and_the_recommended_model_are_those_of_every_evaluated_model(finished_sweep, tmp_path):
    import pyarrow.parquet as pq

    config, tracker = finished_sweep
    models = model_runs(tracker)
    points = [(m.data.metrics["std_acc"], m.data.metrics["rob_acc"]) for m in models]
    brute = [not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points) for p in points]
    assert [m.data.tags[PARETO_TAG] == "true" for m in models] == brute == list(pareto_mask(points))
    at = next(m for m in models if m.data.tags["rift.model"] == "at")
    floor = at.data.metrics["rob_acc"] - config.alpha.tolerance - 1e-9  # 73.9 − 0.1 keeps 73.8 (float rounding)
    qualifying = [(p[0], p[1], -float(m.data.params["alpha"]), m) for p, m in zip(points, models) if p[1] >= floor]
    best = max(qualifying, key=lambda q: q[:3])[3]  # the rule: std, then rob, then the smaller α
    tagged = [m for m in models if m.data.tags[RECOMMENDED_TAG] == "true"]
    if best is at:  # the AT model itself wins: nothing is recommended over it
        assert tagged == []
        return
    assert tagged == [best] and best.data.tags[PARETO_TAG] == "true"  # the recommended model lies on the front
    recommended = best.data.metrics  # its own numbers: validation, test, paired tests, AutoAttack
    for key in ("test_std_acc", "test_std_acc_low", "test_rob_acc_high", "vs_at_rob_low"):
        assert -100 <= recommended[key] <= 100
    for key in ("test_vs_at_std_p", "test_vs_at_rob_p", "test_vs_at_aa_p", "vs_at_std_p"):
        assert 0 <= recommended[key] <= 1
    for run in (best, at):  # AutoAttack beside PGD, for both models
        assert run.data.metrics["test_aa_acc"] <= run.data.metrics["test_rob_acc"]
    for model, on_front in zip(models, brute):
        if "test_std_acc" in model.data.metrics:
            assert on_front or model is at  # only the front (and the AT model) is evaluated on test
    table = tracker.client.download_artifacts(tracker.parent_run_id, "models.parquet", str(tmp_path))
    rows = pq.read_table(table).to_pylist()
    assert len(rows) == len(models) and sum(r["recommended"] for r in rows) == 1


def test_parent_run_holds_the_front_and_the_mrc_table(finished_sweep):
    _, tracker = finished_sweep
    parent = tracker.parent_run_id
    top = {a.path for a in tracker.client.list_artifacts(parent)}
    assert {"front.png", "front.html", "front.md", "models.csv", "models.parquet", "mrc", "config"} <= top
    assert {"mrc/mrc.png"} <= {a.path for a in tracker.client.list_artifacts(parent, "mrc")}
    metrics = tracker.client.get_run(parent).data.metrics
    assert {"at_val_std_acc", "at_val_rob_acc", "at_test_std_acc", "at_test_rob_acc"} <= set(metrics)


def test_report_prints_the_published_front_without_ray_mlflow_or_torch(finished_sweep, tmp_path):
    config, tracker = finished_sweep
    published = read_published(config.output_path)
    tags = {r.data.tags["rift.model"]: r.data.tags for r in model_runs(tracker)}
    assert published.front.on_front == {key for key, t in tags.items() if t[PARETO_TAG] == "true"}  # one front
    recommended = published.front.recommended
    assert [key for key, t in tags.items() if t[RECOMMENDED_TAG] == "true"] == (
        [recommended.key] if recommended else []
    )

    # In a fresh process, as a user runs it: what it printed, and which heavy packages it imported
    script = (
        "import sys; from rift_sweep import cli; code = cli.main(sys.argv[1:]); "
        "print('IMPORTED', sorted({'ray', 'mlflow', 'torch', 'optuna'} & set(sys.modules))); sys.exit(code)"
    )
    report = [sys.executable, "-c", script, "report", "--output", str(config.output_path)]
    done = subprocess.run(report, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "IMPORTED []"
    assert done.stdout.startswith("Recommended") and "Pareto front of std_acc, rob_acc" in done.stdout
    assert f"over {len(published.front.models)} evaluated models" in done.stdout
    wrong = subprocess.run([*report, "--sweep", "another"], capture_output=True, text=True)
    assert wrong.returncode == 2 and f"holds the sweep {config.name!r}, not 'another'" in wrong.stderr


def test_every_trial_and_its_alpha_path_reached_optuna(finished_sweep):
    config, tracker = finished_sweep
    study = optuna_study(config)
    for run in trial_runs(tracker):
        assert_in_study(study, run)
    # 4 trials + each fine-tune's other α points (3-point grid, 2 points besides the trial's own at most)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) > 4


def test_cached_finetunes_are_reused_over_a_real_mlflow_server(tmp_path, digits_checkpoint, ray_shutdown):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_for(lambda: urllib.request.urlopen(f"{uri}/health").status == 200, timeout=90)
        # only α searched: lr and epochs fixed, so one fine-tune serves all
        path = sweep_config(tmp_path, digits_checkpoint, num_samples=3, max_concurrent=1, space={})
        assert cli.main(["sweep", "--config", str(path), "--tracking-uri", uri]) == 0
        tracker = SweepTracker(load_config(path, {"tracking": {"uri": uri}}))
        runs = trial_runs(tracker, "FINISHED")
        assert len(runs) == 3
        assert sorted(r.data.tags[FINETUNE_REUSED_TAG] for r in runs) == ["False", "True", "True"]
        assert len(list((tmp_path / "out" / "cache" / "finetune").glob("*.pt"))) == 1
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_trial_killed_mid_finetune_resumes_from_its_epoch_checkpoint(tmp_path, digits_checkpoint, ray_shutdown):
    slow = {"lr": {"low": 0.001, "high": 0.01, "log": True}}
    path = sweep_config(
        tmp_path,
        digits_checkpoint,
        num_samples=1,
        max_concurrent=1,
        space=slow,
        finetune={"epochs": 4, "batch_size": 4},
    )
    config = load_config(path)
    ray.init(num_cpus=2, include_dashboard=False)
    box = {}
    tracker = SweepTracker(config)

    def sweep() -> None:
        stage = run_stage_one(config, tracker, load_experiment(config, device="cpu"), progress=False)
        box.update(outcome=run_sweep(config, tracker, stage, progress=False))

    thread = threading.Thread(target=sweep)
    thread.start()
    run = wait_for(lambda: _running_with_epoch(tracker), timeout=300)
    killed = int(run.data.tags[PID_TAG])
    os.kill(killed, signal.SIGKILL)
    thread.join(timeout=600)
    assert box["outcome"].complete
    [done] = trial_runs(tracker, "FINISHED")
    epochs = [m.value for m in tracker.client.get_metric_history(done.info.run_id, "epoch")]
    assert epochs.count(1.0) == 1 and max(epochs) == 4  # carried on from the checkpoint, not from scratch
    assert int(done.data.tags[PID_TAG]) != killed
    assert_in_study(optuna_study(config), done)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"search": {"sampler": "grid"}}, "search.sampler must be one of"),
        ({"search": {"space": {}}, "alpha": {"searched": False}}, "nothing to search"),
        ({"search": {"space": {"lr": {"low": 0.1, "high": 0.01}}}}, "low \\(0.1\\) must be < high"),
        ({"search": {"space": {"alpha": {"low": 0.0, "high": 1.0, "step": 0.3}}}}, "search.space.alpha is gone"),
        ({"modules": {"choice": "named", "name": "layer2.1.conv2"}}, "not a candidate module of small_cnn"),
        ({"search": {"num_samples": 0}}, "num_samples must be >= 1"),
    ],
)
def test_bad_configs_are_refused_before_ray_starts(tmp_path, digits_checkpoint, capsys, override, message):
    path = write_digits_config(tmp_path, digits_checkpoint, **override)
    assert cli.main(["sweep", "--config", str(path)]) == 2
    assert not ray.is_initialized()
    import re

    assert re.search(message, capsys.readouterr().err)


def _running_with_epoch(tracker):
    for run in trial_runs(tracker, "RUNNING"):
        # Epoch 2 reported: epoch 1's checkpoint is registered for sure (its MLflow line may precede that).
        if PID_TAG in run.data.tags and run.data.metrics.get("epoch", 0) >= 2:
            return run
    return None


def test_mrc_then_sweep_in_the_same_folder_carries_on_from_the_mrc_cache(tmp_path, digits_checkpoint, capsys):
    path = sweep_config(tmp_path, digits_checkpoint, num_samples=1, max_concurrent=1, finetune={"epochs": 1})
    try:
        assert cli.main(["mrc", "--config", str(path)]) == 0  # stage 1 alone, as the README's command table offers
        capsys.readouterr()
        assert cli.main(["sweep", "--config", str(path)]) == 0  # the natural next command: no --resume needed
    finally:
        ray.shutdown()
    assert "MRC: 0 module(s) scored, 5 from the cache" in capsys.readouterr().out
    other = write_digits_config(tmp_path, digits_checkpoint, attack={"eps": 0.2})  # the same folder, another config
    assert cli.main(["mrc", "--config", str(other)]) == 2
    assert "differs from the one the sweep" in capsys.readouterr().err
