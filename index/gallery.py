"""The image files of a gallery folder: found recursively, symlinked folders followed once each
(a link back up is seen as a loop and skipped), hidden entries ignored, described by what the
index stores about them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from metrix.datasets.base import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class GalleryFile:
    path: str  # relative to the gallery root, with "/" separators
    size: int
    mtime_ns: int

    @property
    def label(self) -> str:
        """The top-level sub-folder, or "" for a file directly in the root."""
        return self.path.split("/", 1)[0] if "/" in self.path else ""


def find_images(root: Path) -> tuple[list[GalleryFile], list[tuple[str, str]]]:
    """(image files sorted by path, [(path, reason)] for what was skipped and must be reported:
    symlink loops, unreadable folders, dangling links)."""
    root = Path(root)
    files, skipped = [], []
    visited = set()

    def walk(folder: Path) -> None:
        try:
            real = folder.stat()
        except OSError as error:
            skipped.append((_relative(folder, root), f"cannot read the folder ({error.strerror})"))
            return
        if (real.st_dev, real.st_ino) in visited:
            skipped.append(
                (_relative(folder, root), "symlink loop or second link to a folder already indexed, not followed")
            )
            return
        visited.add((real.st_dev, real.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as error:
            skipped.append((_relative(folder, root), f"cannot list the folder ({error.strerror})"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=True):
                    walk(path)
                elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    stat = entry.stat(follow_symlinks=True)
                    files.append(GalleryFile(_relative(path, root), stat.st_size, stat.st_mtime_ns))
            except OSError as error:
                skipped.append((_relative(path, root), f"cannot stat ({error.strerror or error})"))

    walk(root)
    return sorted(files, key=lambda f: f.path), skipped


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else "."
