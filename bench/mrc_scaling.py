"""Stage 1's wall time with 1 and with N Ray workers: speedup, efficiency (speedup / N) and the share of the
stage spent outside scoring (Ray start-up of actors, the shared adversarial set, transfers, Parquet writes).

    python bench/mrc_scaling.py [--workers N] [--models demo resnet18]

demo: the demo config (its AT checkpoint, Fashion-MNIST). resnet18: ResNet-18 (random init, 21 modules) on the
demo's Fashion-MNIST (1x28x28) with 256 examples, 2 epochs — CIFAR is not available offline; the spread of
per-module costs is what matters here. Each run uses a fresh output folder, so nothing comes from the cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray
import yaml

from rift_sweep.config import load_config
from rift_sweep.core.models.architectures import build_model
from rift_sweep.core.models.checkpoints import save_checkpoint
from rift_sweep.orchestration.mrc_pool import run_mrc_stage

ROOT = Path(__file__).resolve().parents[1]


def resnet_config(folder: Path) -> Path:
    """The demo config with a random-init ResNet-18 (1 input channel) in place of the small CNN."""
    checkpoint = folder / "resnet18.pt"
    save_checkpoint(checkpoint, build_model("resnet18", num_classes=10, in_channels=1))
    raw = yaml.safe_load((ROOT / "search_spaces/demo.yaml").read_text())
    raw["model"] = {"name": "resnet18", "checkpoint": str(checkpoint)}
    raw["mrc"] = {"examples": 256, "epochs": 2, "batch_size": 128, "variant": "reference"}
    raw["attack"]["steps"] = 2
    path = folder / "resnet18.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def stage_seconds(config_path: Path, workers: int, output: Path) -> tuple[float, float, int]:
    config = load_config(config_path, {"output_dir": str(output)})
    start = time.perf_counter()
    stage = run_mrc_stage(config, workers=workers, progress=False)
    return time.perf_counter() - start, sum(r.seconds for r in stage.results), len(stage.results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, help="N (default: every CPU, or every GPU)")
    parser.add_argument("--models", nargs="+", default=["demo", "resnet18"])
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    resources = ray.cluster_resources()
    n = args.workers or int(resources.get("GPU", 0)) or int(resources["CPU"])
    print(f"Ray resources: CPU {resources.get('CPU', 0):g}, GPU {resources.get('GPU', 0):g}; N = {n}\n")
    print("| model | modules | 1 worker (s) | N workers (s) | speedup | efficiency | outside scoring, N workers |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        configs = {"demo": ROOT / "search_spaces/demo.yaml", "resnet18": resnet_config(folder)}
        for name in args.models:
            one, _, count = stage_seconds(configs[name], 1, folder / f"{name}-1")
            many, scoring, _ = stage_seconds(configs[name], n, folder / f"{name}-{n}")
            speedup = one / many
            outside = 1 - scoring / (n * many)
            print(f"| {name} | {count} | {one:.1f} | {many:.1f} | {speedup:.2f} | {speedup / n:.2f} | {outside:.0%} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
