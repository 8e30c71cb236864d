"""`rift-sweep` command line: train-at, rift, mrc, sweep, report, export, ui. Parses, calls one function, prints."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from rift_sweep import names
from rift_sweep.core.errors import InputError

if TYPE_CHECKING:  # config imports torch: each command imports it when it needs it, so `report` stays instant
    from rift_sweep.config import SweepConfig


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:  # our dependencies' deprecation notices are theirs to fix, not the user's to read
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args) or 0
    except InputError as exc:  # something the user can fix; anything else is a bug and keeps its traceback
        hint = " [--verbose shows the details]" if exc.details and not args.verbose else ""
        print(f"rift-sweep {args.command}: error: {exc}{hint}", file=sys.stderr)
        if exc.details and args.verbose:
            print(exc.details, file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rift-sweep", description="RiFT (Robust Critical Fine-Tuning) as a sweep.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = _command(commands, "train-at", cmd_train_at, "adversarially train the model of a config (PGD-AT)")
    _add_config(train)
    train.add_argument("--out", required=True, type=Path, help="where to write the AT checkpoint")
    train.add_argument("--epochs", type=int, help="override adversarial_training.epochs")
    train.add_argument(
        "--train-subset",
        type=int,
        help="training examples to use (default: the whole training split, not data.train_subset)",
    )

    rift = _command(commands, "rift", cmd_rift, "the paper's procedure in one process: MRC, fine-tune, α rule, report")
    _add_config(rift)

    mrc = _command(commands, "mrc", cmd_mrc, "stage 1: MRC of every candidate module on Ray actors (cached, resumable)")
    _add_config(mrc)
    _add_ray(mrc)

    sweep = _command(commands, "sweep", cmd_sweep, "stage 1 + the Tune/Optuna sweep + the Pareto front, in MLflow")
    _add_config(sweep)
    _add_ray(sweep)
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="carry on an interrupted sweep from wherever it stopped (nothing is redone)",
    )
    sweep.add_argument(
        "--num-samples",
        type=int,
        help="override search.num_samples; with --resume, a larger N adds trials to a finished sweep",
    )
    sweep.add_argument("--tracking-uri", help="override tracking.uri (e.g. http://127.0.0.1:5000)")

    report = _command(commands, "report", cmd_report, "the Pareto front of a sweep: table, test metrics, where to look")
    _add_sweep_ref(report)

    export = _command(commands, "export", cmd_export, "write a trial's model (or the recommended one) for your code")
    _add_sweep_ref(export)
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", help="a trial id (see `rift-sweep report`)")
    which.add_argument("--recommended", action="store_true", help="the paper's rule over every evaluated model")
    export.add_argument("--alpha", type=float, help="with --trial: the α of its path (default: the trial's own)")
    export.add_argument("--out", required=True, type=Path, help="the state dict to write (plus OUT.json provenance)")
    export.add_argument("--register", metavar="NAME", help="also register the run's MLflow model under NAME")

    ui = _command(commands, "ui", cmd_ui, "serve the MLflow UI on a sweep's store (127.0.0.1 by default)")
    _add_sweep_ref(ui)
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    return parser


def _command(commands, name: str, handler, help_text: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress details and error details")
    parser.set_defaults(handler=handler)
    return parser


def _add_sweep_ref(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--sweep", help="a sweep's name: its folder is runs/NAME or the newest runs/NAME-<stamp>")
    group.add_argument("--config", type=Path, help="the sweep's YAML config")
    parser.add_argument("--output", help="the sweep's output folder")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override any config field")


def _add_ray(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, help="MRC actors (default: one per GPU, else one per CPU slot)")
    parser.add_argument("--gpus", type=int, help="ask the cluster's autoscaler for N GPUs and wait for them first")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="a YAML file, e.g. search_spaces/demo.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any config field, typed and checked like the file (e.g. attack.eps=0.03)",
    )
    parser.add_argument("--checkpoint", help="override model.checkpoint")
    parser.add_argument("--output", help="override output_dir")


def config_from_args(args: argparse.Namespace, extra: dict | None = None) -> SweepConfig:
    from rift_sweep.config import load_config

    overrides = dict(extra or {})
    if getattr(args, "checkpoint", None):
        overrides["model"] = {"checkpoint": str(Path(args.checkpoint).resolve())}
    if getattr(args, "output", None):
        overrides["output_dir"] = str(Path(args.output).resolve())
    return load_config(args.config, overrides, args.set)


def cmd_train_at(args: argparse.Namespace) -> int:
    from rift_sweep.core.adversarial_training import ATEpoch
    from rift_sweep.procedure.adversarial import train_at_checkpoint

    extra = {"data": {"train_subset": args.train_subset}}
    if args.epochs is not None:
        extra["adversarial_training"] = {"epochs": args.epochs}

    def show(row: ATEpoch) -> None:  # as each epoch ends: a long run shows its progress
        print(
            f"epoch {row.epoch:>3}  lr {row.lr:.4f}  loss {row.train_loss:.3f}  "
            f"val std {row.std_acc:.2f}  val rob {row.rob_acc:.2f}  {row.seconds:.0f}s",
            flush=True,
        )

    result = train_at_checkpoint(config_from_args(args, extra), args.out, on_epoch=show)
    print(f"best epoch {result.best_epoch} (val rob {result.best.rob_acc:.2f}) saved to {args.out}")
    return 0


def cmd_rift(args: argparse.Namespace) -> int:
    from rift_sweep.presentation.tables import describe_at, format_report
    from rift_sweep.procedure.experiment import load_experiment
    from rift_sweep.procedure.paper import run_paper_procedure

    exp = load_experiment(config_from_args(args), check=True)
    report = run_paper_procedure(exp, on_at_val=lambda at: print(describe_at(at), flush=True))
    print(format_report(report))
    return 0


def cmd_mrc(args: argparse.Namespace) -> int:
    from rift_sweep.orchestration.launch import launch_mrc
    from rift_sweep.presentation.tables import format_mrc_table

    stage, tracker = launch_mrc(config_from_args(args), workers=args.workers, address=args.address, gpus=args.gpus)
    mrc = stage.mrc
    print(format_mrc_table(mrc.results, stage.modules))
    print(
        f"\n{len(mrc.computed)} module(s) computed, {len(mrc.results) - len(mrc.computed)} from the cache "
        f"({mrc.seconds:.1f} s); table: {mrc.table_path}"
    )
    print(f"MLflow: parent run {tracker.parent_run_id}; {tracker.ui_hint()}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rift_sweep.orchestration.launch import launch_sweep
    from rift_sweep.presentation.tables import format_front

    extra = {}
    if args.num_samples is not None:
        extra["search"] = {"num_samples": args.num_samples}
    if args.tracking_uri:
        extra["tracking"] = {"uri": args.tracking_uri}
    result = launch_sweep(
        config_from_args(args, extra),
        resume=args.resume,
        num_samples=args.num_samples,
        workers=args.workers,
        address=args.address,
        gpus=args.gpus,
        progress=True,
        verbose=args.verbose,
    )
    outcome = result.outcome
    if result.front is None:
        print(
            f"sweep stopped with {outcome.finished} of {outcome.expected} trials finished; carry on with:\n"
            f"  rift-sweep sweep --config {args.config} --resume --output {result.config.output_path}"
        )
        return 3
    print(format_front(result.front))
    print(f"\n{outcome.finished} trials in {outcome.seconds:.0f} s; fine-tuned module(s): {', '.join(result.modules)}")
    print(result.where)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The front as the sweep published it, read from its folder: no Ray, no MLflow, no evaluation."""
    from rift_sweep.presentation.tables import format_front
    from rift_sweep.procedure.published import read_published

    folder = config_from_args(args).output_path if args.config else sweep_folder(args)
    published = read_published(folder)
    if published is None:
        raise InputError(
            f"the sweep at {folder} has not published its front (it has not finished); carry it on with "
            f"`rift-sweep sweep --config ... --resume --output {folder}`"
        )
    _check_sweep_name(args, folder, published.sweep)
    print(format_front(published.front))
    print(published.where)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from rift_sweep.orchestration.export import export_model
    from rift_sweep.presentation.tables import describe_model

    done = export_model(
        sweep_config(args), out=args.out.resolve(), trial_id=args.trial, alpha=args.alpha, register=args.register
    )
    print(
        f"wrote {done.path} (weights, the input checkpoint's keys) and {done.program} (the whole model, "
        f"normalisation included: torch.export.load(path).module()) for {describe_model(done.model)}\n"
        f"provenance, normalisation and how to load each: {done.sidecar}"
    )
    if done.registered:
        print(f"registered in MLflow's model registry as {done.registered}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from rift_sweep.orchestration.tracking import SweepTracker

    config = sweep_config(args)
    tracker = SweepTracker(config, create=False)
    if tracker.parent_run_id is None:
        raise InputError(f"no sweep {config.name!r} in the store {tracker.uri}; run `rift-sweep sweep` first")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracker.uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    if tracker.uri.startswith("sqlite:///"):
        command += ["--default-artifact-root", (config.output_path / names.MLFLOW_ARTIFACTS).as_uri()]
    chart, table = tracker.view_urls(f"http://{args.host}:{args.port}/")
    print(f"MLflow UI, the sweep's front: {chart}\n  its table: {table}", flush=True)
    print(f"  every model of it is a run; the front: {names.PARETO_FILTER}, {names.RECOMMENDED_FILTER}", flush=True)
    # The server replaces this process, so Ctrl-C and SIGTERM reach it directly. Its GenAI job runner is off:
    # the UI needs none of it, and it would start extra processes.
    os.execve(sys.executable, command, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


def sweep_config(args: argparse.Namespace) -> SweepConfig:
    """A sweep's config: its YAML (--config), or the resolved copy in its folder (sweep_folder)."""
    from rift_sweep.config import load_config

    if args.config:
        return config_from_args(args)
    folder = sweep_folder(args)
    config = load_config(folder / names.RESOLVED_CONFIG, assignments=args.set)
    _check_sweep_name(args, folder, config.name)
    return config


def _check_sweep_name(args: argparse.Namespace, folder: Path, name: str) -> None:
    """A --sweep NAME must be the sweep its folder holds (--output can point elsewhere)."""
    if args.sweep and name != args.sweep:
        raise InputError(f"{folder} holds the sweep {name!r}, not {args.sweep!r}; drop --sweep or fix it")


def sweep_folder(args: argparse.Namespace) -> Path:
    """A sweep's folder: --output, or --sweep NAME: runs/NAME or the newest runs/NAME-<stamp>, as `make demo` names
    them."""
    if not (args.sweep or args.output):
        raise InputError("name the sweep: --sweep NAME, --output FOLDER or --config FILE")
    folder = Path(args.output).resolve() if args.output else find_sweep(args.sweep)
    if not (folder / names.RESOLVED_CONFIG).is_file():
        raise InputError(
            f"no sweep at {folder} (looked for {names.RESOLVED_CONFIG}); pass a sweep's folder with --output"
        )
    return folder


def find_sweep(name: str, runs: Path = Path("runs")) -> Path:
    """The folder of the sweep called `name` under `runs`: runs/NAME, else the newest runs/NAME-<YYYYMMDD-HHMMSS>
    holding a sweep (the others are listed on stderr)."""
    stamped = re.compile(re.escape(name) + r"-\d{8}-\d{6}")
    candidates = [runs / name, *sorted(p for p in runs.glob(f"{name}-*") if stamped.fullmatch(p.name))]
    candidates = [p for p in candidates if (p / names.RESOLVED_CONFIG).is_file()]
    if not candidates:
        raise InputError(f"no sweep named {name!r} under {runs.resolve()}/; pass its folder with --output")
    newest = max(candidates, key=lambda p: (p / names.RESOLVED_CONFIG).stat().st_mtime)
    others = [str(p) for p in candidates if p != newest]
    if others:
        print(f"sweep {name!r}: {newest} (the newest; also {', '.join(others)}: choose with --output)", file=sys.stderr)
    return newest.resolve()


if __name__ == "__main__":
    sys.exit(main())
