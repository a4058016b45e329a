"""The index's errors, one line each, naming the folder or file."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class GalleryIndexError(ValueError):
    """An index that cannot be used as asked; the message is one line naming the folder."""


class IndexIntegrityError(GalleryIndexError):
    """A generation whose files are not what its build wrote (a bad disk, a bad copy, a half-synced
    volume): never searched. The message names the file that failed and what repairs the index;
    `reason` says the same without any folder (what a server may tell its clients), and
    `generation` names the generation it is in."""

    def __init__(self, path: Path, problem: str, repair: str):
        super().__init__(f"{path}: {problem}; {repair}")
        self.generation, self.reason = Path(path).parent.name, f"{Path(path).name}: {problem}"


class IndexUnavailable(RuntimeError):
    """A served index with no generation that verifies: nothing can be answered until a build
    repairs it. The message names generations, never a folder (a server answers it with 503)."""


#: errno of a write that failed for want of room or rights, and what to tell the user
_WRITE_FAULTS = {
    errno.ENOSPC: "no space left on {disk}",
    errno.EDQUOT: "disk quota exceeded on {disk}",
    errno.EFBIG: "a file outgrew the file-size limit (ulimit -f) in {folder}",
    errno.EROFS: "{folder} is on a read-only file system",
    errno.EACCES: "no permission to write in {folder}",
    errno.EPERM: "no permission to write in {folder}",
}


def write_fault(error: BaseException, folder: Path) -> str | None:
    """What a failed write in `folder` ran into, in words naming the disk or folder, or None when
    `error` is no write fault. faiss and SQLite report these as text, not errno."""
    code, text = getattr(error, "errno", None), str(error).lower()
    if code not in _WRITE_FAULTS:
        code = next((c for c in _WRITE_FAULTS if os.strerror(c).lower() in text), None)
        if code is None and "database or disk is full" in text:
            code = errno.ENOSPC
    if code is not None:
        return _WRITE_FAULTS[code].format(disk=_mount_point(folder), folder=folder)
    if "disk i/o error" in text:  # SQLite's word for a failed write (a file-size limit, a failing disk)
        return f"SQLite could not write in {folder} (disk I/O error: a full disk, a file-size limit or a failing disk)"
    if isinstance(error, OSError) and "requested and" in text and "written" in text:  # numpy's short write
        return f"a write in {folder} came up short (a full disk or a file-size limit)"
    return None


def _mount_point(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path
