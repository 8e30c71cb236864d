"""The processes that compute, each bound to one device for its whole life (devices.bind_worker).

A `WorkerPool` holds one `DeviceWorker` actor per GPU (else per CPU slot) for one stage: stage 1 (the AT model's
validation metrics, the adversarial set, MRC) or the front (chunks of test images, AutoAttack). It hands out jobs
one at a time to whichever actor is free, so uneven jobs balance; an actor that dies (its node lost) is replaced
and its job retried elsewhere, a bounded number of times; every actor ends with the stage, so no idle process keeps
a GPU's memory. Tune's trial actors get the same binding through `worker_experiment`.

The driver ships the experiment once through the object store (`ExperimentData`: splits, θ_AT, OOD sets);
workers never read the dataset or generate corruptions themselves.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError

from rift_sweep.config import SweepConfig
from rift_sweep.core.mrc import MRCResult, module_robust_criticality
from rift_sweep.core.robustness.attacks import AdversarialSet
from rift_sweep.core.robustness.evaluate import loss_and_accuracy
from rift_sweep.orchestration.devices import bind_worker, gpu_job
from rift_sweep.orchestration.resources import WorkerShape
from rift_sweep.procedure.experiment import Experiment, ExperimentData
from rift_sweep.procedure.finetune_cache import spec_state
from rift_sweep.procedure.records import Examples

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3  # per job; worker deaths beyond this abort the stage
REPLACEMENT_WAIT_S = 30.0  # how long to wait for resources when every worker has died
STARTUP_WAIT_S = 600.0  # how long to wait, with no job running, for a worker to start (a GPU node booting)


@dataclass(frozen=True)
class ScoredOn:
    """Where a module's MRC was computed (kept beside it in the MRC table, to debug a cluster)."""

    node: str
    actor: str
    pid: int


@ray.remote(max_restarts=0)
class DeviceWorker:
    """The experiment on this worker's device; one job per call."""

    def __init__(self, config: SweepConfig, data: ExperimentData) -> None:
        with gpu_job("worker start"):  # logged: the tests tell a pool's workers apart by when they started
            self.exp = data.experiment(config, bind_worker())
        context = ray.get_runtime_context()
        self.node, self.actor = context.get_node_id()[:12], context.get_actor_id()[:12]
        self.adversarial: AdversarialSet | None = None
        self.baseline: tuple[float, float] | None = None

    def adversarial_set(self) -> AdversarialSet:
        """PGD examples against θ_AT on MRC's validation subset (on the CPU, to ship)."""
        with gpu_job("adversarial set"):
            return self.exp.adversarial_val

    def use_adversarial_set(self, adversarial: AdversarialSet) -> None:
        """Keep MRC's fixed set on this device (moved once, not per batch) with θ_AT's loss and accuracy on it."""
        self.adversarial = adversarial.to(self.exp.device)
        model = self.exp.load_state(self.exp.at_state)
        self.baseline = loss_and_accuracy(
            model,
            self.adversarial.x,
            self.adversarial.y,
            batch_size=self.exp.config.mrc.batch_size,
            device=self.exp.device,
        )

    def score(self, module: str) -> tuple[MRCResult, ScoredOn]:
        """MRC of one module (after `use_adversarial_set`), with where it ran."""
        config = self.exp.config
        with gpu_job(f"mrc {module}"):
            result = module_robust_criticality(
                self.exp.load_state(self.exp.at_state),
                module,
                self.adversarial,
                config.mrc,
                device=self.exp.device,
                seed=config.seed,
                baseline=self.baseline,
            )
        return result, ScoredOn(self.node, self.actor, os.getpid())

    def examples(
        self, spec: tuple[str, float] | None, split: str, chunk: int, chunks: int
    ) -> tuple[Examples, dict[str, float]]:
        """Per-example correctness of one model (spec: fine-tune key and α; None: θ_AT) with robustness measured on
        the `chunk`-th of `chunks` contiguous parts of `split` (see robust_examples(among=...)); with the first chunk
        also its OOD accuracy per corruption."""
        config = self.exp.config
        with gpu_job(f"{split} chunk {chunk}/{chunks}"):
            state = spec_state(config, self.exp.at_state, spec)
            n = len(getattr(self.exp.splits, split))
            runs = config.attack.test_runs if split == "test" else 1
            examples = self.exp.examples(state, split, runs=runs, among=torch.arange(n) * chunks // n == chunk)
            return examples, self.exp.ood_accuracies(state, split) if chunk == 0 else {}

    def autoattack(self, spec: tuple[str, float] | None) -> np.ndarray:
        with gpu_job("autoattack"):
            return self.exp.autoattack(spec_state(self.exp.config, self.exp.at_state, spec), "test")


class WorkerPool:
    """`shape.count` DeviceWorkers of one shape, started on first use and ended on close (or leaving `with`)."""

    def __init__(self, config: SweepConfig, data: ray.ObjectRef, shape: WorkerShape) -> None:
        self.config, self.data, self.shape = config, data, shape
        self.actors: list = []
        self.retries: Counter = Counter()  # per job, the attempts lost to a dead worker
        self._ready: set = set()  # actors whose constructor has finished
        self._prepare: Callable | None = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prepare(self, call: Callable) -> None:
        """`call(actor)` on every worker now and on every worker started later (e.g. to hand it a shared input)."""
        self._prepare = call
        for actor in self.actors:
            call(actor)

    def run(self, jobs: Sequence[Hashable], call: Callable) -> Iterator[tuple[Hashable, object]]:
        """Yield (job, result) as they arrive, keeping every started worker busy with one job (`call(actor, job)`,
        an ObjectRef) at a time. A worker that cannot start (its GPU's node just died) never blocks the others."""
        pending = deque(jobs)
        while len(self.actors) < min(self.shape.count, len(jobs)):
            self._spawn()
        idle = [actor for actor in self.actors if actor in self._ready]
        starting = {actor.__ray_ready__.remote(): actor for actor in self.actors if actor not in self._ready}
        in_flight: dict = {}
        while pending or in_flight:
            while pending and idle:
                actor, job = idle.pop(), pending.popleft()
                in_flight[call(actor, job)] = (job, actor)
            if not in_flight and not starting:
                actor = self._replacement()
                starting[actor.__ray_ready__.remote()] = actor
            done, _ = ray.wait([*in_flight, *starting], num_returns=1, timeout=STARTUP_WAIT_S)
            if not done:
                raise RuntimeError(
                    f"no worker started within {STARTUP_WAIT_S:.0f} s ({self.shape.describe}; free: "
                    f"{ray.available_resources()}); check `ray status`"
                )
            [ref] = done
            if ref in starting:
                actor = starting.pop(ref)
                if self._started(ref, actor):
                    idle.append(actor)
                continue
            job, actor = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except (RayActorError, ActorUnavailableError) as exc:
                self._lost(job, actor, exc)
                pending.appendleft(job)
                if self._resources_free():  # room for a replacement elsewhere (a live node's freed GPU)
                    replacement = self._spawn()
                    starting[replacement.__ray_ready__.remote()] = replacement
                continue
            idle.append(actor)
            yield job, result

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self._ready = [], set()

    def _spawn(self):
        actor = DeviceWorker.options(num_cpus=self.shape.num_cpus, num_gpus=self.shape.num_gpus).remote(
            self.config, self.data
        )
        if self._prepare is not None:
            self._prepare(actor)
        self.actors.append(actor)
        return actor

    def _started(self, ready: ray.ObjectRef, actor) -> bool:
        """Whether `actor` came up; one lost with its node is dropped (an error in its own start-up is raised)."""
        try:
            ray.get(ready)
        except ActorUnavailableError:
            self._drop(actor)
            return False
        except RayActorError as exc:
            if exc.actor_init_failed:
                raise
            self._drop(actor)
            return False
        self._ready.add(actor)
        return True

    def _lost(self, job: Hashable, actor, exc: Exception) -> None:
        self.retries[job] += 1
        if self.retries[job] >= MAX_ATTEMPTS:
            raise RuntimeError(f"{job!r} lost its worker {self.retries[job]} times; giving up") from exc
        log.warning("a worker died during %r (%s); retrying it elsewhere", job, type(exc).__name__)
        self._drop(actor)

    def _drop(self, actor) -> None:
        self.actors.remove(actor)
        self._ready.discard(actor)
        ray.kill(actor)

    def _replacement(self):
        """A new worker once the cluster has room for one; an error if it never does."""
        deadline = time.monotonic() + REPLACEMENT_WAIT_S
        while not self._resources_free():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"every worker died and the cluster has no room for a new one "
                    f"({self.shape.describe}; free: {ray.available_resources()})"
                )
            time.sleep(0.5)
        return self._spawn()

    def _resources_free(self) -> bool:
        free = ray.available_resources()
        return free.get("CPU", 0) >= self.shape.num_cpus and free.get("GPU", 0) >= self.shape.num_gpus


@dataclass(frozen=True)
class Shipped:
    """The experiment's object-store reference, wrapped so that Tune's with_parameters passes the reference to each
    trial instead of the whole data: a trial process that has it already loaded does not fetch it again."""

    ref: ray.ObjectRef


_LOADED: dict[str, Experiment] = {}


def worker_experiment(config: SweepConfig, shipped: Shipped) -> Experiment:
    """The experiment in this Tune trial process, on the device Ray gave it, built once per process: Tune reuses its
    trial actors, and every use loads its state into the working model first (Experiment.load_state), so nothing an
    earlier trial left there leaks into the next."""
    key = repr(config)
    if key not in _LOADED:
        _LOADED.clear()  # one sweep per process at a time: keep only its own
        _LOADED[key] = ray.get(shipped.ref).experiment(config, bind_worker())
    return _LOADED[key]
