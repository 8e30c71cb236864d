"""`rift-sweep` command line: train-at, rift, mrc, sweep, report, ui."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from rift_sweep.config import ConfigError, SweepConfig, load_config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args) or 0
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"rift-sweep {args.command}: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rift-sweep", description="RiFT (Robust Critical Fine-Tuning) as a sweep.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train-at", help="adversarially train the model of a config (PGD-AT)")
    _add_config(train)
    train.add_argument("--out", required=True, type=Path, help="where to write the AT checkpoint")
    train.add_argument("--epochs", type=int, help="override adversarial_training.epochs")
    train.add_argument("--train-subset", type=int, default=0,
                       help="training examples to use (default 0: the whole training split, not data.train_subset)")
    train.set_defaults(handler=cmd_train_at)

    rift = commands.add_parser("rift", help="the paper's procedure in one process: MRC, fine-tune, α rule, report")
    _add_config(rift)
    rift.set_defaults(handler=cmd_rift)

    mrc = commands.add_parser("mrc", help="stage 1: MRC of every candidate module on Ray actors (cached, resumable)")
    _add_config(mrc)
    _add_ray(mrc)
    mrc.set_defaults(handler=cmd_mrc)

    sweep = commands.add_parser("sweep", help="stage 1 + the Tune/Optuna sweep + the Pareto front, in MLflow")
    _add_config(sweep)
    _add_ray(sweep)
    sweep.add_argument("--resume", action="store_true", help="carry on an interrupted sweep (nothing is redone)")
    sweep.add_argument("--num-samples", type=int, help="override search.num_samples")
    sweep.add_argument("--tracking-uri", help="override tracking.uri (e.g. http://127.0.0.1:5000)")
    sweep.set_defaults(handler=cmd_sweep)

    report = commands.add_parser("report", help="the Pareto front of a sweep: table, test metrics, where to look")
    _add_sweep_ref(report)
    _add_address(report)
    report.set_defaults(handler=cmd_report)

    ui = commands.add_parser("ui", help="serve the MLflow UI on a sweep's store (127.0.0.1 by default)")
    _add_sweep_ref(ui)
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=cmd_ui)
    return parser


def _add_sweep_ref(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--sweep", help="a sweep's name (its folder: runs/NAME, or --output)")
    group.add_argument("--config", type=Path, help="the sweep's YAML config")
    parser.add_argument("--output", help="the sweep's output folder (default: runs/NAME)")


def _add_ray(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, help="MRC actors (default: one per GPU, else one per CPU slot)")
    parser.add_argument("--gpus", type=int, help="ask the cluster's autoscaler for N GPUs and wait for them first")
    _add_address(parser)


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="a YAML file, e.g. search_spaces/demo.yaml")
    parser.add_argument("--checkpoint", help="override model.checkpoint")
    parser.add_argument("--output", help="override output_dir")


def config_from_args(args: argparse.Namespace, extra: dict | None = None) -> SweepConfig:
    overrides = dict(extra or {})
    if getattr(args, "checkpoint", None):
        overrides["model"] = {"checkpoint": str(Path(args.checkpoint).resolve())}
    if getattr(args, "output", None):
        overrides["output_dir"] = str(Path(args.output).resolve())
    return load_config(args.config, overrides)


def cmd_train_at(args: argparse.Namespace) -> int:
    from rift_sweep.adversarial_training import adversarial_train
    from rift_sweep.experiment import load_data, new_model, resolve_device, split_identity
    from rift_sweep.models import save_checkpoint

    extra = {"data": {"train_subset": args.train_subset or None}}
    if args.epochs:
        extra["adversarial_training"] = {"epochs": args.epochs}
    config = config_from_args(args, extra)
    splits = load_data(config)
    device = resolve_device(config.device)
    model = new_model(config, splits.info).to(device)
    start = time.perf_counter()
    result = adversarial_train(model, splits.train, splits.val, config.adversarial_training, config.attack,
                               augment=splits.info.augment, crop_padding=splits.info.crop_padding,
                               seed=config.seed, device=device)
    best = result.history[result.best_epoch - 1]
    attack = config.attack
    save_checkpoint(args.out, model, split=split_identity(config), model=config.model.name,
                    epochs=config.adversarial_training.epochs, best_epoch=result.best_epoch,
                    val_std_acc=best["std_acc"], val_rob_acc=best["rob_acc"],
                    attack={"eps": attack.eps, "step_size": attack.step_size, "steps": attack.steps},
                    train_examples=len(splits.train), seconds=round(time.perf_counter() - start, 1))
    for row in result.history:
        print(f"epoch {row['epoch']:>3}  lr {row['lr']:.4f}  loss {row['train_loss']:.3f}  "
              f"val std {row['std_acc']:.2f}  val rob {row['rob_acc']:.2f}  {row['seconds']:.0f}s")
    print(f"best epoch {result.best_epoch} (val rob {best['rob_acc']:.2f}) saved to {args.out}")
    return 0


def cmd_rift(args: argparse.Namespace) -> int:
    from rift_sweep.experiment import load_experiment
    from rift_sweep.rift import format_report, run_paper_procedure

    config = config_from_args(args)
    report = run_paper_procedure(load_experiment(config))
    print(format_report(report))
    return 0


def cmd_mrc(args: argparse.Namespace) -> int:
    from rift_sweep.experiment import check_module_choice
    from rift_sweep.mrc_pool import run_mrc_stage
    from rift_sweep.resources import gpus_requested, init_ray
    from rift_sweep.rift import choose_modules, format_mrc_table
    from rift_sweep.tracking import SweepTracker

    config = config_from_args(args)
    check_module_choice(config)
    init_ray(args.address)
    with gpus_requested(args.gpus):
        stage = run_mrc_stage(config, workers=args.workers)
    chosen = choose_modules([r["module"] for r in stage.rows], config.modules)
    tracker = SweepTracker(config)
    tracker.log_mrc(stage.rows, chosen, stage.table_path)
    print(format_mrc_table(stage.rows, chosen))
    print(f"\n{len(stage.computed)} module(s) computed, {len(stage.rows) - len(stage.computed)} from the cache "
          f"({stage.seconds:.1f} s); table: {stage.table_path}")
    print(f"MLflow: parent run {tracker.parent_run_id}; {tracker.ui_hint()}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rift_sweep.experiment import check_module_choice
    from rift_sweep.report import describe_where, format_front, publish_front
    from rift_sweep.resources import gpus_requested, init_ray
    from rift_sweep.sweep import run_sweep
    from rift_sweep.tracking import SweepTracker

    extra = {}
    if args.num_samples is not None:
        extra["search"] = {"num_samples": args.num_samples}
    if args.tracking_uri:
        extra["tracking"] = {"uri": args.tracking_uri}
    config = config_from_args(args, extra)
    check_module_choice(config)  # bad input is refused before Ray starts
    init_ray(args.address)
    tracker = SweepTracker(config)
    save_resolved_config(config)
    tracker.client.update_run(tracker.parent_run_id, "RUNNING")
    with gpus_requested(args.gpus):
        outcome = run_sweep(config, resume=args.resume, workers=args.workers, tracker=tracker)
        report = publish_front(config, tracker) if outcome.complete else None
    if report is None:
        tracker.finish_parent("KILLED")
        print(f"sweep stopped with {outcome.finished} of {outcome.expected} trials finished; carry on with:\n"
              f"  rift-sweep sweep --config {args.config} --resume" + (f" --output {args.output}" if args.output else ""))
        return 3
    tracker.finish_parent("FINISHED")
    print(format_front(report))
    print(f"\n{outcome.finished} trials in {outcome.seconds:.0f} s; fine-tuned module(s): {', '.join(outcome.modules)}")
    print(describe_where(report))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rift_sweep.report import describe_where, format_front, publish_front
    from rift_sweep.resources import init_ray
    from rift_sweep.tracking import SweepTracker

    config = sweep_config(args)
    init_ray(args.address)
    report = publish_front(config, SweepTracker(config))
    print(format_front(report))
    print(describe_where(report))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import os

    from rift_sweep.report import UI_FILTER
    from rift_sweep.tracking import SweepTracker

    config = sweep_config(args)
    tracker = SweepTracker(config)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracker.uri,
               "--host", args.host, "--port", str(args.port), "--workers", "1"]
    if tracker.uri.startswith("sqlite:///"):
        command += ["--default-artifact-root", (config.output_path / "mlartifacts").as_uri()]
    runs = f"http://{args.host}:{args.port}/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    print(f"MLflow UI: {runs}", flush=True)
    print(f"  the sweep's runs: parent run {tracker.parent_run_id}; Pareto trials: filter {UI_FILTER}", flush=True)
    # The server replaces this process, so Ctrl-C and SIGTERM reach it directly. Its GenAI job runner is off:
    # the UI needs none of it, and it would start extra processes.
    os.execve(sys.executable, command, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


RESOLVED_CONFIG = "sweep_config.yaml"


def save_resolved_config(config: SweepConfig) -> Path:
    """Keep the sweep's resolved config in its folder, so `report --sweep NAME` needs nothing else."""
    import dataclasses

    import yaml

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    raw = plain(dataclasses.asdict(config))
    raw.pop("source")
    raw["output_dir"] = str(config.output_path)
    path = config.output_path / RESOLVED_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def sweep_config(args: argparse.Namespace) -> SweepConfig:
    if args.config:
        return config_from_args(args)
    folder = Path(args.output or f"runs/{args.sweep}").resolve()
    path = folder / RESOLVED_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no sweep named {args.sweep!r} at {folder} (looked for {path}); "
                                "pass --output FOLDER or --config FILE")
    return load_config(path)


if __name__ == "__main__":
    sys.exit(main())
