"""An index that follows its CURRENT pointer, for a long-running reader such as the search service.

A watcher thread reads CURRENT every `interval` seconds. A new generation is opened whole (faiss
index, metadata, and the model too if that build used another one) before one reference is
swapped, so each query takes one snapshot and answers from one whole generation. Queries in flight
finish on the snapshot they took: its files stay readable even after a later build removes them
(the open handles outlive the unlink). A generation that cannot be opened is logged once and the
service keeps answering from the one it has.

The generation served is watched too (index/guard.py): its files' stat before and after every
query (`answer`) and at every watcher tick, their checksums every `verify_interval` seconds. A
generation found damaged then, or by an integrity error in a query (a score outside the cosine
range), is condemned: logged once, with the file, and never answered from again. The newest
generation up to CURRENT's that verifies is served instead, and the query runs again on it; when
none verifies, `snapshot()` raises IndexUnavailable (the service answers 503) until a build
commits a generation that verifies.

Readiness (app/probes.py): a model answers one image before its snapshot is served (a model file
that cannot run is refused like a damaged generation), and `start` embeds one whole batch in the
background (onnxruntime sizes its buffers at the first batch of a shape, seconds for the first 32
images); `warmed` is set once it has.

With `mmap=True` each generation's faiss index is memory-mapped read-only (store.open_generation):
the vectors live once in the page cache however many processes serve the same generation
(`metrix serve --workers N`, Ray Serve replicas on one node), not once per process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from metrix.export.runtime import Embedder, ModelError, load_embedder

from .errors import IndexIntegrityError, IndexUnavailable
from .kept_queries import DEFAULT_KEEP, KeptQueries
from .served_recall import ServedRecall
from .store import GalleryIndex, GalleryIndexError, current_generation, open_index, open_newest_verified

log = logging.getLogger("metrix.index")
#: Seconds between re-verifications of the served generation's checksums (`metrix serve
#: --verify-interval`): 2.3-3.8 s of one core for a 1,000,000 x 1280-d flat index, about 1% (docs/index.md).
DEFAULT_VERIFY_INTERVAL = 300.0
T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    index: GalleryIndex
    embedder: Embedder


class LiveIndex:
    def __init__(
        self,
        index_dir: Path | str,
        model: Path | str | None = None,
        interval: float = 1.0,
        mmap: bool = False,
        recall_interval: float = 1.0,
        search: dict | None = None,
        verify_interval: float = DEFAULT_VERIFY_INTERVAL,
        keep_queries: int = DEFAULT_KEEP,
    ):
        """`verify_interval`: seconds between verifications of the served generation's checksums; 0: none
        (its files' stat is still checked). `keep_queries`: how many of the query images asked to keep,
        with their marks (index/kept_queries.py; 0: none). GalleryIndexError when no generation can be served."""
        self.dir, self.model, self.interval, self.mmap = Path(index_dir), model, interval, mmap
        self.verify_interval = verify_interval
        self.recall = ServedRecall(self.dir, recall_interval)  # index/served_recall.py
        self.kept = KeptQueries(self.dir, keep_queries)  # index/kept_queries.py
        self.search = search or {}  # GalleryIndex.set_search's nprobe / ef_search, for every generation
        self.damaged: dict[str, str] = {}  # generation: why, without folders; never served again
        self._lock = threading.Lock()  # one condemnation at a time
        self._refused: str | None = None  # the generation last refused, so it is logged once
        try:
            self._snapshot: Snapshot | None = self._open(open_index(self.dir, mmap=mmap), None)
        except IndexIntegrityError as error:
            self._snapshot = None
            self._condemn(error)
            if self._snapshot is None:
                raise GalleryIndexError(f"{self.dir}: {self._unavailable()}") from None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.warmed = threading.Event()
        self.warm_up_seconds: float | None = None

    def snapshot(self) -> Snapshot:
        """The generation served and its model; IndexUnavailable when no generation verifies."""
        snapshot = self._snapshot
        if snapshot is None:
            raise IndexUnavailable(self._unavailable())
        return snapshot

    def answer(self, task: Callable[[Snapshot], T]) -> T:
        """task(snapshot) on the generation served, its files checked before and after (so no answer
        comes from files that changed meanwhile). Where that generation turns out damaged, by the
        checks or by an integrity error in the task, it is condemned and the task runs again on
        the generation served instead; IndexUnavailable when none verifies."""
        while True:
            snapshot = self.snapshot()
            try:
                snapshot.index.files.check()
                result = task(snapshot)
                snapshot.index.files.check()
                return result
            except IndexIntegrityError as error:
                if error.generation != snapshot.index.generation:
                    raise
                self.condemn(error)

    def condemn(self, error: IndexIntegrityError) -> None:
        """The generation `error` names is damaged: logged once, never answered from again; where it
        is the one served, the newest generation that verifies is served instead, if any."""
        with self._lock:
            self._condemn(error)

    def _condemn(self, error: IndexIntegrityError) -> None:
        if error.generation in self.damaged:
            return
        self.damaged[error.generation] = error.reason
        served = self._snapshot
        if served is not None and served.index.generation != error.generation:
            log.warning("%s is damaged, not served: %s", error.generation, error)
            return
        embedder = served.embedder if served is not None else None
        index, failed = open_newest_verified(self.dir, self.damaged, self.mmap)
        for other in failed:
            self.damaged[other.generation] = other.reason
            log.warning("%s is damaged too: %s", other.generation, other)
        self._snapshot = None
        if index is not None:
            try:
                self._snapshot = self._open(index, embedder)
            except (GalleryIndexError, ModelError, OSError) as failure:
                log.warning("cannot serve %s instead: %s", index.generation, failure)
        instead = f"serving {self._snapshot.index.generation}" if self._snapshot else "answering 503"
        log.error("%s is damaged, %s: %s", error.generation, instead, error)

    def _unavailable(self) -> str:
        damage = "; ".join(f"{generation}: {reason}" for generation, reason in sorted(self.damaged.items()))
        return (
            f"no generation of index {self.dir.name} verifies ({damage}); searches resume once "
            "`metrix build-index` repairs it"
        )

    def integrity(self) -> dict:
        """What /api/info says of the checks: their period and the generations found damaged."""
        return {"verify_interval_s": self.verify_interval, "damaged": dict(sorted(self.damaged.items()))}

    def _open(self, index: GalleryIndex, embedder: Embedder | None) -> Snapshot:
        """A snapshot of an opened generation: with the model asked for, else the one it was built with
        (the model served so far, when it is that one)."""
        wanted = index.manifest["model"]
        loaded = embedder is None or (
            self.model is None and wanted.get("weights_sha256") != embedder.metadata.weights_sha256
        )
        if loaded:
            embedder = load_embedder(self.model or wanted["path"])
        index.check_model(embedder.metadata)
        index.set_search(**self.search)
        if loaded:
            _answer_once(embedder)
        return Snapshot(index, embedder)

    def refresh(self) -> bool:
        """Switch to the generation CURRENT names, if it is new; True when switched."""
        generation = current_generation(self.dir)
        served = self._snapshot
        if generation in (None, self._refused) or generation in self.damaged:
            return False
        if served is not None and generation == served.index.generation:
            return False
        try:
            snapshot = self._open(open_index(self.dir, mmap=self.mmap), served.embedder if served else None)
        except (GalleryIndexError, ModelError, OSError) as error:
            self._refused = generation
            if isinstance(error, IndexIntegrityError):
                with self._lock:
                    self.damaged[error.generation] = error.reason
            was = f"still serving {served.index.generation}" if served else "serving nothing"
            log.warning("%s: cannot switch to %s: %s", was, generation, error)
            return False
        with self._lock:
            self._snapshot = snapshot
        was = served.index.generation if served else "nothing (no generation verified)"
        log.info("switched from %s to %s (%d images)", was, snapshot.index.generation, len(snapshot.index))
        return True

    def check(self) -> None:
        """The served generation's files: their stat, and every `verify_interval` seconds their checksums."""
        served = self._snapshot
        if served is None:
            return
        files = served.index.files
        due = self.verify_interval > 0 and time.monotonic() - files.verified_at >= self.verify_interval
        try:
            files.check(full=due)
        except IndexIntegrityError as error:
            self.condemn(error)

    def warm_up(self, batch: int) -> None:
        """Embed one batch of `batch` blank images with the served model; then `warmed` is set."""
        start = time.perf_counter()
        try:
            _blank_batch(self.snapshot().embedder, batch)
        except Exception as failure:  # noqa: BLE001 (onnxruntime's errors derive from Exception only): not ready
            log.warning("warming up the model failed: %s", str(failure).splitlines()[0])
            return
        self.warm_up_seconds = time.perf_counter() - start
        self.warmed.set()

    def start(self, warm_batch: int = 1) -> LiveIndex:
        """Follow CURRENT and watch the served files; warm the model up with `warm_batch` images
        (again at each tick until it has: no generation may have verified at first)."""
        threading.Thread(target=self.warm_up, args=(warm_batch,), name="metrix-warm-up", daemon=True).start()

        def watch():
            while not self._stop.wait(self.interval):
                try:
                    self.refresh()
                    self.check()
                    if not self.warmed.is_set() and self._snapshot is not None:
                        self.warm_up(warm_batch)
                except Exception:  # the watcher must outlive any one bad generation
                    log.exception("checking %s for a new generation failed", self.dir)

        self._watcher = threading.Thread(target=watch, name="metrix-index-watcher", daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()


def _blank_batch(embedder: Embedder, batch: int) -> None:
    size = embedder.metadata.image_size
    embedder.embed(np.zeros((batch, size, size, 3), np.uint8))


def _answer_once(embedder: Embedder) -> None:
    """ModelError naming the file where the model cannot embed an image: never served."""
    try:
        _blank_batch(embedder, 1)
    except Exception as failure:  # noqa: BLE001 (onnxruntime's errors derive from Exception only)
        raise ModelError(f"{embedder.path}: the model fails on an image ({str(failure).splitlines()[0]})") from None
