"""Search an index from Python, as the CLI and the service do (no torch, no server):

    from metrix import Index
    gallery = Index.open("indexes/gallery")
    for hit in gallery.search("query.jpg", k=8):
        print(hit.rank, hit.score, hit.path, hit.label)

`image` is a file path, a PIL image or an RGB uint8 array [H, W, 3] (or search by `id=`, more like
a gallery image, or by `vector=`, an embedding of the model's); `box` searches a region of it, `labels` / `path_prefix` search exactly within them, `right` / `wrong` are relevance feedback
(ids or gallery paths). `gallery.embed(images)` gives the model's embeddings alone.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .filters import SearchFilter
from .query import Refinement, check_probability, checked_vector, resolve_ids, search_image, search_like, search_vector
from .store import GalleryIndex, open_with_model


@dataclass(frozen=True)
class Result:
    rank: int
    id: int
    score: float  # cosine similarity to the query
    path: str  # relative to the gallery root
    label: str  # the top-level folder ("" for the root)
    width: int
    height: int
    match_probability: float | None = None  # calibrated on a labelled gallery (index/match_probability.py)


class Index:
    """An opened index (its current, verified generation) and its model."""

    def __init__(self, index: GalleryIndex, embedder):
        self.index, self.embedder = index, embedder

    @classmethod
    def open(cls, folder: Path | str, model: Path | str | None = None) -> Index:
        """GalleryIndexError (one line) for a folder that is no index, or a model that is not its own."""
        return cls(*open_with_model(folder, model))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def generation(self) -> str:
        return self.index.generation

    def search(
        self,
        image=None,
        k: int = 10,
        box=None,
        labels=(),
        path_prefix: str = "",
        right=(),
        wrong=(),
        id: int | str | None = None,
        vector=None,
        min_probability: float = 0.0,
    ) -> list[Result]:
        """The k gallery images most like `image`, or like gallery image `id` (an id or a gallery
        path; the image itself left out), or like `vector` (an L2-normalised embedding of the
        index's dimension, from a run of its model elsewhere), whose files are still as indexed;
        `min_probability` leaves out results less likely a match (index/match_probability.py)."""
        if sum(x is not None for x in (image, id, vector)) != 1:
            raise ValueError("search: give one of image, id or vector")
        refinement = Refinement(
            tuple(box) if box is not None else None,
            SearchFilter(tuple(labels), path_prefix),
            resolve_ids(self.index, right, "right"),
            resolve_ids(self.index, wrong, "wrong"),
            check_probability(min_probability),
        )
        if id is not None:
            answer = search_like(self.index, resolve_ids(self.index, [id], "id")[0], k, refinement)
        elif vector is not None:
            answer = search_vector(self.index, checked_vector(self.index, vector), k, refinement)
        else:
            name, data = _encoded(image)
            answer = search_image(self.index, self.embedder, name, k, data, refinement)
        return [
            Result(rank, h.id, h.score, h.path, h.label, h.width, h.height, h.match_probability)
            for rank, h in enumerate(answer.hits, 1)
        ]

    def embed(self, images) -> np.ndarray:
        """[N, D] L2-normalised embeddings of images (paths, PIL images or RGB uint8 arrays)."""
        from metrix.export.runtime import load_for_model

        arrays = []
        for image in images:
            name, data = _encoded(image)
            arrays.append(load_for_model(name, self.embedder.metadata, data=data)[0])
        return self.embedder.embed(np.stack(arrays))

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _encoded(image) -> tuple[str, bytes | None]:
    """(a name, the bytes for the one decoder): files are read by it; pictures in memory are handed
    over losslessly as PNG."""
    if isinstance(image, (str, Path)):
        return str(image), None
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if not isinstance(image, Image.Image):
        raise TypeError(f"image: a path, a PIL image or an RGB uint8 array, not {type(image).__name__}")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "image.png", buffer.getvalue()
