"""Models in: checkpoints this team did not train, loaded through the config's three forms and checked at load."""

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rift_sweep import cli
from rift_sweep.config import load_config
from rift_sweep.core.errors import InputError
from rift_sweep.procedure.experiment import experiment_modules, load_experiment, skipped_modules

from conftest import write_digits_config
from helpers import outside_archive, outside_file

FOOLBOX = "foolbox==3.3.4"


@pytest.fixture(scope="module")
def foolbox_cifar10(tmp_path_factory):
    """foolbox's 20 real CIFAR-10 test images, written in the official pickle layout (train and test alike)."""
    images, labels = [], []
    with zipfile.ZipFile(outside_archive(FOOLBOX)) as wheel:
        for name in sorted(n for n in wheel.namelist() if n.startswith("foolbox/data/cifar10_")):
            with Image.open(io.BytesIO(wheel.read(name))) as image:
                images.append(np.asarray(image.convert("RGB")).transpose(2, 0, 1).reshape(-1))
            labels.append(int(name.rsplit("_", 1)[1].split(".")[0]))  # cifar10_<index>_<label>.png
    assert len(images) == 20
    root = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    root.mkdir()
    batch = {b"data": np.stack(images).astype(np.uint8), b"labels": labels}
    for file in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        with open(root / file, "wb") as handle:
            pickle.dump(batch, handle)
    return root.parent


def pyautoattack_config(tmp_path, cifar_root, normalization):
    raw = {
        "name": "pyautoattack",
        "device": "cpu",
        "data": {"dataset": "cifar10", "root": str(cifar_root), "val_size": 20},
        "model": {
            "name": "resnet18",
            "normalization": normalization,
            "checkpoint": str(outside_file("pyautoattack==0.2.0", "pyautoattack/examples/model_test.pt")),
        },
        "ood": {"enabled": False},
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_a_checkpoint_trained_on_raw_input_is_right_with_none_and_refused_with_dataset(tmp_path, foolbox_cifar10):
    exp = load_experiment(pyautoattack_config(tmp_path, foolbox_cifar10, "none"), "cpu", check=True)
    assert exp.evaluate(exp.at_state, "test").std.value == 100.0  # 20 of foolbox's 20 test images
    with pytest.raises(InputError, match="set model.normalization: none") as refused:
        load_experiment(pyautoattack_config(tmp_path, foolbox_cifar10, "dataset"), "cpu", check=True)
    assert "\n" not in str(refused.value)


LENET_TUPLE = """
import torch
from torch import nn

class TwoHeads(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out, out.softmax(1)

class Probabilities(TwoHeads):
    def forward(self, x):
        return self.fc(x.flatten(1)).softmax(1)

class WithUnusedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.sub_block1 = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Linear(4, 4))  # never called, as in TRADES
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))
"""


@pytest.mark.parametrize(
    "model,message",
    [
        ({"name": "small_cnn", "target": "nets.py:TwoHeads"}, "give exactly one of name"),
        ({"target": "missing_module_xyz:Net"}, "does not import"),
        ({"target": "nets.py:Nothing"}, "has no class or function 'Nothing'"),
        ({"target": "nets.py:TwoHeads"}, "not one logits tensor"),
        ({"target": "nets.py:Probabilities"}, "returns probabilities"),
        ({"target": "nets.py:TwoHeads", "kwargs": {"width": 3}}, "model.kwargs do not fit"),
        ({"robustbench": "Carmon2019Unlabelled"}, "close: Carmon2019Unlabeled"),
    ],
)
def test_bad_models_are_one_line_errors_before_compute(tmp_path, digits_checkpoint, capsys, model, message):
    (tmp_path / "nets.py").write_text(LENET_TUPLE)
    checkpoint = tmp_path / "weights.pt"
    if "target" in model and "name" not in model:
        try:
            from rift_sweep.core.models.custom import import_target

            torch.save(
                import_target(str(tmp_path / model["target"]))(**model.get("kwargs", {})).state_dict(), checkpoint
            )
        except Exception:  # noqa: BLE001 - the command itself must report it
            torch.save({}, checkpoint)
    data = {"dataset": "cifar10"} if "robustbench" in model else {}
    path = write_digits_config(tmp_path, checkpoint, model={**model, "name": model.get("name")}, data=data)
    raw = yaml.safe_load(path.read_text())
    raw["model"] = {k: v for k, v in raw["model"].items() if v is not None}
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["rift", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_modules_that_never_run_are_skipped_not_candidates(tmp_path):
    (tmp_path / "nets.py").write_text(LENET_TUPLE)
    raw = {"name": "t", "data": {"dataset": "digits"}, "model": {"target": "nets.py:WithUnusedBlock"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "c.yaml")
    from rift_sweep.core.data.datasets import dataset_info
    from rift_sweep.procedure.experiment import build_architecture

    model = build_architecture(config, dataset_info("digits"))
    assert experiment_modules(config, model) == ["conv", "fc"]
    assert skipped_modules(config, model) == ["sub_block1.0", "sub_block1.1"]
    assert set(model.state_dict()) == {
        "conv.weight",
        "conv.bias",
        "sub_block1.0.weight",
        "sub_block1.0.bias",
        "sub_block1.1.weight",
        "sub_block1.1.bias",
        "fc.weight",
        "fc.bias",
    }
