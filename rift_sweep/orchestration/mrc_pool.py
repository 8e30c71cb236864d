"""Stage 1 at scale: Ray actors score every candidate module's MRC in parallel.

- One actor per GPU (else per CPU slot), sized at run time; impossible requests fail at once.
- θ_AT and the adversarial validation set are built ONCE and shared through the object store.
- Modules are handed out one at a time, most expensive first (earliest in the network: its gradient
  back-propagates through the most layers), so uneven modules balance across actors.
- Every result is written at once to a Parquet table keyed by the inputs, so a rerun or an interrupted
  stage computes only the missing modules. An actor (or node) that dies mid-module has the module
  retried on another actor, a bounded number of times.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from tqdm.auto import tqdm

from rift_sweep.config import SweepConfig
from rift_sweep.core.data import DatasetInfo
from rift_sweep.core.evaluate import loss_and_accuracy
from rift_sweep.core.files import atomic_write, content_key
from rift_sweep.core.mrc import module_robust_criticality
from rift_sweep.orchestration.resources import WorkerShape, worker_shape
from rift_sweep.procedure.experiment import (
    Experiment,
    build_adversarial_set,
    cache_dir,
    experiment_modules,
    load_at_model,
    load_experiment,
    mrc_source,
    resolve_device,
    skipped_modules,
)

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3  # per module; actor deaths beyond this abort the stage
REPLACEMENT_WAIT_S = 30.0  # how long to wait for resources when every actor has died

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


@ray.remote(max_restarts=0)
class MRCWorker:
    """Holds the AT model and the shared adversarial set; scores one module per call."""

    def __init__(self, config: SweepConfig, info: DatasetInfo, at_state: dict, adversarial) -> None:
        self.config, self.device = config, resolve_device(config.device)
        self.model = load_at_model(config, info, at_state, self.device)
        self.adversarial = adversarial
        self.baseline = loss_and_accuracy(
            self.model, adversarial.x, adversarial.y, batch_size=config.mrc.batch_size, device=self.device
        )
        context = ray.get_runtime_context()
        self.node, self.actor = context.get_node_id()[:12], context.get_actor_id()[:12]

    def score(self, module: str) -> dict:
        result = module_robust_criticality(
            self.model,
            module,
            self.adversarial,
            self.config.mrc,
            device=self.device,
            seed=self.config.seed,
            baseline=self.baseline,
        )
        return {**dataclasses.asdict(result), "node": self.node, "actor": self.actor, "pid": os.getpid()}


@ray.remote(max_retries=3)
def _adversarial_set_task(config: SweepConfig, info: DatasetInfo, at_state: dict, val):
    device = resolve_device(config.device)
    return build_adversarial_set(config, load_at_model(config, info, at_state, device), val, device).to("cpu")


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
    config: SweepConfig, *, workers: int | None = None, progress: bool = True, exp: Experiment | None = None
) -> MRCStage:
    """Score every candidate module (Ray must be initialised), reusing cached results."""
    start = time.perf_counter()
    exp = exp or load_experiment(config, device="cpu")  # the driver only reads weights and data
    modules = experiment_modules(config, exp.model)
    path = mrc_cache_path(config, exp)
    table = read_table(path)  # may hold modules outside today's include/exclude: they are kept
    done = {r["module"] for r in table}
    todo = [m for m in modules if m not in done]  # model order: most expensive first
    retries = Counter()
    if todo:
        shape = worker_shape(workers)
        log.info("MRC: %d module(s) to score (%d cached) on %s", len(todo), len(modules) - len(todo), shape.describe)
        at_state = ray.put(exp.at_state)
        adversarial = _adversarial_set_task.options(num_cpus=shape.num_cpus, num_gpus=shape.num_gpus).remote(
            config, exp.splits.info, at_state, exp.splits.val
        )
        spawn = lambda: MRCWorker.options(num_cpus=shape.num_cpus, num_gpus=shape.num_gpus).remote(  # noqa: E731
            config, exp.splits.info, at_state, adversarial
        )
        for row in _score_dynamically(todo, spawn, shape, retries, progress):
            table.append({**row, "key": path.stem})
            write_table(path, table)
    rows = sorted((r for r in table if r["module"] in modules), key=lambda r: r["mrc"])
    skipped = skipped_modules(config, exp.model)
    return MRCStage(rows, todo, sum(retries.values()), path, skipped, time.perf_counter() - start)


def _score_dynamically(modules: list[str], spawn, shape: WorkerShape, retries: Counter, progress: bool):
    """Yield result rows as they arrive, keeping every live actor busy with one module at a time.

    `retries` counts, per module, the attempts lost to a dead worker.
    """
    pending = deque(modules)
    idle = [spawn() for _ in range(min(shape.count, len(modules)))]
    in_flight: dict = {}
    bar = tqdm(total=len(modules), desc="MRC", unit="module", disable=not progress)
    try:
        while pending or in_flight:
            while pending and idle:
                actor, module = idle.pop(), pending.popleft()
                in_flight[actor.score.remote(module)] = (module, actor)
            if not in_flight:
                idle.append(_replacement(spawn, shape, wait_s=REPLACEMENT_WAIT_S))
                continue
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            module, actor = in_flight.pop(ref)
            try:
                row = ray.get(ref)
            except (RayActorError, ActorUnavailableError) as exc:
                retries[module] += 1
                if retries[module] >= MAX_ATTEMPTS:
                    raise RuntimeError(f"module {module} lost its worker {retries[module]} times; giving up") from exc
                log.warning("worker died while scoring %s (%s); retrying it elsewhere", module, type(exc).__name__)
                pending.appendleft(module)
                ray.kill(actor)
                if _resources_free(shape):
                    idle.append(spawn())
                continue
            idle.append(actor)
            bar.update()
            bar.set_postfix_str(f"{module}: {row['mrc']:.4f}")
            yield row
    finally:
        bar.close()
        for actor in idle + [a for _, a in in_flight.values()]:
            ray.kill(actor)


def _resources_free(shape: WorkerShape) -> bool:
    free = ray.available_resources()
    return free.get("CPU", 0) >= shape.num_cpus and free.get("GPU", 0) >= shape.num_gpus


def _replacement(spawn, shape: WorkerShape, wait_s: float):
    """A new actor once the cluster has room for one; an error if it never does."""
    deadline = time.monotonic() + wait_s
    while not _resources_free(shape):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"every MRC worker died and the cluster has no room for a new one "
                f"({shape.describe}; free: {ray.available_resources()})"
            )
        time.sleep(0.5)
    return spawn()
