"""The core is plain PyTorch: importing it must not pull in Ray or MLflow."""

import subprocess
import sys

CORE = ["data", "corruptions", "models", "attacks", "evaluate", "mrc", "finetune", "interpolate", "selection",
        "adversarial_training", "config", "experiment", "rift"]


def test_core_imports_neither_ray_nor_mlflow():
    code = (
        "import sys\n"
        + "".join(f"import rift_sweep.{m}\n" for m in CORE)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))\n"
        + "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
