"""One way to skip: `@requires("cuda")`, `@requires("fashion-mnist")`, `@requires("chromium")`, `@requires("sshd")`.

Each names what is missing and how to get it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CHROMIUM = "/usr/bin/chromium"
SSHD = "/usr/sbin/sshd"


def _missing_sshd() -> str | None:
    if os.geteuid() != 0:
        return "needs root (an SSH server in its own namespaces, logging in as root)"
    for tool in (SSHD, "ssh", "rsync", "nc", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} not found: run `bash scripts/setup_system.sh test` as root (openssh-server, rsync, netcat)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"cannot make PID/mount namespaces here: {probe.stderr.decode().strip()}"
    return None


def missing(what: str) -> str | None:
    """Why `what` is unavailable here, or None when it is available."""
    if what == "cuda":
        return None if torch.cuda.is_available() else "needs a CUDA device"
    if what == "fashion-mnist":
        present = (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()
        return None if present else "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
    if what == "chromium":
        return None if os.access(CHROMIUM, os.X_OK) else f"{CHROMIUM} not found: scripts/setup_system.sh test"
    if what == "sshd":
        return _missing_sshd()
    raise ValueError(f"unknown requirement {what!r}")


def requires(what: str) -> pytest.MarkDecorator:
    """A skip marker that names what is missing (CUDA tests also carry @pytest.mark.gpu)."""
    reason = missing(what)
    return pytest.mark.skipif(reason is not None, reason=reason or "")
