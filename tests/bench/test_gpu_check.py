"""bench/gpu_check.py works before a GPU is lent: its dry run prints every section's figures (tiny sizes, here on
the CPU), writes them to $OUT, and its budget guard skips what would not fit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"

# One pattern per line each section must print (`figure: value (details)`).
EXPECTED = {
    "env": [r"^torch: \S+ \(CUDA", r"^driver: ", r"^device: ", r"^CPUs: \d+", r"^extras: torchattacks"],
    "tests": [r"^skipped tests: not run \(dry run"],
    "share": [
        r"^trials sharing one GPU, 1 process: \d+ images/s \(1\.00x",
        r"^trials sharing one GPU, 2 processes: \d+ images/s \(\d+\.\d\dx",
        r"^trials sharing one GPU, best: [12] process",
    ],
    "pgd": [
        rf"^PGD-10 small_cnn batch 8 {setting}, ours {call}: \d+ images/s"
        for setting in ("fp32 contiguous", "fp32 channels-last", "AMP channels-last")
        for call in ("perturb", "robust_correct")
    ],
    "finetune": [r"^fine-tune 1 epoch small_cnn conv2: \d+\.\d s \(\d+ images/s"],
    "mrc": [
        r"^MRC baseline loss pass: ",
        *(rf"^MRC small_cnn {module}: \d+\.\d s per module" for module in ("conv1", "conv2", "fc2")),
        r"^MRC small_cnn conv2, set on the device: ",
        r"^MRC small_cnn, all modules: \d+ s extrapolated \(5 modules x 10 epochs",
    ],
    "alpha": [r"^α point small_cnn fp32: \d+\.\d s \(clean \+ PGD-10", r"^α point small_cnn AMP: "],
}


def dry_run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "OUT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--device", "cpu", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, done.stdout.splitlines()


def test_the_dry_run_prints_every_section_and_keeps_the_lines_in_out(tmp_path):
    done, lines = dry_run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for section, patterns in EXPECTED.items():
        for pattern in patterns:
            assert any(re.search(pattern, line) for line in lines), f"{section}: no line matches {pattern!r}"
        if section != "tests":
            assert any(line.startswith(f"section {section}: ") for line in lines), section
    assert not any(line.startswith("failed ") for line in lines)
    assert re.match(
        r"total wall time: [\d.]+ s \(budget 450 s; ran env share pgd finetune mrc alpha; skipped tests;", lines[-1]
    )
    assert (tmp_path / "gpu_check.txt").read_text().splitlines() == lines  # what comes back from the device


def test_the_budget_guard_skips_a_section_that_would_not_fit(tmp_path):
    done, lines = dry_run(tmp_path, "--sections", "env", "pgd", "--budget-s", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(line.startswith("torch: ") for line in lines)  # env's estimate (1 s) fits in 2 s
    assert any(
        re.match(r"skipped pgd: not run \(elapsed \d+ s \+ its estimate 5 s > budget 2 s\)", line) for line in lines
    )
    assert not any(line.startswith(("PGD-10", "MRC", "trials sharing")) for line in lines)  # nothing else ran
