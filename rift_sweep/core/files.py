"""Files, in one place: atomic writes, file hashes and the content keys every cache is named by."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rift_sweep.core.errors import InputError

if TYPE_CHECKING:
    import torch


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends it replaces `path` whole (fsynced first).

    A reader, or a crash, never sees half a file; on an exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike) -> None:
    """Raise InputError unless `path` can be written (its folder exists or can be made): checked before the work
    whose result it will hold."""
    path = Path(path)
    existing = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if path.is_dir() or existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write {path}: {existing or path.parent} is not a writable folder; choose another path"
        )


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks so large checkpoints need no large buffer."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_key(payload: dict, *tensors: torch.Tensor) -> str:
    """16 hex digits naming a cache entry: a hash of `payload` (JSON) and the bytes of `tensors`.

    Everything a cached result depends on goes in; anything else stays out, so a change that cannot alter
    the result (a display setting, say) keeps the cache.
    """
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
