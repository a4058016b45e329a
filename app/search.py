"""One query, as the page and the JSON API both run it (index/query.py), all from the one
generation the query started on, timed; batched with concurrent queries where the server has a
Batcher (app/batching.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from metrix.index.live import LiveIndex
from metrix.index.query import Refinement, explain_hit, search_image
from metrix.index.store import REBUILD_HINT, Hit

from .batching import Batcher, one_search_thread

DEFAULT_K, MAX_K = 8, 50
#: Larger uploads are refused (HTTP 413) before they are decoded.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024


@dataclass
class Result:
    generation: str
    images: int  # in the generation searched
    hits: list[Hit]
    left_out: list[tuple[str, str]]  # (path, "missing" | "changed" | ...)
    seconds: float
    refinement: Refinement = Refinement()

    def status(self) -> str:
        line = f"{len(self.hits)} most similar of {self.images:,} gallery images."
        if applied := self.refinement.describe():
            line += f" ({applied}.)"
        if self.left_out:
            line += (
                f" {len(self.left_out)} more left out: moved, deleted or changed since indexing "
                f"(e.g. {self.left_out[0][0]}); {REBUILD_HINT}."
            )
        return line


def run_query(
    live: LiveIndex,
    name: str | Path,
    k: int,
    data: bytes | None = None,
    refinement: Refinement = Refinement(),
    batcher: Batcher | None = None,
) -> Result:
    """Raises metrix.images.ImageDecodeError for an upload that is not a usable image (or box),
    GalleryIndexError for a feedback mark that is not in the index. With a `batcher`, the same
    answer, embedded and searched together with the queries that arrive with it."""
    start = time.perf_counter()
    snapshot = live.snapshot()
    if batcher is None:
        one_search_thread()
        answer = search_image(snapshot.index, snapshot.embedder, name, k, data, refinement)
    else:
        answer = batcher.search(snapshot, name, k, data, refinement)
    if not refinement.search_filter:  # a filtered search is exact already
        live.recall.offer(snapshot.index, answer.vector)
    return Result(
        snapshot.index.generation,
        len(snapshot.index),
        answer.hits,
        answer.left_out,
        time.perf_counter() - start,
        refinement,
    )


def explain_match(live: LiveIndex, name: str | Path, data: bytes | None, box, image_id: int):
    """index.query.explain_hit on the current generation."""
    snapshot = live.snapshot()
    return explain_hit(snapshot.index, snapshot.embedder, name, data, box, image_id)
