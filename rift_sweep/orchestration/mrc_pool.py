"""Stage 1 at scale: Ray actors score every candidate module's MRC in parallel.

- One actor per GPU (else per CPU slot), sized at run time; impossible requests fail at once (workers.WorkerPool).
- θ_AT and the data are shipped once through the object store; the adversarial validation set is built ONCE, on
  one actor, and every actor keeps it on its device.
- Modules are handed out one at a time, most expensive first (earliest in the network: its gradient
  back-propagates through the most layers), so uneven modules balance across actors.
- Every result is written at once to a Parquet table keyed by the inputs, so a rerun or an interrupted
  stage computes only the missing modules. An actor (or node) that dies mid-module has the module
  retried on another actor, a bounded number of times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm.auto import tqdm

from rift_sweep.config import SweepConfig
from rift_sweep.core.files import atomic_write, content_key
from rift_sweep.orchestration.resources import worker_shape
from rift_sweep.orchestration.workers import WorkerPool
from rift_sweep.procedure.experiment import (
    Experiment,
    cache_dir,
    experiment_modules,
    load_experiment,
    mrc_source,
    skipped_modules,
)

log = logging.getLogger(__name__)
ADVERSARIAL_SET = "adversarial set"  # the pool job that builds it

SCHEMA = pa.schema(
    [
        ("module", pa.string()),
        ("num_params", pa.int64()),
        ("mrc", pa.float64()),
        ("rob_acc_drop", pa.float64()),
        ("relative_norm", pa.float64()),
        ("loss_before", pa.float64()),
        ("loss_after", pa.float64()),
        ("epochs_run", pa.int64()),
        ("seconds", pa.float64()),
        ("node", pa.string()),
        ("actor", pa.string()),
        ("pid", pa.int64()),
        ("key", pa.string()),
    ]
)


@dataclass
class MRCStage:
    rows: list[dict]  # every candidate module, ranked lowest MRC first
    computed: list[str]  # modules scored by this call (the rest came from the cache)
    retries: int  # modules re-run because their worker died
    table_path: Path
    skipped: list[str]  # Conv2d/Linear modules a forward pass never calls: not candidates
    seconds: float


def mrc_cache_path(config: SweepConfig, exp: Experiment) -> Path:
    """The table of one (weights, examples, attack, MRC settings): modules.include/exclude only pick rows of it."""
    source = mrc_source(config, exp.splits.val)
    attack = {k: v for k, v in dataclasses.asdict(config.attack).items() if k not in ("test_runs", "amp")}
    key = content_key(
        {
            "checkpoint": exp.checkpoint_sha256,
            "model": dataclasses.asdict(config.model),
            "seed": config.seed,
            "attack": attack,
            "mrc": dataclasses.asdict(config.mrc),
        },
        source.x,
        source.y,
    )
    return cache_dir(config, "mrc") / f"{key}.parquet"


def read_table(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist() if path.exists() else []


def write_table(path: Path, rows: list[dict]) -> None:
    with atomic_write(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)


def run_mrc_stage(
    config: SweepConfig,
    *,
    workers: int | None = None,
    progress: bool = True,
    exp: Experiment | None = None,
    pool: WorkerPool | None = None,
) -> MRCStage:
    """Score every candidate module (Ray must be initialised), reusing cached results. `pool`: the stage's workers
    (started here, and ended, when not given; `workers` sizes them)."""
    start = time.perf_counter()
    exp = exp or load_experiment(config, device="cpu")  # the driver only reads weights and data
    modules = experiment_modules(config, exp.model)
    path = mrc_cache_path(config, exp)
    table = read_table(path)  # may hold modules outside today's include/exclude: they are kept
    done = {r["module"] for r in table}
    todo = [m for m in modules if m not in done]  # model order: most expensive first
    if todo:
        with contextlib.nullcontext(pool) if pool else stage_pool(config, exp, workers) as pool:
            log.info("MRC: %d module(s) to score (%d cached) on %s", len(todo), len(done), pool.shape.describe)
            for row in _score(pool, todo, progress):
                table.append({**row, "key": path.stem})
                write_table(path, table)
    rows = sorted((r for r in table if r["module"] in modules), key=lambda r: r["mrc"])
    retries = sum(pool.retries[m] for m in todo) if todo else 0
    skipped = skipped_modules(config, exp.model)
    return MRCStage(rows, todo, retries, path, skipped, time.perf_counter() - start)


def stage_pool(config: SweepConfig, exp: Experiment, workers: int | None = None) -> WorkerPool:
    """Stage 1's workers: one per GPU, else per CPU slot (`workers` overrides the count), the experiment shipped."""
    return WorkerPool(config, ray.put(exp.portable("val")), worker_shape(config.device, workers))


def _score(pool: WorkerPool, modules: list[str], progress: bool) -> Iterator[dict]:
    """The adversarial set built once, on one worker, and held by every worker on its device; then one module per
    call to whichever worker is free, most expensive first (earliest in the network: its gradient back-propagates
    through the most layers), so uneven modules balance."""
    [(_, adversarial)] = pool.run([ADVERSARIAL_SET], lambda actor, _: actor.adversarial_set.remote())
    shared = ray.put(adversarial)
    pool.prepare(lambda actor: actor.use_adversarial_set.remote(shared))
    with tqdm(total=len(modules), desc="MRC", unit="module", disable=None if progress else True) as bar:
        for module, row in pool.run(modules, lambda actor, module: actor.score.remote(module)):
            bar.update()
            bar.set_postfix_str(f"{module}: {row['mrc']:.4f}")
            yield row
