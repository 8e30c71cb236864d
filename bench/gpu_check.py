"""One prepared run on a lent GPU: the CUDA tests, then the figures that set the project's GPU defaults.

    PYTHONPATH=. python bench/gpu_check.py [--budget-s 450] [--sections NAME ...] [--device cuda]
    PYTHONPATH=. python bench/gpu_check.py --dry-run [--tests]      # every section at tiny sizes, in seconds

Every figure is one line, `figure: value unit (details)`, printed as soon as it is measured (flushed, so a run cut
short still shows what it got) and written to $OUT/gpu_check.txt when OUT is set; the CUDA tests' whole output
goes to $OUT/pytest_gpu.txt. Sections, in the order they run:

  env       torch, CUDA, cuDNN and driver versions, the device, native bf16, CPUs
  tests     `pytest -m gpu` on the test files that hold CUDA tests (tests/core, tests/procedure, tests/bench)
  share     trials sharing one GPU: 1, 2 and 4 processes each doing the same fine-tune + PGD work; total images/s
  pgd       PGD-10 images/s, ours (perturb, robust_correct) against torchattacks, ResNet-18 and WRN-34-10
  finetune  one fine-tuning epoch of one module over 45,000 images, batch 128
  mrc       MRC seconds per module and per ascent epoch on 10,000 adversarial images, extrapolated to every module
  alpha     one α point: clean + PGD-10 robust accuracy on 10,000 images, fp32 and AMP

Peak GPU memory is printed per workload, the total wall time last. Before each section, one whose estimate would
take the run past --budget-s is skipped with a line saying why. On one H200 the estimates add up to 7 minutes.

Data are random CIFAR-shaped images (3x32x32) and models are random-init: no data set or checkpoint travels.
Where early stopping makes the cost depend on the model (robust_correct, the α point), the labels are the model's
own clean predictions (every image starts clean-correct) and the gradient passes spent per image are printed.

Imports only torch and rift_sweep.core (the GPU machine has no Ray, Optuna or MLflow), plus torchattacks and
pyautoattack when present: pure-Python wheels put in bench/wheels/ are added to sys.path (bench/README.md says how).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import queue
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

from rift_sweep.core.data.datasets import Split
from rift_sweep.core.devices import cuda_report
from rift_sweep.core.finetune import FinetuneSettings, finetune_module
from rift_sweep.core.models.architectures import build_model, on_device
from rift_sweep.core.mrc import MRCSettings, candidate_modules, get_module, module_robust_criticality
from rift_sweep.core.robustness.attacks import PGD, AdversarialSet, AttackCost, amp_dtype_for, image_batches
from rift_sweep.core.robustness.evaluate import evaluate_examples, loss_and_accuracy

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "bench" / "wheels"  # carried pure-Python wheels (torchattacks, pyautoattack); never committed
LOG_FILE, PYTEST_LOG_FILE = "gpu_check.txt", "pytest_gpu.txt"
GPU_TEST_DIRS = ("tests/core", "tests/procedure", "tests/bench")

EPS, STEP, STEPS = 8 / 255, 2 / 255, 10  # PGD-10, ℓ∞, random start: the paper's attack
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
NUM_CLASSES = 10
CROP_PADDING = 4
BUDGET_S = 450.0  # default --budget-s: leaves a rerun's worth of the session's 15 device minutes
TESTS_TIMEOUT_S = 150.0
SHARE_TIMEOUT_S = 150.0  # per process count: start-up (spawn, import, CUDA context) + warm-up + work
SECTIONS = ("env", "tests", "share", "pgd", "finetune", "mrc", "alpha")


@dataclass(frozen=True)
class Setting:
    label: str
    channels_last: bool
    amp: bool


FP32 = Setting("fp32 contiguous", channels_last=False, amp=False)
FP32_CL = Setting("fp32 channels-last", channels_last=True, amp=False)
AMP_CL = Setting("AMP channels-last", channels_last=True, amp=True)


@dataclass(frozen=True)
class Sizes:
    """Every workload's size: FULL on the H200, DRY for --dry-run."""

    image: tuple[int, int, int]
    pgd: tuple[tuple[str, int, Setting], ...]  # (model, batch, setting) rows
    repeats: int
    model: str  # MRC, fine-tune, α point and the processes sharing the GPU
    module: str  # the module fine-tuned
    mrc_modules: tuple[str, ...]  # an early conv, a middle conv, the classifier
    mrc_images: int
    mrc_epochs: int
    mrc_batch: int
    finetune_images: int
    finetune_val: int
    finetune_batch: int
    alpha_images: int
    alpha_batch: int
    share_counts: tuple[int, ...]
    share_finetune_batches: int
    share_pgd_batches: int
    share_pgd_batch: int
    estimates: dict[str, float] = field(default_factory=dict)  # seconds per section, for the budget guard


FULL = Sizes(
    image=(3, 32, 32),
    pgd=(
        *(("resnet18", batch, setting) for batch in (128, 512) for setting in (FP32, FP32_CL, AMP_CL)),
        ("wrn34_10", 512, FP32_CL),
        ("wrn34_10", 512, AMP_CL),
    ),
    repeats=3,
    model="resnet18",
    module="layer2.1.conv2",
    mrc_modules=("conv1", "layer2.1.conv2", "linear"),
    mrc_images=10_000,
    mrc_epochs=2,
    mrc_batch=512,  # the paper configs' mrc.batch_size
    finetune_images=45_000,
    finetune_val=1_000,
    finetune_batch=128,
    alpha_images=10_000,
    alpha_batch=512,  # the paper configs' eval_batch_size
    share_counts=(1, 2, 4),
    share_finetune_batches=300,
    share_pgd_batches=8,
    share_pgd_batch=512,
    estimates={"env": 10, "tests": 120, "share": 100, "pgd": 90, "finetune": 30, "mrc": 40, "alpha": 30},
)
DRY = Sizes(
    image=(3, 16, 16),
    pgd=(*(("small_cnn", 8, s) for s in (FP32, FP32_CL, AMP_CL)), *(("small_cnn", 16, s) for s in (FP32_CL, AMP_CL))),
    repeats=1,
    model="small_cnn",
    module="conv2",
    mrc_modules=("conv1", "conv2", "fc2"),
    mrc_images=64,
    mrc_epochs=2,
    mrc_batch=32,
    finetune_images=256,
    finetune_val=64,
    finetune_batch=32,
    alpha_images=64,
    alpha_batch=32,
    share_counts=(1, 2),
    share_finetune_batches=2,
    share_pgd_batches=1,
    share_pgd_batch=8,
    estimates={"env": 1, "tests": 120, "share": 20, "pgd": 5, "finetune": 3, "mrc": 3, "alpha": 3},
)


# --- output ---------------------------------------------------------------------------------------------------


class Report:
    """Prints `figure: value (details)` lines at once, and keeps them in $OUT when set."""

    def __init__(self, out: str | None) -> None:
        self.out = Path(out) if out else None
        self.start = time.perf_counter()
        self.file = open(self.out / LOG_FILE, "w") if self.out else None  # kept open for the whole run

    def line(self, figure: str, value: str, details: str = "") -> None:
        text = f"{figure}: {value}" + (f" ({details})" if details else "")
        print(text, flush=True)
        if self.file:
            self.file.write(text + "\n")
            self.file.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class Run:
    device: torch.device
    sizes: Sizes
    report: Report
    dry: bool


# --- shared helpers: timing, memory, models, data ----------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(wall seconds, result) of one call, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each function over `repeats` rounds, one call of each per round, so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device)[0])
    return {name: statistics.median(values) for name, values in times.items()}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def peak_text(device: torch.device) -> str:
    gib = peak_gib(device)
    return f"peak GPU memory {gib:.2f} GiB" if gib is not None else "no GPU memory on the cpu"


def model_on(name: str, device: torch.device, channels_last: bool = True) -> nn.Module:
    """A random-init CIFAR model in eval mode, placed as the project places models (core.models.architectures.on_device)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES, in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD)
    return (on_device(model, device) if channels_last else model.to(device)).eval()


def random_split(n: int, image: tuple[int, int, int], seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *image), dtype=torch.uint8, generator=generator)
    return Split(x, torch.randint(0, NUM_CLASSES, (n,), generator=generator))


def own_labels(model: nn.Module, split: Split, batch: int, device: torch.device) -> Split:
    """The split relabelled with the model's clean predictions: every image starts clean-correct."""
    with torch.no_grad():
        predicted = [model(x).argmax(dim=1).cpu() for x, _ in image_batches(split.x, split.y, batch, device)]
    return Split(split.x, torch.cat(predicted))


def carried_wheels() -> list[str]:
    return sorted(str(wheel) for wheel in WHEELS.glob("*.whl"))


def optional_module(name: str) -> ModuleType | None:
    """`name` imported from the environment or a carried wheel (a wheel is a zip: importable as is); None if absent."""
    for wheel in carried_wheels():
        if wheel not in sys.path:
            sys.path.insert(0, wheel)
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def count(n: int) -> str:
    return f"{n:,}"


# --- sections -----------------------------------------------------------------------------------------------------


def section_env(run: Run) -> None:
    report, device, cuda = run.report, run.device, cuda_report()
    report.line(
        "torch",
        cuda.torch_version,
        f"CUDA {cuda.torch_cuda}, cuDNN {cuda.cudnn}, Python {platform.python_version()}",
    )
    driver_cuda = f"supports CUDA up to {cuda.driver_cuda}" if cuda.driver_cuda else ""
    report.line("driver", cuda.driver or nvidia_smi_driver(), driver_cuda)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report.line(
            "device",
            torch.cuda.get_device_name(device),
            f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
            f"compute capability {props.major}.{props.minor}, {cuda.devices} visible",
        )
        report.line(
            "bf16 native",
            "yes" if cuda.bf16_native else "no",
            f"AMP attacks run {amp_dtype_for(device)}; is_bf16_supported() counting emulation: "
            f"{torch.cuda.is_bf16_supported()}",
        )
        report.line(
            "TF32",
            f"cuDNN {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, "
            f"matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}",
            f"torch defaults; cudnn.benchmark {torch.backends.cudnn.benchmark}",
        )
    else:
        report.line("device", str(device), f"figures are for the CPU; {cuda.problem() or 'CUDA not asked for'}")
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    report.line(
        "CPUs", str(os.cpu_count()), f"{affinity} usable by this process, torch threads {torch.get_num_threads()}"
    )
    extras = []
    for name in ("torchattacks", "pyautoattack"):
        module = optional_module(name)
        where = "" if module is None else (" from bench/wheels" if ".whl" in (module.__file__ or "") else "")
        extras.append(f"{name} {getattr(module, '__version__', 'present') if module else 'absent'}{where}")
    report.line("extras", ", ".join(extras), f"{len(carried_wheels())} wheel(s) in bench/wheels")


def nvidia_smi_driver() -> str:
    """The driver version by nvidia-smi, where /proc/driver/nvidia/version is missing (e.g. under gVisor)."""
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0]
    return "none found (no /proc/driver/nvidia/version, no nvidia-smi)"


def section_tests(run: Run) -> None:
    files = gpu_test_files()
    if not files:  # pytest without files would run the whole suite
        run.report.line("CUDA tests", "none found", f"no test file under {', '.join(GPU_TEST_DIRS)} marks a test gpu")
        return
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rfEs", *files]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), *carried_wheels(), os.environ.get("PYTHONPATH")) if p),
    }
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TESTS_TIMEOUT_S, check=False
        )
        output, status = done.stdout + done.stderr, f"exit {done.returncode}"
    except subprocess.TimeoutExpired as err:
        output = "".join(
            p.decode(errors="replace") if isinstance(p, bytes) else p or "" for p in (err.stdout, err.stderr)
        )
        status = f"killed after {TESTS_TIMEOUT_S:.0f} s"
    if run.report.out:
        (run.report.out / PYTEST_LOG_FILE).write_text(output)
    summaries = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|deselected|error).*?)\s*=*$", output, re.MULTILINE)
    summary = summaries[-1] if summaries else "no summary line"
    run.report.line("CUDA tests", summary, f"pytest -m gpu on {len(files)} files, {status}")
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    short = [name.split("::")[-1] for name in failed]
    run.report.line("CUDA tests failed", ", ".join(short) if short else "none", f"{len(short)}; see {PYTEST_LOG_FILE}")


def gpu_test_files() -> list[str]:
    """Test files under GPU_TEST_DIRS that mark tests `gpu` (only those: other folders import Ray or MLflow)."""
    found = []
    for folder in GPU_TEST_DIRS:
        for path in sorted((ROOT / folder).glob("test_*.py")):
            if "mark.gpu" in path.read_text():
                found.append(str(path.relative_to(ROOT)))
    return found


def section_share(run: Run) -> None:
    """Throughput of N processes on one GPU, each fine-tuning and attacking as a sweep trial does."""
    sizes = run.sizes
    finetune_images = sizes.share_finetune_batches * sizes.finetune_batch
    pgd_images = sizes.share_pgd_batches * sizes.share_pgd_batch
    first = sizes.share_counts[0]
    throughput: dict[int, float] = {}
    for processes, (wall, peaks) in run_processes(run).items():
        throughput[processes] = processes * (finetune_images + pgd_images) / wall
        peak = f"peak GPU memory {max(peaks):.2f} GiB per process" if None not in peaks else "no GPU memory on the cpu"
        run.report.line(
            f"trials sharing one GPU, {processes} process{'es' if processes > 1 else ''}",
            f"{throughput[processes]:.0f} images/s",
            f"{throughput[processes] / throughput[first]:.2f}x {first} process; each: fine-tune {sizes.module} on "
            f"{count(finetune_images)} images (batch {sizes.finetune_batch}) + PGD-10 on {count(pgd_images)} (batch "
            f"{sizes.share_pgd_batch}), {sizes.model}; wall {wall:.1f} s; {peak}",
        )
    best = max(throughput, key=throughput.get)
    run.report.line(
        "trials sharing one GPU, best",
        f"{best} process{'es' if best > 1 else ''}",
        f"{throughput[best] / throughput[first]:.2f}x the throughput of {first}",
    )


def run_processes(run: Run) -> dict[int, tuple[float, list[float | None]]]:
    """For each count N: wall seconds from the common start to the last of N processes' ends, and each one's peak
    GPU memory (GiB). The largest count of processes starts once; round N sets the first N to work together."""
    counts = run.sizes.share_counts
    context = mp.get_context("spawn")
    starts, messages = [context.Event() for _ in counts], context.Queue()
    workers = [
        context.Process(target=share_worker, args=(rank, run.sizes, str(run.device), starts, messages), daemon=True)
        for rank in range(max(counts))
    ]
    for worker in workers:
        worker.start()
    rounds = {}
    try:
        collect(messages, workers, len(workers), "ready")  # every process built its model and warmed up
        for start, processes in zip(starts, counts):
            start.set()
            done = collect(messages, workers, processes, "done")
            begins, ends, peaks = zip(*((begin, end, peak) for *_, begin, end, peak in done))
            rounds[processes] = (max(ends) - min(begins), list(peaks))
    finally:
        for start in starts:  # a process still waiting for a start leaves
            start.set()
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    return rounds


def collect(messages: Any, workers: list[Any], expected: int, kind: str) -> list[tuple]:
    """`expected` messages of `kind`; raises at once if a worker fails or dies, or after SHARE_TIMEOUT_S."""
    deadline, got = time.monotonic() + SHARE_TIMEOUT_S, []
    while len(got) < expected:
        try:
            message = messages.get(timeout=1)
        except queue.Empty:
            dead = [worker.exitcode for worker in workers if worker.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a sharing process died (exit code {dead[0]}) before it was {kind}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{expected - len(got)} sharing process(es) not {kind} after {SHARE_TIMEOUT_S:.0f} s"
                ) from None
            continue
        if message[0] == "error":
            raise RuntimeError(f"sharing process {message[1]} failed:\n{message[2]}")
        got.append(message)
    return got


def share_worker(rank: int, sizes: Sizes, device_name: str, starts: list[Any], messages: Any) -> None:
    """One trial-like process: warm up, then in each round it takes part in, fine-tune one epoch and attack."""
    try:
        device = torch.device(device_name)
        model = model_on(sizes.model, device)
        train = random_split(sizes.share_finetune_batches * sizes.finetune_batch, sizes.image, seed=10 + rank)
        val = random_split(sizes.finetune_batch, sizes.image, seed=20 + rank)
        attacked = random_split(sizes.share_pgd_batches * sizes.share_pgd_batch, sizes.image, seed=30 + rank)
        settings = FinetuneSettings(epochs=1, batch_size=sizes.finetune_batch)

        def work(train: Split, attacked: Split, pgd: PGD) -> None:
            finetune_module(
                model, sizes.module, train, val, settings, augment="crop_flip", crop_padding=CROP_PADDING, device=device
            )
            generator = torch.Generator().manual_seed(rank)
            for x, y in image_batches(attacked.x, attacked.y, sizes.share_pgd_batch, device):
                pgd.perturb(model, x, y, generator=generator)
            sync(device)

        first = slice(0, sizes.finetune_batch)
        work(Split(train.x[first], train.y[first]), Split(attacked.x[first], attacked.y[first]), PGD(EPS, STEP, 1))
        messages.put(("ready", rank))
        for start, processes in zip(starts, sizes.share_counts):
            if not start.wait(timeout=SHARE_TIMEOUT_S):
                return
            if rank >= processes:
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            begin = time.monotonic()  # a system-wide clock: comparable across processes
            work(train, attacked, PGD(EPS, STEP, STEPS))
            messages.put(("done", rank, begin, time.monotonic(), peak_gib(device)))
    except BaseException:
        messages.put(("error", rank, traceback.format_exc()))


def section_pgd(run: Run) -> None:
    torchattacks = optional_module("torchattacks")
    for name, batch, setting in run.sizes.pgd:
        reset_peak(run.device)
        pgd_row(run, torchattacks, name, batch, setting)
    reset_peak(run.device)


def pgd_row(run: Run, torchattacks: ModuleType | None, name: str, batch: int, setting: Setting) -> None:
    """Ours (perturb; robust_correct) and torchattacks' PGD-10 on one model, batch and setting, interleaved."""
    device, repeats = run.device, run.sizes.repeats
    model = model_on(name, device, setting.channels_last)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *run.sizes.image, generator=generator).to(device)  # NCHW, as image_batches yields it
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
    with torch.no_grad():
        own = model(x).argmax(dim=1)
    ours, cost = PGD(EPS, STEP, STEPS), AttackCost()
    calls = {
        "perturb": lambda: ours.perturb(model, x, y, generator=generator, amp=setting.amp),
        "robust_correct": lambda: ours.robust_correct(model, x, own, generator=generator, amp=setting.amp, cost=cost),
    }
    warm_ups = [lambda: PGD(EPS, STEP, 1).perturb(model, x, y, generator=generator, amp=setting.amp)]
    if torchattacks is not None:
        dtype = amp_dtype_for(device) if setting.amp else None  # ours autocasts to this (None off CUDA): so do theirs
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        theirs = torchattacks.PGD(model, eps=EPS, alpha=STEP, steps=STEPS, random_start=True)
        theirs_warm = torchattacks.PGD(model, eps=EPS, alpha=STEP, steps=1, random_start=True)
        calls["torchattacks"] = lambda: attack_under(autocast, theirs, x, y)
        warm_ups.append(lambda: attack_under(autocast, theirs_warm, x, y))
    for warm_up in warm_ups:  # kernels, cuDNN's choices and the allocator, at a tenth of the cost
        warm_up()
    rate = {key: batch / seconds for key, seconds in interleaved(calls, device, repeats).items()}

    def versus(key: str) -> str:
        if torchattacks is None:
            return "torchattacks absent: no ratio (put its wheel in bench/wheels)"
        theirs = rate["torchattacks"]
        return f"torchattacks {theirs:.0f} images/s, ours/torchattacks {rate[key] / theirs:.2f}"

    label = f"PGD-10 {name} batch {batch} {setting.label}"
    amp_note = "" if device.type == "cuda" else "; AMP applies on CUDA only"
    run.report.line(
        f"{label}, ours perturb",
        f"{rate['perturb']:.0f} images/s",
        f"{versus('perturb')}; {peak_text(device)}{amp_note}",
    )
    run.report.line(
        f"{label}, ours robust_correct",
        f"{rate['robust_correct']:.0f} images/s",
        f"{versus('robust_correct')}; early stop spent {cost.gradient_evals / (batch * repeats):.1f} gradient passes "
        f"per image of {STEPS}, labels the model's own predictions{amp_note}",
    )


def attack_under(autocast: Any, attack: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with autocast:
        return attack(x, y)


def section_finetune(run: Run) -> None:
    sizes, device = run.sizes, run.device
    model = model_on(sizes.model, device)
    train = random_split(sizes.finetune_images, sizes.image, seed=1)
    val = random_split(sizes.finetune_val, sizes.image, seed=2)
    settings = FinetuneSettings(epochs=1, batch_size=sizes.finetune_batch)

    def one_epoch(train: Split) -> None:
        finetune_module(
            model, sizes.module, train, val, settings, augment="crop_flip", crop_padding=CROP_PADDING, device=device
        )

    warm = slice(0, 4 * sizes.finetune_batch)
    one_epoch(Split(train.x[warm], train.y[warm]))
    reset_peak(device)
    seconds, _ = timed(lambda: one_epoch(train), device)
    run.report.line(
        f"fine-tune 1 epoch {sizes.model} {sizes.module}",
        f"{seconds:.1f} s",
        f"{sizes.finetune_images / seconds:.0f} images/s over {count(sizes.finetune_images)} images, batch "
        f"{sizes.finetune_batch}, crop_flip on the device, fp32 channels-last, validation accuracy on "
        f"{count(sizes.finetune_val)} included; {peak_text(device)}",
    )


def section_mrc(run: Run) -> None:
    sizes, device, report = run.sizes, run.device, run.report
    model = model_on(sizes.model, device)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(sizes.mrc_images, *sizes.image, generator=generator)
    adversarial = AdversarialSet(x, torch.randint(0, NUM_CLASSES, (sizes.mrc_images,), generator=generator))
    # The reference variant runs every epoch (the paper's stops at its first projection): a cost that does not
    # depend on where the random model's projection falls.
    settings = MRCSettings(epochs=sizes.mrc_epochs, batch_size=sizes.mrc_batch, variant="reference")

    def baseline_of(data: AdversarialSet) -> tuple[float, float]:
        return loss_and_accuracy(model, data.x, data.y, batch_size=sizes.mrc_batch, device=device)

    def score(module: str, data: AdversarialSet, baseline: tuple[float, float], settings: MRCSettings) -> Any:
        return module_robust_criticality(model, module, data, settings, device=device, seed=0, baseline=baseline)

    few = AdversarialSet(x[: sizes.mrc_batch], adversarial.y[: sizes.mrc_batch])
    score(sizes.mrc_modules[0], few, baseline_of(few), MRCSettings(epochs=1, batch_size=sizes.mrc_batch))  # warm-up
    reset_peak(device)
    baseline_seconds, baseline = timed(lambda: baseline_of(adversarial), device)
    report.line(
        "MRC baseline loss pass",
        f"{baseline_seconds:.2f} s",
        f"{count(sizes.mrc_images)} images held on the CPU; once per MRC stage",
    )
    per_epoch: dict[str, float] = {}
    for module in sizes.mrc_modules:
        seconds, result = timed(lambda module=module: score(module, adversarial, baseline, settings), device)
        per_epoch[module] = seconds / result.epochs_run
        report.line(
            f"MRC {sizes.model} {module}",
            f"{seconds:.1f} s per module",
            f"{per_epoch[module]:.2f} s per ascent epoch with its loss pass, {result.epochs_run} epochs of the "
            f"reference variant; {count(sizes.mrc_images)} images held on the CPU as the MRC pool ships them, "
            f"batch {sizes.mrc_batch}; {peak_text(device)}",
        )
    middle = sizes.mrc_modules[len(sizes.mrc_modules) // 2]
    on_device_set = adversarial.to(device)
    seconds, result = timed(lambda: score(middle, on_device_set, baseline, settings), device)
    report.line(
        f"MRC {sizes.model} {middle}, set on the device",
        f"{seconds:.1f} s per module",
        f"{seconds / result.epochs_run / per_epoch[middle]:.2f}x the time with the set on the CPU; {peak_text(device)}",
    )
    report.line(f"MRC {sizes.model}, all modules", *extrapolate_mrc(model, per_epoch, baseline_seconds))


def extrapolate_mrc(model: nn.Module, per_epoch: dict[str, float], baseline_seconds: float) -> tuple[str, str]:
    """Every candidate module at the mean timed per-epoch cost of its kind (conv, linear) x the default epochs."""
    epochs = MRCSettings().epochs
    kinds = {name: type(get_module(model, name)) for name in candidate_modules(model)}
    timed_kinds: dict[type, list[float]] = {}
    for name, seconds in per_epoch.items():
        timed_kinds.setdefault(kinds[name], []).append(seconds)
    overall = statistics.mean(per_epoch.values())
    total = baseline_seconds + sum(
        epochs * statistics.mean(timed_kinds.get(kind, [overall])) for kind in kinds.values()
    )
    per_kind = ", ".join(f"{kind.__name__} {statistics.mean(v):.2f} s" for kind, v in timed_kinds.items())
    details = (
        f"{len(kinds)} modules x {epochs} epochs at the timed per-epoch cost of their kind ({per_kind}) + the "
        f"baseline; the reference variant's cost, which the paper variant's early stop only lowers"
    )
    return f"{total:.0f} s extrapolated", details


def section_alpha(run: Run) -> None:
    sizes, device = run.sizes, run.device
    model = model_on(sizes.model, device)
    images = own_labels(model, random_split(sizes.alpha_images, sizes.image, seed=3), sizes.alpha_batch, device)
    pgd = PGD(EPS, STEP, STEPS)
    for amp in (False, True):
        few = Split(images.x[: sizes.alpha_batch], images.y[: sizes.alpha_batch])
        evaluate_examples(model, few, pgd=pgd, batch_size=sizes.alpha_batch, device=device, amp=amp)  # warm-up
        reset_peak(device)
        cost = AttackCost()
        seconds, examples = timed(
            lambda amp=amp, cost=cost: evaluate_examples(
                model, images, pgd=pgd, batch_size=sizes.alpha_batch, device=device, amp=amp, cost=cost
            ),
            device,
        )
        run.report.line(
            f"α point {sizes.model} {'AMP' if amp else 'fp32'}",
            f"{seconds:.1f} s",
            f"clean + PGD-10 robust accuracy on {count(sizes.alpha_images)} images, {sizes.alpha_images / seconds:.0f} "
            f"images/s, batch {sizes.alpha_batch}; clean {100 * examples.clean.mean():.0f} %, robust "
            f"{100 * examples.robust.mean():.0f} %; early stop spent "
            f"{cost.gradient_evals / sizes.alpha_images:.1f} gradient passes per image of {STEPS}, labels the "
            f"model's own predictions; {peak_text(device)}"
            + ("" if device.type == "cuda" else "; AMP applies on CUDA only"),
        )


SECTION_FUNCTIONS: dict[str, Callable[[Run], None]] = {
    "env": section_env,
    "tests": section_tests,
    "share": section_share,
    "pgd": section_pgd,
    "finetune": section_finetune,
    "mrc": section_mrc,
    "alpha": section_alpha,
}


# --- main -------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every section at tiny sizes, in seconds")
    parser.add_argument("--tests", action="store_true", help="with --dry-run: run the tests section too")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="NAME", help=" ".join(SECTIONS)
    )
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="skip a section that would end past this")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here (use --device cpu, e.g. with --dry-run)")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)

    run = Run(device, DRY if args.dry_run else FULL, Report(os.environ.get("OUT")), args.dry_run)
    ran, skipped, failed = [], [], []
    for name in (s for s in SECTIONS if s in args.sections):
        estimate = run.sizes.estimates[name]
        if name == "tests" and args.dry_run and not args.tests:
            run.report.line("skipped tests", "not run", "dry run: add --tests to run pytest -m gpu")
            skipped.append(name)
            continue
        if run.report.elapsed() + estimate > args.budget_s:
            run.report.line(
                f"skipped {name}",
                "not run",
                f"elapsed {run.report.elapsed():.0f} s + its estimate {estimate:.0f} s > budget {args.budget_s:.0f} s",
            )
            skipped.append(name)
            continue
        reset_peak(device)
        start = time.perf_counter()
        try:
            SECTION_FUNCTIONS[name](run)
            ran.append(name)
        except Exception as err:  # one broken section must not cost the others' figures
            failed.append(name)
            traceback.print_exc()
            run.report.line(f"failed {name}", type(err).__name__, str(err).strip().splitlines()[-1][:300])
        run.report.line(f"section {name}", f"{time.perf_counter() - start:.1f} s", f"estimate {estimate:.0f} s")
    run.report.line(
        "total wall time",
        f"{run.report.elapsed():.1f} s",
        f"budget {args.budget_s:.0f} s; ran {' '.join(ran) or '-'}; skipped {' '.join(skipped) or '-'}; "
        f"failed {' '.join(failed) or '-'}; {'dry run' if args.dry_run else 'full sizes'} on {device}",
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
