"""Writing a file so that no reader ever sees half of it: write beside it, fsync, rename onto it,
fsync the folder. A failed or interrupted write leaves the old file (or none) and no leftovers.
Checkpoints, the index's generations, reports, the stage cache and exported models all write
through here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged(path: Path | str) -> Iterator[Path]:
    """A temporary path beside `path`: fill it in the block; if the block succeeds it is fsynced
    and renamed onto `path`; it is removed in any case."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_atomically(path: Path | str, data: str | bytes) -> None:
    with staged(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def fsync_path(path: Path | str) -> None:
    """fsync a file or a folder (a folder's fsync makes the renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
