"""How far the paper's fine-tune moves a module, against the 10 % ball in which MRC looks for its worst case.

    OMP_NUM_THREADS=1 .venv/bin/python bench/finetune_distance.py [--config search_spaces/demo.yaml] [--val 5000]
                                                                  [--modules feature_extractor.conv1 classifier.fc2]

Prints every module's MRC (the config's mrc settings, on --val validation images), then, for each module named,
‖θ_FT − θ_AT‖ / ‖θ_AT‖ per weight after the config's fine-tune on the whole training carve per epoch (α = 1; θ_α
sits at α times that distance). ~45 min of one CPU core for the demo's model at the defaults.
"""

from __future__ import annotations

import argparse
import time

from rift_sweep.config import load_config
from rift_sweep.core.finetune import tuned_parameters
from rift_sweep.procedure.experiment import experiment_modules, load_experiment
from rift_sweep.procedure.steps import finetune, score_modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/demo.yaml")
    parser.add_argument("--val", type=int, default=5000)
    parser.add_argument("--modules", nargs="+", default=["feature_extractor.conv1", "classifier.fc2"])
    args = parser.parse_args()
    config = load_config(
        args.config, assignments=[f"data.val_subset={args.val}", "data.train_subset=null", "device=cpu"]
    )
    exp = load_experiment(config)
    start = time.perf_counter()
    for result in score_modules(exp, experiment_modules(config, exp.model), progress=False):
        print(f"MRC {result.module} {result.mrc:.4f}", flush=True)
    for module in args.modules:
        tuned = finetune(exp, module, config.finetune).best_state
        for key in tuned_parameters(exp.model, module):  # the weight MRC perturbs, too
            weight = exp.at_state[key].float()
            distance = (tuned[key].float() - weight).norm() / weight.norm()
            print(f"{key}: ‖Δθ‖/‖θ‖ = {distance:.3f} after the fine-tune", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
