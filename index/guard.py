"""A generation's files, watched after it was opened and verified: a file can still change under a
reader (a bad disk, a stray copy, a script that writes into the index folder), and a memory-mapped
index (`metrix serve --workers N`) answers from the changed bytes at once.

Two checks, both against the generation as it was verified:
- `check()`: an os.stat of each file (about 3 microseconds each): inode, size, mtime and ctime. A
  write, a truncation, a file replaced by a rename or a chmod changes them (ctime cannot be set
  back), and then the checksums are verified again, so a harmless change (a chmod, a touch) costs
  one verification and damage is found at once. index/live.py runs it before and after every
  query and at every watcher tick.
- `check(full=True)`: the checksums, whatever the stat says: what finds damage that leaves a file's
  metadata alone (bit rot, a bad controller). index/live.py runs it every `verify_interval`
  seconds. It reads the files through the page cache, so it sees the bytes a search sees.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .errors import IndexIntegrityError
from .integrity import read_manifest, repair, verify_files


def file_stats(folder: Path) -> dict[str, tuple]:
    """{name: (inode, size, mtime, ctime)} of every file in `folder`."""
    stats = {}
    for entry in os.scandir(folder):
        stat = entry.stat(follow_symlinks=False)
        stats[entry.name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    return stats


class FileGuard:
    """The files of one opened generation. `stats`: file_stats(folder) taken before it was verified,
    so that a change during the verification is seen by the next check."""

    def __init__(self, folder: Path, manifest: dict, manifest_file: str, stats: dict[str, tuple]):
        self.folder, self.manifest, self.manifest_file, self.stats = folder, manifest, manifest_file, stats
        self.verified_at = time.monotonic()
        self._lock = threading.Lock()  # one verification at a time; the others wait for its outcome

    def _now(self) -> dict[str, tuple | None]:
        now = {}
        for name in self.stats:
            try:
                stat = os.stat(self.folder / name, follow_symlinks=False)
                now[name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
            except FileNotFoundError:
                now[name] = None
        return now

    def check(self, full: bool = False) -> None:
        """IndexIntegrityError (naming the file) when the files are no longer those verified: where
        a file's stat changed, or with `full`, by their checksums and the manifest. A generation
        whose folder is gone is not damaged: what was opened from it stays readable."""
        if not full and self._now() == self.stats:
            return
        if not self.folder.is_dir():  # removed by a build (--keep): the files opened are intact, and CURRENT is newer
            return
        with self._lock:
            now = self._now()
            if not full and now == self.stats:
                return  # verified meanwhile, by another thread
            path = self.folder / self.manifest_file
            try:
                same = read_manifest(path) == self.manifest
            except FileNotFoundError:
                raise IndexIntegrityError(
                    path, "missing from its generation", repair(self.folder, self.manifest)
                ) from None
            if not same:
                raise IndexIntegrityError(
                    path,
                    "is not the manifest that was verified: the file was replaced",
                    repair(self.folder, self.manifest),
                )
            verify_files(self.folder, self.manifest)
            self.stats, self.verified_at = now, time.monotonic()
