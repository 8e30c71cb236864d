"""The front as its sweep last published it, kept in the sweep's folder (names.PUBLISHED_FRONT, JSON): what
`report` prints and `export` chooses from, read with neither MLflow, Ray nor torch, so reading it is instant. The
MLflow runs hold the same models, for the UI; this file is written last, once they are."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rift_sweep.core.files import atomic_write
from rift_sweep.names import PUBLISHED_FRONT
from rift_sweep.procedure.records import Front

FORMAT = 1


@dataclass(frozen=True)
class Published:
    """A sweep's published front, with its name and where its artifacts and UI are."""

    sweep: str
    front: Front
    where: str


def write_published(folder: Path, published: Published) -> None:
    plain = {"format": FORMAT, "sweep": published.sweep, "where": published.where, "front": published.front.plain()}
    with atomic_write(folder / PUBLISHED_FRONT) as tmp:
        tmp.write_text(json.dumps(plain, indent=1) + "\n")


def read_published(folder: Path) -> Published | None:
    """The sweep's published front; None before it was published (or by an older rift-sweep: publish it again)."""
    path = folder / PUBLISHED_FRONT
    plain = json.loads(path.read_text()) if path.is_file() else {}
    if plain.get("format") != FORMAT:
        return None
    return Published(plain["sweep"], Front.from_plain(plain["front"]), plain["where"])
