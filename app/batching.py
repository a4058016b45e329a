"""Micro-batching of concurrent queries: one onnxruntime call and one faiss search for the queries
that arrive together, instead of one of each per query.

Each query is decoded and preprocessed in its caller's thread, so a bad upload fails there, alone,
with its own one-line error (and its feedback marks are looked up there too). The prepared input
then joins a queue. One worker thread takes the queue's first query, waits at most `wait_ms`
after it arrived for more (or until `max_batch` are queued), embeds them all with one call to the
model and searches them with one call to the index, and hands each caller back its own hits. A
query thus waits at most `wait_ms` longer than alone; with `wait_ms` 0 only queries that arrive
while the worker is busy share a batch.

Every query is answered from the snapshot (index generation and model) it took when it started,
as without batching: a batch spanning a switch to a new generation is embedded once per model and
searched once per generation. Queries with different filters or k are searched in separate faiss
calls within the batch (one per (generation, filter, k)): searching for the largest k and trimming
could order tied scores differently, or re-rank an IVF-PQ index over more candidates, than the
query alone would. Most traffic (the page's and the API's default k, no filter) is one group.

The worker does what GalleryIndex.search_present's first round does (k + FIRST_ROUND_EXTRA candidates) for the
whole batch; the checks that each hit's file is still as indexed run in the caller's thread, and a
query with too many hits left out is searched again alone by search_present itself.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from metrix.export.runtime import load_for_model
from metrix.index.feedback import rocchio
from metrix.index.filters import SearchFilter, matching_ids
from metrix.index.live import Snapshot
from metrix.index.query import Refinement, likely_only, marked_vectors
from metrix.index.store import FIRST_ROUND_EXTRA, Answer, GalleryIndex, Hit

from .metrics import record_batch

DEFAULT_WAIT_MS, DEFAULT_MAX_BATCH = 0.0, 32


@dataclass(eq=False)
class _Query:
    snapshot: Snapshot
    array: np.ndarray  # the model's uint8 input [S, S, 3]
    fetch: int
    search_filter: SearchFilter
    marks: tuple[np.ndarray, np.ndarray] | None  # (right, wrong) vectors for relevance feedback
    arrived: float = field(default_factory=time.monotonic)
    answer: Future = field(default_factory=Future)  # -> (vector, hits, images searched among)
    vector: np.ndarray | None = None


class Batcher:
    """Queries of one server, batched. `search` is called from many threads; `close` answers what
    is queued, stops the worker, and leaves later queries to run alone in their own thread."""

    def __init__(self, wait_ms: float = DEFAULT_WAIT_MS, max_batch: int = DEFAULT_MAX_BATCH):
        if wait_ms < 0 or max_batch < 1:
            raise ValueError(f"batching: wait_ms must be >= 0 and max_batch >= 1, not {wait_ms} and {max_batch}")
        self.wait_ms, self.max_batch = wait_ms, max_batch
        self._queue: list[_Query] = []
        self._changed = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None
        self._sizes: Counter[int] = Counter()

    def search(self, snapshot: Snapshot, name, k: int, data: bytes | None, refinement: Refinement) -> Answer:
        """What index.query.search_image returns for the query on `snapshot`. Raises
        ImageDecodeError and GalleryIndexError as it does, from this thread."""
        index = snapshot.index
        array, _ = load_for_model(name, snapshot.embedder.metadata, data, refinement.box)
        marks = None
        if refinement.right or refinement.wrong:
            marks = (marked_vectors(index, refinement.right, "right"), marked_vectors(index, refinement.wrong, "wrong"))
        query = _Query(snapshot, array, k + FIRST_ROUND_EXTRA, refinement.search_filter, marks)
        if not self._enqueue(query):
            self._run([query])
        vector, hits, total = query.answer.result()
        answer = first_round(index, vector, hits, k, refinement.search_filter, complete=query.fetch >= total)
        return likely_only(answer, refinement.min_probability)

    def stats(self) -> dict:
        """The settings, how many batches of each size were run, and how many queries wait now."""
        with self._changed:
            sizes, queued = sorted(self._sizes.items()), len(self._queue)
        return {
            "wait_ms": self.wait_ms,
            "max_batch": self.max_batch,
            "batches": sum(count for _, count in sizes),
            "queries": sum(size * count for size, count in sizes),
            "sizes": {str(size): count for size, count in sizes},
            "queued": queued,
        }

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def close(self, timeout: float = 30) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def _enqueue(self, query: _Query) -> bool:
        with self._changed:
            if self._closed:
                return False
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="metrix-batcher", daemon=True)
                self._worker.start()
            self._queue.append(query)
            self._changed.notify_all()
        return True

    def _next_batch(self) -> list[_Query]:
        """The next batch; [] once closed with nothing queued. Once closed, what is queued goes at once."""
        with self._changed:
            while not self._queue and not self._closed:
                self._changed.wait()
            due = self._queue[0].arrived + self.wait_ms / 1000 if self._queue else 0.0
            while len(self._queue) < self.max_batch and not self._closed:
                left = due - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            batch, self._queue[: self.max_batch] = self._queue[: self.max_batch], []
            return batch

    def _work(self) -> None:
        one_search_thread()
        while batch := self._next_batch():
            self._run(batch)

    def _run(self, batch: list[_Query]) -> None:
        with self._changed:
            self._sizes[len(batch)] += 1
        try:
            start = time.perf_counter()
            _embed(batch)
            embedded = time.perf_counter()
            _search([query for query in batch if not query.answer.done()])
            record_batch(len(batch), embedded - start, time.perf_counter() - embedded)
        except Exception as error:  # a caller must never wait for an answer that will not come
            _fail(batch, error)


def one_search_thread() -> None:
    """faiss searches on one OpenMP thread in the calling thread (OpenMP's thread count is a
    per-thread setting): in a server, concurrent requests use the cores, and the OpenMP team that a
    search leaves spinning fights onnxruntime's thread pool for them. Measured on 2 AMD EPYC
    cores, a whole query in process on a 100,000-image HNSW index: 5.8 ms with faiss's default of 2
    threads, 1.7 ms with 1 (docs/app.md)."""
    import faiss

    faiss.omp_set_num_threads(1)


def _groups(queries: list[_Query], key) -> list[list[_Query]]:
    grouped: dict[object, list[_Query]] = {}
    for query in queries:
        grouped.setdefault(key(query), []).append(query)
    return list(grouped.values())


def _fail(queries: list[_Query], error: Exception) -> None:
    for query in queries:
        if not query.answer.done():
            query.answer.set_exception(error)


def _embed(batch: list[_Query]) -> None:
    """One model call per model in the batch (one, unless a new generation brought another)."""
    for queries in _groups(batch, lambda query: id(query.snapshot.embedder)):
        try:
            vectors = queries[0].snapshot.embedder.embed(np.stack([query.array for query in queries]))
        except Exception as error:
            _fail(queries, error)
            continue
        for query, vector in zip(queries, vectors):
            query.vector = vector if query.marks is None else rocchio(vector, *query.marks)


def _search(batch: list[_Query]) -> None:
    """One faiss search per (generation, filter, fetch) in the batch."""
    for queries in _groups(batch, lambda query: (id(query.snapshot.index), query.search_filter, query.fetch)):
        index, search_filter = queries[0].snapshot.index, queries[0].search_filter
        try:
            only = matching_ids(index.db, search_filter) if search_filter else None
            found = index.search(np.stack([query.vector for query in queries]), queries[0].fetch, only)
        except Exception as error:
            _fail(queries, error)
            continue
        total = len(index) if only is None else len(only)
        for query, hits in zip(queries, found):
            query.answer.set_result((query.vector, hits, total))


def first_round(
    index: GalleryIndex, vector: np.ndarray, hits: list[Hit], k: int, search_filter: SearchFilter, complete: bool
) -> Answer:
    """GalleryIndex.search_present's answer from its first round's hits, fetched in a batch
    (`complete`: they are all the images searched among); where that round leaves fewer than k
    hits present and there are more, search_present runs the query again alone."""
    left_out: dict[str, str] = {}
    present = index.present(hits, left_out)
    if len(present) >= k or complete:
        return Answer(present[:k], list(left_out.items()), vector)
    return index.search_present(vector, k, search_filter)
