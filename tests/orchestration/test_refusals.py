"""Bad input to `rift-sweep sweep`: refused in one line, within seconds, before Ray starts (what only the cluster can
tell, its GPUs, is refused with the Ray it started shut down again), and an existing sweep's folder is left byte for
byte as it was."""

import hashlib
import signal
import time

import pytest
import ray
import torch

from rift_sweep import cli
from rift_sweep.core.models.architectures import build_model

from conftest import trial_runs, write_digits_config

pytestmark = pytest.mark.slow  # one small sweep for the "folder holds a sweep" cases

SPACE = {"lr": {"low": 0.001, "high": 0.1, "log": True}}


def snapshot(folder):
    """Every file's bytes under `folder` (hashed), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits_checkpoint):
    """A finished 2-trial sweep, its config and its folder."""
    folder = tmp_path_factory.mktemp("finished")
    path = write_digits_config(
        folder, digits_checkpoint, search={"space": SPACE, "num_samples": 2}, finetune={"epochs": 1}
    )
    try:
        assert cli.main(["sweep", "--config", str(path)]) == 0
    finally:
        ray.shutdown()
    return path, folder / "out"


def refuse(args, capsys, match):
    start = time.monotonic()
    assert cli.main(["sweep", *args]) == 2
    seconds = time.monotonic() - start
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    assert match in err, err
    assert not ray.is_initialized()
    assert seconds < 15, seconds
    return err


def test_a_refused_command_leaves_a_finished_sweep_untouched(finished, tmp_path, capsys):
    path, out = finished
    before = snapshot(out)
    refuse(["--config", str(path)], capsys, "a sweep already exists")
    refuse(["--config", str(path), "--resume", "--num-samples", "1"], capsys, "can only grow")
    refuse(["--config", str(path), "--resume", "--set", "attack.eps=0.2"], capsys, "was started with, in attack")
    other = write_digits_config(tmp_path, tmp_path / "x.pt", name="another")
    refuse(["--config", str(other), "--output", str(out), "--resume"], capsys, "holds the sweep 'digits-test'")
    refuse(["--config", str(path), "--resume", "--tracking-uri", "http://127.0.0.1:9"], capsys, "no MLflow server")
    assert snapshot(out) == before


def _truncated(tmp_path, checkpoint):
    data = checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.pt"


def _malicious(tmp_path, _):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"state_dict": Payload()}, tmp_path / "evil.pt")  # loading it fully would call print()
    return tmp_path / "evil.pt"


def _wrong_architecture(tmp_path, _):
    torch.save(build_model("resnet18", num_classes=10, in_channels=1).state_dict(), tmp_path / "r18.pt")
    return tmp_path / "r18.pt"


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda tmp, _: tmp / "nothing.pt", "nothing.pt"),
        (_truncated, "could not be read"),
        (_malicious, "refuses"),
        (_wrong_architecture, "does not fit SmallCNN"),
    ],
)
def test_bad_checkpoints(tmp_path, digits_checkpoint, capsys, make, match):
    path = write_digits_config(tmp_path, make(tmp_path, digits_checkpoint))
    refuse(["--config", str(path)], capsys, match)
    assert not (tmp_path / "out").exists()  # nothing written


def _damaged_gz(tmp_path):
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (folder / f"{stem}.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    return folder


@pytest.mark.parametrize(
    "overrides,args,match",
    [
        ({"data": {"dataset": "fashion-mnist", "root": "EMPTY"}}, [], "fashion-mnist data not found"),
        ({"data": {"dataset": "fashion-mnist", "root": "DAMAGED"}}, [], "damaged gzip"),
        ({"data": {"split_seed": 1}}, [], "validation would overlap"),
        ({}, ["--resume"], "no sweep to resume"),
        ({}, ["--tracking-uri", "http://127.0.0.1:9"], "no MLflow server answers"),
        ({}, ["--tracking-uri", "ftp://x/y"], "unknown scheme 'ftp'"),
        ({}, ["--address", "127.0.0.1:9"], "no Ray cluster answers"),
        ({}, ["--gpus", "1"], "--gpus 1: this Ray cluster has 0 GPU(s) and no autoscaler"),
        ({"device": "cuda"}, [], "device: cuda, but this Ray cluster has no GPU"),
        ({"search": {"objectives": ["std_acc", "rob_acc", "ood_acc"]}, "ood": {"enabled": False}}, [], "ood.enabled"),
        ({"name": "it's"}, [], "may hold only letters"),
        ({}, ["--output", "FILE"], "is a file"),
    ],
)
def test_bad_inputs_are_one_line_before_anything_runs(tmp_path, digits_checkpoint, capsys, overrides, args, match):
    if torch.cuda.is_available() and ("--gpus" in args or overrides.get("device") == "cuda"):
        pytest.skip("this machine has a GPU")
    (tmp_path / "EMPTY").mkdir()
    _damaged_gz(tmp_path).rename(tmp_path / "DAMAGED")
    (tmp_path / "FILE").write_text("not a folder")
    data, checkpoint = overrides.get("data", {}), digits_checkpoint
    if data.get("root") in ("EMPTY", "DAMAGED"):  # a checkpoint that records no split: the data is read next
        overrides = {**overrides, "data": {**data, "root": str(tmp_path / data["root"])}}
        checkpoint = tmp_path / "plain.pt"
        torch.save(build_model("small_cnn", num_classes=10, in_channels=1).state_dict(), checkpoint)
    args = [str(tmp_path / a) if a == "FILE" else a for a in args]
    path = write_digits_config(tmp_path, checkpoint, **overrides)
    refuse(["--config", str(path), *args], capsys, match)
    assert not (tmp_path / "out").exists()


def test_resume_with_more_samples_extends_a_finished_sweep(finished, capsys):
    from rift_sweep.config import load_config
    from rift_sweep.orchestration.sweep import tune_paths
    from rift_sweep.orchestration.tracking import SweepTracker

    from conftest import assert_in_study, optuna_study

    path, out = finished
    try:
        assert cli.main(["sweep", "--config", str(path), "--resume", "--num-samples", "3"]) == 0
    finally:
        ray.shutdown()
    config = load_config(out / "sweep_config.yaml")
    assert config.search.num_samples == 3  # the sweep's own config now says 3
    assert [p.name for p in tune_paths(config)] == ["sweep", "sweep-2"]
    tracker = SweepTracker(config)
    runs = trial_runs(tracker, "FINISHED")
    assert len(runs) == 3 and len({r.data.tags["rift_sweep.trial_id"] for r in runs}) == 3
    study = optuna_study(config)  # the new experiment's study holds the old trials too: it started from them
    for run in runs:
        assert_in_study(study, run)
    assert tracker.client.get_run(tracker.parent_run_id).info.status == "FINISHED"


def test_sigterm_ends_the_parent_killed_and_resume_finishes(tmp_path, digits_checkpoint):
    import subprocess
    import sys

    from rift_sweep.config import load_config
    from rift_sweep.orchestration.tracking import SweepTracker

    from conftest import finished_children, wait_for

    path = write_digits_config(
        tmp_path,
        digits_checkpoint,
        search={"space": SPACE, "num_samples": 3, "max_concurrent": 1},
        finetune={"epochs": 2},
    )
    config = load_config(path)
    command = [sys.executable, "-m", "rift_sweep.cli", "sweep", "--config", str(path)]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: finished_children(config) >= 1, timeout=300)
    driver.send_signal(signal.SIGTERM)  # as a scheduler or `kill` would
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 3, output[-2000:]
    assert "--resume" in output
    tracker = SweepTracker(config)
    assert tracker.client.get_run(tracker.parent_run_id).info.status == "KILLED"
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert finished_children(config) == 3
    assert tracker.client.get_run(tracker.parent_run_id).info.status == "FINISHED"
