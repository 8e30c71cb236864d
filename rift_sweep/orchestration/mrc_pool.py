"""Stage 1 at scale: the AT model on validation, then Ray actors score every candidate module's MRC in parallel.

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
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm.auto import tqdm

from rift_sweep.config import SweepConfig
from rift_sweep.core.files import atomic_write, content_key
from rift_sweep.core.mrc import MRCResult
from rift_sweep.orchestration.front import stage_at
from rift_sweep.orchestration.resources import worker_shape
from rift_sweep.orchestration.tracking import SweepTracker
from rift_sweep.orchestration.workers import ScoredOn, Shipped, WorkerPool
from rift_sweep.presentation.tables import describe_at
from rift_sweep.procedure.experiment import (
    Experiment,
    cache_dir,
    experiment_modules,
    load_experiment,
    mrc_source,
    skipped_modules,
)
from rift_sweep.procedure.records import AlphaPoint
from rift_sweep.procedure.steps import choose_modules

log = logging.getLogger(__name__)
ADVERSARIAL_SET = "adversarial set"  # the pool job that builds it
TABLE_KEY = "key"  # the table's own content key, on every row
_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64()}
# A row: the module's MRCResult, where it was computed, the table's key.
SCHEMA = pa.schema(
    [(name, _ARROW[kind]) for cls in (MRCResult, ScoredOn) for name, kind in typing.get_type_hints(cls).items()]
    + [(TABLE_KEY, pa.string())]
)


@dataclass
class MRCStage:
    results: list[MRCResult]  # every candidate module, ranked lowest MRC first
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


def read_table(path: Path) -> list[MRCResult]:
    rows = pq.read_table(path).to_pylist() if path.exists() else []
    return [MRCResult(**{f.name: row[f.name] for f in dataclasses.fields(MRCResult)}) for row in rows]


def _append_row(path: Path, result: MRCResult, where: ScoredOn) -> None:
    """The table with one more module, written whole and atomically: an interrupted stage loses no finished module."""
    rows = pq.read_table(path).to_pylist() if path.exists() else []
    rows.append({**dataclasses.asdict(result), **dataclasses.asdict(where), TABLE_KEY: path.stem})
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
    done = {r.module for r in table}
    todo = [m for m in modules if m not in done]  # model order: most expensive first
    if todo:
        with contextlib.nullcontext(pool) if pool else stage_pool(config, exp, workers) as pool:
            log.info("MRC: %d module(s) to score (%d cached) on %s", len(todo), len(done), pool.shape.describe)
            for result, where in _score(pool, todo, progress):
                table.append(result)
                _append_row(path, result, where)
    results = sorted((r for r in table if r.module in modules), key=lambda r: r.mrc)
    retries = sum(pool.retries[m] for m in todo) if todo else 0
    skipped = skipped_modules(config, exp.model)
    return MRCStage(
        results=results,
        computed=todo,
        retries=retries,
        table_path=path,
        skipped=skipped,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class StageOne:
    """What stage 1 leaves the search: the AT model on validation, the MRC table, the module(s) to fine-tune, and the
    experiment as shipped to the workers (the trials get it from the object store)."""

    at: AlphaPoint
    mrc: MRCStage
    modules: list[str]
    shipped: Shipped


def run_stage_one(
    config: SweepConfig, tracker: SweepTracker, exp: Experiment, *, workers: int | None = None, progress: bool = True
) -> StageOne:
    """The AT model on validation (measured once per sweep), then MRC of every candidate module (cached, resumable),
    on one pool of workers; the chosen module(s) and the table logged on the sweep's run. `rift-sweep mrc` and
    `rift-sweep sweep` both run exactly this."""
    with stage_pool(config, exp, workers) as pool:  # stage 1's workers, ended with it
        at = stage_at(tracker, exp, pool, "val")
        if progress:
            print(describe_at(at.scores), flush=True)
        stage = run_mrc_stage(config, progress=progress, exp=exp, pool=pool)
    modules = choose_modules([r.module for r in stage.results], config.modules)
    if progress:
        cached = len(stage.results) - len(stage.computed)
        print(f"MRC: {len(stage.computed)} module(s) scored, {cached} from the cache; fine-tuning {', '.join(modules)}")
        if stage.skipped:
            print(f"never run in a forward pass, so not scored: {', '.join(stage.skipped)}", flush=True)
    tracker.log_mrc(stage.results, modules, stage.table_path)
    return StageOne(at, stage, modules, Shipped(pool.data))  # the experiment stage 1 shipped, validation OOD included


def stage_pool(config: SweepConfig, exp: Experiment, workers: int | None = None) -> WorkerPool:
    """Stage 1's workers: one per GPU, else per CPU slot (`workers` overrides the count), the experiment shipped."""
    return WorkerPool(config, ray.put(exp.portable("val")), worker_shape(config.device, workers))


def _score(pool: WorkerPool, modules: list[str], progress: bool) -> Iterator[tuple[MRCResult, ScoredOn]]:
    """The adversarial set built once, on one worker, and held by every worker on its device; then one module per
    call to whichever worker is free, most expensive first (earliest in the network: its gradient back-propagates
    through the most layers), so uneven modules balance."""
    [(_, adversarial)] = pool.run([ADVERSARIAL_SET], lambda actor, _: actor.adversarial_set.remote())
    shared = ray.put(adversarial)
    pool.prepare(lambda actor: actor.use_adversarial_set.remote(shared))
    with tqdm(total=len(modules), desc="MRC", unit="module", disable=None if progress else True) as bar:
        for module, (result, where) in pool.run(modules, lambda actor, module: actor.score.remote(module)):
            bar.update()
            bar.set_postfix_str(f"{module}: {result.mrc:.4f}")
            yield result, where
