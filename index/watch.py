"""`metrix build-index FOLDER --watch`: follow a gallery folder and commit a new generation when
its files settle. Filesystem events (watchdog: inotify, FSEvents, ReadDirectoryChangesW; a polling
observer where the platform's watch limit is reached) only say *that* something changed: each
update is the ordinary incremental build, which rescans the folder and embeds only what differs,
so an event missed or coalesced by the platform costs nothing but a later update. A running
`metrix serve` follows the generations as it follows any rebuild.

Debounce: an update starts once the folder has been quiet for `quiet` seconds (a copy in progress
keeps sending events), or after `longest` seconds of continuous change, so a folder that never
settles is still indexed. A file caught half-written fails to decode, is reported, and is embedded
by the update that its last write triggers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_QUIET, DEFAULT_LONGEST = 1.0, 30.0
RETRY_SECONDS = 5.0


class Changes:
    """What the observer thread reports: when the folder last changed and since when it has been
    unsettled (None: nothing to index)."""

    def __init__(self, ignore: Path | None = None):
        self.lock = threading.Lock()
        self.first: float | None = None
        self.last = 0.0
        self.ignore = str(ignore.resolve()) if ignore is not None else None

    def dispatch(self, event) -> None:  # watchdog's handler interface
        paths = [getattr(event, "src_path", ""), getattr(event, "dest_path", "")]
        if event.event_type in ("opened", "closed_no_write") or (
            self.ignore and all(not p or str(p).startswith(self.ignore) for p in paths)
        ):
            return
        with self.lock:
            now = time.monotonic()
            self.first = self.first if self.first is not None else now
            self.last = now

    def mark(self) -> None:
        with self.lock:
            self.first = self.first if self.first is not None else time.monotonic()

    def due(self, quiet: float, longest: float) -> bool:
        """True (and cleared) once the changes have settled or waited long enough."""
        with self.lock:
            now = time.monotonic()
            if self.first is None or (now - self.last < quiet and now - self.first < longest):
                return False
            self.first = None
            return True


def start_observer(folder: Path, changes: Changes, log: Callable[[str], None]):
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    observer = Observer()
    observer.schedule(changes, str(folder), recursive=True)
    try:
        observer.start()
    except OSError as error:  # e.g. inotify's max_user_watches reached on a very deep tree
        log(f"watching {folder} by polling every second: {error.strerror or error}")
        observer = PollingObserver(timeout=1.0)
        observer.schedule(changes, str(folder), recursive=True)
        observer.start()
    return observer


def watch(
    folder: Path,
    update: Callable[[], None],
    stop: threading.Event,
    log: Callable[[str], None] = print,
    quiet: float = DEFAULT_QUIET,
    longest: float = DEFAULT_LONGEST,
    ignore: Path | None = None,
) -> None:
    """Call `update()` whenever the folder's changes settle, until `stop` is set. An update that
    raises is logged and tried again RETRY_SECONDS later (a full disk may be freed). `ignore`:
    a folder inside `folder` whose events do not count (the index itself, if it lives there)."""
    try:
        import watchdog  # noqa: F401
    except ImportError:
        raise RuntimeError("--watch needs the watchdog package: pip install 'metrix[watch]'") from None
    changes = Changes(ignore)
    observer = start_observer(folder, changes, log)
    log(f"watching {folder} for changes (Ctrl+C to stop)")
    try:
        while not stop.wait(0.1):
            if changes.due(quiet, longest):
                try:
                    update()
                except Exception as error:  # noqa: BLE001 - the watch outlives one failed update
                    log(f"update failed, trying again in {RETRY_SECONDS:g} s: {error}")
                    stop.wait(RETRY_SECONDS)
                    changes.mark()
    finally:
        observer.stop()
        observer.join()
