"""A sweep (or stage 1 alone) from start to finish, for the command line and `ray submit`.

Every check runs before anything is started or written (orchestration.preflight). Then Ray, the resolved config,
the MLflow parent run, stage 1, the search and the front. The parent run ends FINISHED, FAILED or KILLED on
every exit path (an exception, Ctrl-C, SIGTERM); only a hard kill leaves it RUNNING, and the next --resume
carries on from there.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import ray

from rift_sweep import names
from rift_sweep.config import SweepConfig, save_resolved_config
from rift_sweep.core.errors import InputError
from rift_sweep.orchestration.front import publish_front
from rift_sweep.orchestration.mrc_pool import StageOne, run_stage_one
from rift_sweep.orchestration.preflight import check_devices, check_sweep
from rift_sweep.orchestration.resources import gpus_requested, init_ray, quiet_dependencies
from rift_sweep.orchestration.sweep import SweepOutcome, run_sweep
from rift_sweep.orchestration.tracking import SweepTracker, user_code_file
from rift_sweep.procedure.experiment import Experiment
from rift_sweep.procedure.records import Front


@dataclass
class SweepResult:
    config: SweepConfig
    modules: list[str]  # the module(s) fine-tuned
    outcome: SweepOutcome
    front: Front | None  # None when the sweep stopped before every trial finished
    where: str  # where to look: artifacts, the UI


def launch_sweep(
    config: SweepConfig,
    *,
    resume: bool = False,
    num_samples: int | None = None,
    workers: int | None = None,
    address: str | None = None,
    gpus: int | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> SweepResult:
    """`num_samples`: the --num-samples the user gave (already in `config`); on --resume it may only grow."""
    config, exp = _checked(config, resume=resume, num_samples=num_samples, address=address)
    quiet_dependencies(verbose)
    with on_cluster(config, address=address, gpus=gpus, verbose=verbose, progress=progress):
        with _parent_run(config) as (tracker, ending):
            stage = run_stage_one(config, tracker, exp, workers=workers, progress=progress)
            outcome = run_sweep(config, tracker, stage, progress=progress, verbose=verbose)
            front = publish_front(config, tracker, exp) if outcome.complete else None
            ending.status = "FINISHED" if front is not None else "KILLED"
            return SweepResult(
                config=config, modules=stage.modules, outcome=outcome, front=front, where=tracker.where()
            )


def launch_mrc(
    config: SweepConfig, *, workers: int | None = None, address: str | None = None, gpus: int | None = None
) -> tuple[StageOne, SweepTracker]:
    """Stage 1 alone, as a sweep runs it (the folder is the sweep's: `rift-sweep sweep` carries on from here)."""
    resume = (config.output_path / names.RESOLVED_CONFIG).is_file()  # stage 1 again on its own folder: from its cache
    config, exp = _checked(config, resume=resume, num_samples=None, address=address)
    with on_cluster(config, address=address, gpus=gpus, verbose=False, progress=True):
        with _parent_run(config) as (tracker, _):  # FINISHED when stage 1 is: a sweep marks it RUNNING again
            return run_stage_one(config, tracker, exp, workers=workers), tracker


def _checked(
    config: SweepConfig, *, resume: bool, num_samples: int | None, address: str | None
) -> tuple[SweepConfig, Experiment]:
    """Every check before Ray is joined (preflight.check_sweep); the folder's own config when it holds the sweep."""
    folder, exp = check_sweep(config, resume=resume, address=address)
    return (_resumable(folder.config, config, num_samples) if folder.exists else config), exp


@dataclass
class _Ending:
    status: str = "FINISHED"


@contextmanager
def _parent_run(config: SweepConfig) -> Iterator[tuple[SweepTracker, _Ending]]:
    """The resolved config written, the sweep's MLflow run RUNNING; it ends FINISHED (or the status the body sets),
    FAILED or KILLED on every exit path (an exception, Ctrl-C, SIGTERM): only a hard kill leaves it RUNNING, and the
    next --resume carries on from there."""
    save_resolved_config(config)
    tracker = SweepTracker(config)
    tracker.start_parent()
    ending = _Ending()
    try:
        with _sigterm_as_interrupt():
            yield tracker, ending
    except KeyboardInterrupt:
        ending.status = "KILLED"
        raise
    except BaseException:
        ending.status = "FAILED"
        raise
    finally:
        tracker.finish_parent(ending.status)


@contextmanager
def on_cluster(config: SweepConfig, *, address: str | None, gpus: int | None, verbose: bool, progress: bool):
    """Ray joined (or started), the --gpus asked of the autoscaler and up (released on exit), and the devices checked
    (devices the config needs are there; torch can use every GPU node's GPUs): all before anything is written."""
    started = not ray.is_initialized()
    init_ray(address, user_code_env(config), verbose=verbose)
    with ExitStack() as stack:
        try:
            stack.enter_context(gpus_requested(gpus))
            nodes = check_devices(config)
        except InputError:
            if started:  # refused: nothing this command started keeps running
                ray.shutdown()
            raise
        for line in nodes if progress else ():
            print(f"GPU node {line}", flush=True)
        yield


def user_code_env(config: SweepConfig) -> dict | None:
    """Ray's runtime_env that ships the user's model file to every actor and trial, on every node."""
    code = user_code_file(config)
    return {"py_modules": [str(code)]} if code else None


def _resumable(saved: SweepConfig, given: SweepConfig, num_samples: int | None) -> SweepConfig:
    """The folder's own config, with the only change a resume may make: more trials (--num-samples N)."""
    differ = [
        f.name
        for f in dataclasses.fields(saved)
        if f.name not in ("source", "search") and getattr(given, f.name) != getattr(saved, f.name)
    ]
    if differ or {**dataclasses.asdict(given.search), "num_samples": 0} != {
        **dataclasses.asdict(saved.search),
        "num_samples": 0,
    }:
        raise InputError(
            f"the config differs from the one the sweep in {saved.output_path} was started with, in "
            f"{', '.join(differ) or 'search'} ({saved.output_path / 'sweep_config.yaml'}); carry it on with the same "
            f"config, or give another --output"
        )
    if num_samples is None:
        return saved
    if num_samples < saved.search.num_samples:
        raise InputError(
            f"--num-samples {num_samples} is fewer than the sweep's {saved.search.num_samples} trials; "
            f"a resumed sweep can only grow (give N >= {saved.search.num_samples})"
        )
    return dataclasses.replace(saved, search=dataclasses.replace(saved.search, num_samples=num_samples))


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the sweep as Ctrl-C does (Tune saves its state; the parent run ends KILLED)."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    except ValueError:  # not the main thread (tests running a sweep in a thread): leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
