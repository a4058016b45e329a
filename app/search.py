"""One query, as the page and the JSON API both run it: the upload decoded by the one decoder,
embedded by the index's model, the nearest hits whose files are still as indexed, all from the one
generation the query started on."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from metrix.export.runtime import load_for_model
from metrix.index.live import LiveIndex
from metrix.index.store import REBUILD_HINT, Hit

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

    def status(self) -> str:
        line = f"{len(self.hits)} most similar of {self.images:,} gallery images."
        if self.left_out:
            line += (f" {len(self.left_out)} more left out: moved, deleted or changed since indexing "
                     f"(e.g. {self.left_out[0][0]}); {REBUILD_HINT}.")
        return line


def run_query(live: LiveIndex, name: str | Path, k: int, data: bytes | None = None) -> Result:
    """Raises metrix.images.ImageDecodeError for an upload that is not a usable image."""
    start = time.perf_counter()
    snapshot = live.snapshot()
    query, _ = load_for_model(name, snapshot.embedder.metadata, data=data)
    answer = snapshot.index.search_present(snapshot.embedder.embed(query[None])[0], k)
    return Result(snapshot.index.generation, len(snapshot.index), answer.hits, answer.left_out,
                  time.perf_counter() - start)
