"""An index that follows its CURRENT pointer, for a long-running reader such as the search service.

A watcher thread reads CURRENT every `interval` seconds. A new generation is opened whole (faiss
index, metadata, and the model too if that build used another one) before one reference is
swapped, so each query takes one snapshot and answers from one whole generation. Queries in flight
finish on the snapshot they took: its files stay readable even after a later build removes them
(the open handles outlive the unlink). A generation that cannot be opened is logged once and the
service keeps answering from the one it has.

With `mmap=True` each generation's faiss index is memory-mapped read-only (store.open_index): the
vectors live once in the page cache however many processes serve the same generation
(`metrix serve --workers N`, Ray Serve replicas on one node), not once per process.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from metrix.export.runtime import Embedder, ModelError, load_embedder

from .served_recall import ServedRecall
from .store import GalleryIndex, GalleryIndexError, current_generation, open_index, open_with_model

log = logging.getLogger("metrix.index")


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
    ):
        self.dir, self.model, self.interval, self.mmap = Path(index_dir), model, interval, mmap
        self.recall = ServedRecall(self.dir, recall_interval)  # index/served_recall.py
        self.search = search or {}  # GalleryIndex.set_search's nprobe / ef_search, for every generation
        index, embedder = open_with_model(self.dir, model, mmap)
        index.set_search(**self.search)
        self._snapshot = Snapshot(index, embedder)
        self._refused: str | None = None  # the generation last refused, so it is logged once
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def refresh(self) -> bool:
        """Switch to the generation CURRENT names, if it is new; True when switched."""
        generation = current_generation(self.dir)
        if generation in (None, self._snapshot.index.generation, self._refused):
            return False
        old = self._snapshot
        try:
            index = open_index(self.dir, mmap=self.mmap)
            embedder = old.embedder
            if index.manifest["model"].get("weights_sha256") != embedder.metadata.weights_sha256 and self.model is None:
                embedder = load_embedder(index.manifest["model"]["path"])
            index.check_model(embedder.metadata)
            index.set_search(**self.search)
        except (GalleryIndexError, ModelError, OSError) as error:
            self._refused = generation
            log.warning("still serving %s: cannot switch to %s: %s", old.index.generation, generation, error)
            return False
        self._snapshot = Snapshot(index, embedder)
        log.info("switched from %s to %s (%d images)", old.index.generation, index.generation, len(index))
        return True

    def start(self) -> "LiveIndex":
        def watch():
            while not self._stop.wait(self.interval):
                try:
                    self.refresh()
                except Exception:  # the watcher must outlive any one bad generation
                    log.exception("checking %s for a new generation failed", self.dir)

        self._watcher = threading.Thread(target=watch, name="metrix-index-watcher", daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
