"""`rift-sweep export`'s two forms, each loaded in a fresh process exactly as the README shows, for every kind of
model in: a built-in architecture (normalised input), the user's own class (with and without normalisation) and a
RobustBench entry (normalised, with its wrapper's extra keys). Each must predict what the sweep's own model predicts,
image for image."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from rift_sweep.config import load_config
from rift_sweep.core.data.datasets import dataset_info, load_splits
from rift_sweep.core.models.checkpoints import save_checkpoint
from rift_sweep.orchestration.export import write_export
from rift_sweep.procedure.experiment import build_architecture, load_at_model, model_normalization

OWN_CLASS = '''
from torch import nn


class Net(nn.Module):
    """A user's own class: no normalisation inside."""

    def __init__(self, width=16):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.head = nn.Linear(width * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.conv(x).relu().flatten(1))
'''

# What the README tells a user to write, for each form (IMAGES: float in [0, 1], N x C x H x W).
PROGRAM = """
model = torch.export.load(PT2).module()  # exported in eval mode
"""
BUILT_IN = """
from rift_sweep.core.models.architectures import build_model
norm = json.load(open(SIDECAR))["normalization"]
model = build_model(NAME, num_classes=10, in_channels=CHANNELS, **(norm or {}))
model.load_state_dict(torch.load(PT, weights_only=True))
model.eval()
"""
YOUR_CLASS = """
import importlib.util
spec = importlib.util.spec_from_file_location("user_net", CODE)
user = importlib.util.module_from_spec(spec); spec.loader.exec_module(user)
net = user.Net()
net.load_state_dict(torch.load(PT, weights_only=True))
norm = json.load(open(SIDECAR))["normalization"]
model = torch.nn.Sequential(torchvision.transforms.Normalize(**norm), net) if norm else net
model.eval()
"""
ROBUSTBENCH = """
from rift_sweep.core.models.robustbench import build_robustbench
from rift_sweep.core.models.checkpoints import load_weights
model = build_robustbench(NAME, "cifar10")
load_weights(model, PT)
model.eval()
"""


def model_config(tmp_path, form: str) -> dict:
    if form == "built-in":
        return {"data": {"dataset": "digits", "val_size": 300}, "model": {"name": "small_cnn"}}
    if form.startswith("own class"):
        (tmp_path / "net.py").write_text(OWN_CLASS)
        normalization = {"mean": [0.3], "std": [0.4]} if "normalised" in form else "none"
        model = {"target": str(tmp_path / "net.py") + ":Net", "normalization": normalization}
        return {"data": {"dataset": "digits", "val_size": 300}, "model": model}
    return {"data": {"dataset": "cifar10", "root": str(tmp_path)}, "model": {"robustbench": "Wong2020Fast"}}


@pytest.mark.parametrize(
    "form,snippet",
    [
        ("built-in", BUILT_IN),
        ("own class, normalised", YOUR_CLASS),
        ("own class, raw pixels", YOUR_CLASS),
        ("robustbench", ROBUSTBENCH),
    ],
)
def test_each_export_form_loads_as_the_readme_shows_and_predicts_as_the_sweep(tmp_path, form, snippet):
    raw = {"name": "export-test", "output_dir": str(tmp_path / "out"), **model_config(tmp_path, form)}
    info = dataset_info(raw["data"]["dataset"])
    torch.manual_seed(0)
    original = build_architecture(load_config(_write(tmp_path, raw)), info)
    save_checkpoint(tmp_path / "at.pt", original)
    raw["model"]["checkpoint"] = str(tmp_path / "at.pt")
    config = load_config(_write(tmp_path, raw))
    network = load_at_model(config, info)  # stands for any model of the sweep: its architecture and weights
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # not the checkpoint's weights any more
    out = tmp_path / "better.pt"
    write_export(config, network, out)
    mean, std = model_normalization(config, info)
    normalised = any(m != 0 for m in mean) or any(s != 1 for s in std)
    (tmp_path / "better.pt.json").write_text(
        json.dumps({"normalization": {"mean": list(mean), "std": list(std)} if normalised else None})
    )
    images = _images(info, tmp_path)
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        expected = network.eval()(images).argmax(1)
    for name, code in (("program", PROGRAM), ("state dict", snippet)):
        assert torch.equal(_fresh_process_predictions(tmp_path, code, config), expected), f"{form}: {name}"


def _images(info, tmp_path) -> torch.Tensor:
    if info.name == "digits":
        return load_splits("digits", val_size=300).test.x[:64].float() / 255
    return torch.rand(16, *info.image_shape, generator=torch.Generator().manual_seed(0))


def _fresh_process_predictions(tmp_path, code: str, config) -> torch.Tensor:
    script = (
        textwrap.dedent(
            f"""
        import json, torch, torchvision
        PT, PT2, SIDECAR = {str(tmp_path / "better.pt")!r}, {str(tmp_path / "better.pt2")!r}, {str(tmp_path / "better.pt.json")!r}
        CODE, NAME = {str(tmp_path / "net.py")!r}, {config.model.name or config.model.robustbench!r}
        CHANNELS = {dataset_info(config.data.dataset).image_shape[0]}
        """
        )
        + textwrap.dedent(code)
        + textwrap.dedent(
            f"""
        images = torch.load({str(tmp_path / "images.pt")!r}, weights_only=True)
        with torch.no_grad():
            torch.save(model(images).argmax(1), {str(tmp_path / "predicted.pt")!r})
        """
        )
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "predicted.pt", weights_only=True)


def _write(tmp_path, raw: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
