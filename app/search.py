"""One query, as the page and the JSON API both run it (index/query.py), all from the one
generation the query started on, timed; batched with concurrent queries where the server has a
Batcher (app/batching.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from metrix.export.runtime import ModelError
from metrix.index.live import LiveIndex, Snapshot
from metrix.index.query import (
    Refinement,
    checked_vector,
    explain_hit,
    marked_paths,
    search_image,
    search_like,
    search_vector,
)
from metrix.index.store import REBUILD_HINT, Answer, Hit

from .batching import Batcher, one_search_thread

DEFAULT_K, MAX_K = 8, 50
#: Larger uploads are refused (HTTP 413) before they are decoded.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024


def public_location(root: str) -> str:
    """Where the gallery lives, as a client may be told: an object store URL as it is, a folder by its
    name only (the server's folders are none of a client's business)."""
    return root if "://" in root else Path(root).name


def public_model(model: dict) -> dict:
    """The index's model record with its files and training folder named, not their server paths."""
    public = dict(model)
    for key in ("path", "checkpoint"):
        if public.get(key):
            public[key] = Path(public[key]).name
    if ":" in public.get("training_data", ""):  # "name:root" (export/runtime.py ModelMetadata)
        name, root = public["training_data"].split(":", 1)
        public["training_data"] = f"{name}:{public_location(root)}"
    return public


@dataclass
class Result:
    generation: str
    images: int  # in the generation searched
    hits: list[Hit]
    left_out: list[tuple[str, str]]  # (path, "missing" | "changed" | ...)
    seconds: float
    refinement: Refinement = Refinement()

    @classmethod
    def of(cls, snapshot: Snapshot, answer: Answer, seconds: float, refinement: Refinement) -> Result:
        index = snapshot.index
        return cls(index.generation, len(index), answer.hits, answer.left_out, seconds, refinement)

    @property
    def no_good_match(self) -> bool:
        """Nothing left once the results less likely a match than asked were left out."""
        return not self.hits and self.refinement.min_probability > 0

    def status(self) -> str:
        if self.no_good_match:
            return (
                f"No good match among {self.images:,} gallery images: none is a match with probability "
                f"{self.refinement.min_probability:g} or more."
            )
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
    GalleryIndexError for a feedback mark that is not in the index, IndexUnavailable when no
    generation verifies (LiveIndex.answer). With a `batcher`, the same answer, embedded and
    searched together with the queries that arrive with it."""
    start = time.perf_counter()

    def query(snapshot: Snapshot) -> tuple[Snapshot, Answer]:
        if batcher is None:
            one_search_thread()
            return snapshot, search_image(snapshot.index, snapshot.embedder, name, k, data, refinement)
        return snapshot, batcher.search(snapshot, name, k, data, refinement)

    snapshot, answer = live.answer(query)
    if not refinement.search_filter:  # a filtered search is exact already
        live.recall.offer(snapshot.index, answer.vector)
    if live.kept.limit > 0:
        right, wrong = marked_paths(snapshot.index, refinement)
        live.kept.keep(data, Path(name).name, refinement.box, right, wrong)
    return Result.of(snapshot, answer, time.perf_counter() - start, refinement)


def run_without_upload(
    live: LiveIndex, k: int, refinement: Refinement = Refinement(), image_id: int | None = None, vector=None
) -> Result:
    """More like gallery image `image_id`, or the search of a client's `vector` (ValueError, one
    line, where it is not an L2-normalised vector of the index's dimension): nothing to embed, so
    never batched."""
    start = time.perf_counter()

    def query(snapshot: Snapshot) -> tuple[Snapshot, Answer]:
        one_search_thread()
        if image_id is not None:
            return snapshot, search_like(snapshot.index, image_id, k, refinement)
        return snapshot, search_vector(snapshot.index, checked_vector(snapshot.index, vector), k, refinement)

    snapshot, answer = live.answer(query)
    return Result.of(snapshot, answer, time.perf_counter() - start, refinement)


def explain_match(live: LiveIndex, name: str | Path, data: bytes | None, box, image_id: int):
    """index.query.explain_hit on the generation served."""

    def explain(snapshot: Snapshot):
        try:
            return explain_hit(snapshot.index, snapshot.embedder, name, data, box, image_id)
        except ModelError as error:  # it names the model's file: the server's business, not the client's
            raise ModelError(str(error).replace(str(snapshot.embedder.path), "the model served")) from None

    return live.answer(explain)
