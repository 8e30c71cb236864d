"""The sweep's results: every model it evaluated (the AT model once, and every α point of every fine-tune's path),
their Pareto front on validation, the recommended model (the paper's rule over all of them, so it lies on the
front), the front's test-split evaluation, and what is logged: one MLflow run per model, the picture, the tables
and the UI's view.

Every choice uses validation; the test split only reports, paired with the AT model on the same images.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import ray
import torch

from rift_sweep import names
from rift_sweep.config import SweepConfig
from rift_sweep.core.data.datasets import dataset_info
from rift_sweep.core.errors import InputError
from rift_sweep.core.selection import pareto_mask
from rift_sweep.orchestration.resources import worker_shape
from rift_sweep.orchestration.tracking import SweepTracker
from rift_sweep.orchestration.workers import WorkerPool
from rift_sweep.presentation.front_html import write_front_html
from rift_sweep.presentation.plots import front_chart
from rift_sweep.presentation.tables import front_markdown
from rift_sweep.procedure.experiment import Experiment, load_at_model, load_experiment
from rift_sweep.procedure.finetune_cache import load_at, load_finetune, save_at, spec_state
from rift_sweep.procedure.published import Published, write_published
from rift_sweep.procedure.records import AT_KEY, NO_FINETUNE, AlphaPoint, Examples, Front, Model, Trial
from rift_sweep.procedure.steps import rule_pick

AUTOATTACK = "autoattack"  # model_examples' job of a model's AutoAttack run


def model_examples(
    pool: WorkerPool, split: str, specs: dict[str, tuple[str, float] | None], autoattack: Collection[str] = ()
) -> dict[str, tuple[Examples, dict[str, float]]]:
    """Per-example correctness (with AutoAttack for the keys in `autoattack`) and OOD accuracy per corruption of each
    model (spec: (fine-tune key, α); None: the AT model) on `split`, worst of attack.test_runs on test. Each model's
    images are split into one contiguous chunk per worker (`robust_examples(among=...)` gives every image the starts
    it gets in one call), and the pool hands the chunks to whichever worker is free, so every GPU stays busy until
    the last model is done; AutoAttack runs go first, being the longest."""
    chunks = pool.shape.count
    jobs = [(key, AUTOATTACK) for key in autoattack] + [(key, c) for key in specs for c in range(chunks)]

    def call(actor, job):
        key, part = job
        if part == AUTOATTACK:
            return actor.autoattack.remote(specs[key])
        return actor.examples.remote(specs[key], split, part, chunks)

    done = dict(pool.run(jobs, call))
    results = {}
    for key in specs:
        parts = [done[(key, c)] for c in range(chunks)]  # (Examples of the chunk, OOD with the first chunk)
        robust = np.logical_or.reduce([examples.robust for examples, _ in parts])
        aa = done.get((key, AUTOATTACK))
        results[key] = (Examples(parts[0][0].clean, robust, autoattack=aa), parts[0][1])
    return results


def stage_at(tracker: SweepTracker, exp: Experiment, pool: WorkerPool, split: str) -> AlphaPoint:
    """The AT model on a split, measured once per sweep (on `pool`; AutoAttack too on test with attack.final) and
    kept: its per-example results in the cache, its accuracies on the parent run."""
    config = tracker.config
    found = load_at(config, exp.checkpoint_sha256, split)
    if found is None:
        final = [AT_KEY] if split == "test" and config.attack.final == "autoattack" else []
        examples, ood = model_examples(pool, split, {AT_KEY: None}, final)[AT_KEY]
        found = save_at(config, exp.checkpoint_sha256, split, AlphaPoint(0.0, examples.scores(ood), examples))
        tracker.log_at_metrics(split, found.scores.metrics())
    return found


def front_pool(config: SweepConfig, exp: Experiment) -> WorkerPool:
    """The front's workers (one per GPU, else per CPU slot) with the experiment, its test OOD set built here once."""
    return WorkerPool(config, ray.put(exp.portable("test")), worker_shape(config.device))


def publish_front(config: SweepConfig, tracker: SweepTracker, exp: Experiment | None = None) -> Front:
    """Every evaluated model, its front and the recommended model; the front's test evaluation (models evaluated by an
    earlier call keep theirs); a run per model in MLflow, the artifacts and the UI view. `exp`: the driver's."""
    trials = tracker.trials()
    if not trials:
        raise InputError(f"sweep {config.name!r} has no finished trial yet; run `rift-sweep sweep` (or --resume) first")
    exp = exp or load_experiment(config, device="cpu")
    at_val = load_at(config, exp.checkpoint_sha256, "val")
    front = choose(config, evaluated_models(config, trials, at_val), at_val)
    logged = tracker.logged_models()
    front = dataclasses.replace(front, models=[_with_logged_test(m, logged.get(m.key)) for m in front.models])
    untested = [m for m in test_selection(front, config.front.test_models) if m.test is None]
    if untested:
        with front_pool(config, exp) as pool:
            at_test = stage_at(tracker, exp, pool, "test")
            front = _tested(front, untested, pool=pool, at_test=at_test, config=config)
    front = tracker.log_models(front, trials)
    _log_front_artifacts(tracker, front)
    if front.recommended is not None:
        tracker.log_model(front.recommended.run_id, model_of(config, front.recommended))
    write_published(config.output_path, Published(config.name, front, tracker.where()))
    return front


def evaluated_models(config: SweepConfig, trials: list[Trial], at_val: AlphaPoint) -> list[Model]:
    """The AT model, then every α > 0 point of every fine-tune the trials used, once each (a fine-tune reused by
    several trials is one path; its models are credited to the trial that made it)."""
    models = [Model(None, 0.0, at_val.scores)]
    made_first = sorted(trials, key=lambda t: (t.reused, t.trial_id))
    for key in dict.fromkeys(t.finetune.key for t in made_first):
        finetune = next(t.finetune for t in made_first if t.finetune.key == key)
        cached = load_finetune(config, key)
        if cached is None:
            raise InputError(
                f"the fine-tune {key} is not in the cache under {config.output_path}; was the output folder moved "
                f"or cleaned?"
            )
        models += [
            Model(finetune, p.alpha, p.scores, p.examples.versus(at_val.examples)) for p in cached.path if p.alpha > 0
        ]
    return models


def choose(config: SweepConfig, models: list[Model], at_val: AlphaPoint) -> Front:
    """The Pareto front of the objectives over every model, and the rule (alpha.rule) over every model (validation)."""
    objectives = config.search.objectives
    on_front = pareto_mask([[m.val.objective(o) for o in objectives] for m in models])
    pick = rule_pick([(m.val, m.val_versus_at, m.alpha) for m in models], at_val.scores, config.alpha)
    recommended = None if pick is None or models[pick].is_at else models[pick]  # α = 0 is the AT model itself
    keys = frozenset(m.key for m, keep in zip(models, on_front) if keep)
    return Front(
        models=models,
        on_front=keys,
        recommended=recommended,
        objectives=tuple(objectives),
        tolerance=config.alpha.tolerance,
    )


def test_selection(front: Front, limit: int) -> list[Model]:
    """The models evaluated on test: the AT model, the recommended model, and the front's models, at most `limit`
    of the fine-tuned ones: spread evenly along the front by validation clean accuracy when it is longer."""
    tuned = [m for m in front.front if not m.is_at and m != front.recommended]
    room = max(0, limit - (front.recommended is not None))
    if len(tuned) > room:
        tuned = [tuned[round(i * (len(tuned) - 1) / max(1, room - 1))] for i in range(room)] if room else []
    return list({m.key: m for m in [front.at, *([front.recommended] if front.recommended else []), *tuned]}.values())


def _tested(front: Front, untested: list[Model], pool: WorkerPool, at_test: AlphaPoint, config: SweepConfig) -> Front:
    """The models with their test scores and their paired comparison with the AT model on the same images."""
    specs = {m.key: (m.finetune.key, m.alpha) for m in untested if not m.is_at}
    final = [front.recommended.key] if front.recommended and config.attack.final == "autoattack" else []
    found = model_examples(pool, "test", specs, [k for k in final if k in specs])
    found[AT_KEY] = (at_test.examples, at_test.scores.ood_corruptions)

    def tested(model: Model) -> Model:
        if model.key not in found or model.test is not None:
            return model
        examples, ood = found[model.key]
        versus = None if model.is_at else examples.versus(at_test.examples)
        return dataclasses.replace(model, test=examples.scores(ood), test_versus_at=versus)

    models = [tested(m) for m in front.models]
    recommended = next((m for m in models if front.recommended and m.key == front.recommended.key), None)
    return dataclasses.replace(front, models=models, recommended=recommended)


def _with_logged_test(model: Model, logged: Model | None) -> Model:
    """A model with the test results an earlier publication logged (the same model: same key)."""
    if logged is None or logged.test is None:
        return model
    return dataclasses.replace(model, test=logged.test, test_versus_at=logged.test_versus_at)


def model_of(config: SweepConfig, model: Model) -> torch.nn.Module:
    """The network a model stands for: θ_AT, or θ_AT interpolated towards its cached fine-tune at its α."""
    network = load_at_model(config, dataset_info(config.data.dataset))
    spec = None if model.is_at else (model.finetune.key, model.alpha)
    network.load_state_dict(spec_state(config, network.state_dict(), spec))
    return network


def model_table(front: Front) -> pa.Table:
    """Every evaluated model as one flat row: validation and test accuracies with their 95 % bounds, the paired
    changes against the AT model, whether it is on the front, recommended, screened."""
    rows = []
    for m in front.models:
        ft = m.finetune
        rows.append(
            {
                "model": m.key,
                "trial_id": ft.trial_id if ft else None,
                **(ft.params() if ft else NO_FINETUNE),
                names.ALPHA: m.alpha,
                "on_front": m.key in front.on_front,
                names.RECOMMENDED_TAG: front.recommended is not None and m.key == front.recommended.key,
                "screened": m.val.screened,
                **m.val.metrics(),
                **(m.val_versus_at.metrics() if m.val_versus_at else {}),
                **(m.test.metrics(names.TEST_PREFIX) if m.test else {}),
                **(m.test_versus_at.metrics(names.TEST_PREFIX) if m.test_versus_at else {}),
                "run_id": m.run_id,
            }
        )
    return pa.Table.from_pylist(rows)


def _log_front_artifacts(tracker: SweepTracker, front: Front) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        front_chart(front, folder / "front.png")
        write_front_html(front, folder / "front.html")
        (folder / "front.md").write_text(front_markdown(front) + "\n")
        table = model_table(front)
        pq.write_table(table, folder / "models.parquet")
        pyarrow.csv.write_csv(table, folder / "models.csv")
        tracker.log_artifacts(sorted(folder.iterdir()))
