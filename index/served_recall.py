"""Recall of the served index on the queries it is actually asked, measured while it serves.

A build tunes IVF's nprobe and HNSW's efSearch on the gallery's own vectors used as queries
(index/choose.py). That is the right sample when queries look like gallery images; when they do
not (user photos against a catalogue, or a gallery of tight near-duplicate families) it can
overstate recall badly: on bench/scale_gallery.py's million-vector gallery, nprobe 2 reached
0.997 on gallery vectors and 0.696 on real held-out query images. So the server checks: at most
one unfiltered query per `interval_s` is searched again exactly, in a background thread, and its
recall@10 against that exact answer is kept (the last WINDOW per generation). `stats()` goes into
/api/info; once MIN_SAMPLES queries of a generation are measured and their recall is below the
build's target, a warning says so, once per generation. The sampled query vectors are kept in
INDEX_DIR/SERVED_QUERIES (the newest KEEP), which the next build (an update, or
`build-index --retune`) tunes on as well (index/choose.widen_for_served).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

log = logging.getLogger("metrix.served_recall")

K = 10
WINDOW = 200
MIN_SAMPLES = 50
KEEP = 1000
SERVED_QUERIES = "served-queries.npy"


def exact_top(index, queries: np.ndarray, k: int = K) -> np.ndarray | None:
    """Exact top-k ids [q, k] (-1 padded) among an IVF-Flat or HNSW index's live vectors, read
    from the index itself (every list probed; the graph's flat storage, masked vectors left out);
    None for another kind."""
    import faiss

    from .hnsw import is_hnsw, search_subset

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if is_hnsw(index):  # the graph's flat storage, scanned over the live (unmasked) ids
        id_map = faiss.vector_to_array(index.id_map)
        return search_subset(index, queries, k, id_map[id_map >= 0])[1]
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat):
        return None
    search = getattr(index, "search_numpy", index.search)  # see index/filters.py on torch_utils
    return search(queries, k, params=faiss.SearchParametersIVF(nprobe=ivf.nlist))[1]


def exact_ids(gallery, vector: np.ndarray, k: int = K) -> np.ndarray | None:
    """The exact top-k ids of one query among a GalleryIndex's live vectors; None for an exact index."""
    if gallery.full is not None:  # IVF-PQ: its full vectors
        from .filters import search_subset

        return search_subset(gallery.index, gallery.full, vector[None], k, _live_ids(gallery))[1][0]
    found = exact_top(gallery.index, vector[None], k)
    return None if found is None else found[0][found[0] >= 0]


@functools.lru_cache(maxsize=2)  # per generation, not per measured query
def _live_ids(gallery) -> np.ndarray:
    return np.fromiter((row[0] for row in gallery.db.execute("SELECT id FROM images")), np.int64)


def load_served(index_dir: Path, dim: int) -> np.ndarray | None:
    """The query vectors a server kept in INDEX_DIR (at least MIN_SAMPLES of dimension `dim`), else None."""
    path = Path(index_dir) / SERVED_QUERIES
    try:
        queries = np.load(path)
    except (OSError, ValueError):
        return None
    if queries.ndim != 2 or queries.shape[1] != dim or len(queries) < MIN_SAMPLES:
        return None
    return np.ascontiguousarray(queries, dtype=np.float32)


class ServedRecall:
    def __init__(self, index_dir: Path | str, interval_s: float = 1.0):
        self.dir, self.interval_s = Path(index_dir), interval_s
        self._pending: queue.Queue = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._generation: str | None = None
        self._recalls: deque[float] = deque(maxlen=WINDOW)
        self._measured = 0
        self._warned: str | None = None
        self._last = -float("inf")
        self._kept: deque[np.ndarray] = deque(maxlen=KEEP)
        self._thread: threading.Thread | None = None
        self._unsaved = False

    def offer(self, gallery, vector: np.ndarray | None) -> None:
        """Take this query for measuring if the interval since the last one has passed; never waits."""
        now = time.monotonic()
        if vector is None or not self.interval_s:
            return
        with self._lock:  # request threads call this at once
            if now - self._last < self.interval_s:
                return
            self._last = now
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="served-recall", daemon=True)
                self._thread.start()
        try:
            self._pending.put_nowait((gallery, np.asarray(vector, np.float32).copy()))
        except queue.Full:
            pass

    def stats(self) -> dict:
        with self._lock:
            recalls = list(self._recalls)
            out = {"interval_s": self.interval_s, "generation": self._generation, "measured": self._measured}
        if recalls:
            out.update(recall_at_10=float(np.mean(recalls)), window=len(recalls))
        return out

    def _work(self) -> None:
        while True:
            gallery, vector = self._pending.get()
            try:
                self._measure(gallery, vector)
            except Exception as error:  # a query's measurement never takes the server down
                log.warning("served recall: could not measure a query: %s", error)

    def _measure(self, gallery, vector: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(1)  # a background check: one core at most, as a request thread
        exact = exact_ids(gallery, vector)
        if exact is None:
            return
        served = [hit.id for hit in gallery.search(vector[None], K)[0]]
        recall = len(set(served) & set(exact.tolist())) / max(1, min(K, len(exact)))
        with self._lock:
            if gallery.generation != self._generation:
                self._generation, self._measured = gallery.generation, 0
                self._recalls.clear()
            self._recalls.append(recall)
            self._measured += 1
            self._kept.append(vector)
            window, mean = len(self._recalls), float(np.mean(self._recalls))
        target = gallery.manifest["index"].get("target_recall")
        if target and window >= MIN_SAMPLES and mean < target and self._warned != gallery.generation:
            self._warned = gallery.generation
            log.warning(
                "served recall@10 is %.3f on the last %d sampled queries of %s, below the build's target %.2f: "
                "these queries are less like the gallery than the build's sample; `metrix build-index --retune` "
                "tunes on them (kept in %s), `metrix serve --nprobe / --ef-search` searches wider now",
                mean,
                window,
                gallery.generation,
                target,
                self.dir / SERVED_QUERIES,
            )
        if self._measured % MIN_SAMPLES == 0:
            self._save()

    def _save(self) -> None:
        with self._lock:
            kept = np.stack(self._kept)
        tmp = self.dir / f".{SERVED_QUERIES}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                np.save(f, kept)
            os.replace(tmp, self.dir / SERVED_QUERIES)
        except OSError as error:  # a read-only index folder: measured, not kept
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if not self._unsaved:
                log.warning("served recall: cannot keep the sampled queries in %s: %s", self.dir, error)
            self._unsaved = True
