"""One image query against an opened index, as the CLI, the JSON API and the page all run it: the
picture (or a region of it) decoded by the one decoder and embedded by the index's model, moved
by relevance feedback, searched (within a filter, exactly) for hits whose files are still as
indexed; and why a hit matched (export/explain.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .feedback import rocchio
from .filters import SearchFilter
from .store import REBUILD_HINT, Answer, GalleryIndex, GalleryIndexError, Hit


@dataclass(frozen=True)
class Refinement:
    """What narrows or corrects a query beyond its picture."""

    box: tuple[float, float, float, float] | None = None  # metrix.images.Box: search this region only
    search_filter: SearchFilter = field(default_factory=SearchFilter)
    right: tuple[int, ...] = ()  # ids marked as right answers
    wrong: tuple[int, ...] = ()  # ids marked as wrong answers
    min_probability: float = 0.0  # results less likely a match are left out (index/match_probability.py)

    @classmethod
    def from_form(
        cls,
        box: str | None = None,
        labels=(),
        path_prefix: str | None = None,
        right=(),
        wrong=(),
        min_probability: float | None = None,
    ) -> Refinement:
        """The page's and the API's form fields -> a Refinement: the box as text "x0,y0,x1,y1"
        (empty: the whole picture), ids as integers or text (several per item, separated by
        commas). ValueError (one line) for a bad box or id."""
        from metrix.images import parse_box

        return cls(
            parse_box(box) if box and box.strip() else None,
            SearchFilter(tuple(labels or ()), path_prefix or ""),
            parse_ids(right, "right"),
            parse_ids(wrong, "wrong"),
            check_probability(min_probability or 0.0),
        )

    def describe(self) -> str:
        """What was applied, for a status line ("" when nothing)."""
        from metrix.images import format_box

        parts = []
        if self.box is not None:
            parts.append(f"region {format_box(self.box)}")
        if self.search_filter:
            parts.append(self.search_filter.describe())
        if self.right or self.wrong:
            parts.append(f"feedback {len(self.right)} right, {len(self.wrong)} wrong")
        if self.min_probability > 0:
            parts.append(f"match probability at least {self.min_probability:g}")
        return "; ".join(parts)


def check_probability(value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError(f"min_probability: {value} is not between 0 and 1")
    return float(value)


def likely_only(answer: Answer, min_probability: float) -> Answer:
    """The answer without the hits whose calibrated match probability is below `min_probability`
    (an uncalibrated gallery's hits have none, and stay)."""
    if min_probability <= 0:
        return answer
    hits = [hit for hit in answer.hits if hit.match_probability is None or hit.match_probability >= min_probability]
    return Answer(hits, answer.left_out, answer.vector)


def parse_ids(values, what: str) -> tuple[int, ...]:
    """Ids from form fields: each an integer, or text of one id or several separated by commas."""
    items = [item.strip() for value in values or () for item in str(value).split(",") if item.strip()]
    if not all(item.isdigit() for item in items):
        raise ValueError(f"{what}: expected image ids (integers), got {', '.join(items)[:60]!r}")
    return tuple(int(item) for item in items)


def embed_query(embedder, name: str | Path, data: bytes | None = None, box=None) -> np.ndarray:
    """The query's embedding [d]. Raises metrix.images.ImageDecodeError for a bad picture or box."""
    from metrix.export.runtime import load_for_model

    array, _ = load_for_model(name, embedder.metadata, data=data, box=box)
    return embedder.embed(array[None])[0]


def search_image(
    index: GalleryIndex,
    embedder,
    name: str | Path,
    k: int,
    data: bytes | None = None,
    refinement: Refinement = Refinement(),
) -> Answer:
    return search_vector(index, embed_query(embedder, name, data, refinement.box), k, refinement)


def search_vector(index: GalleryIndex, vector: np.ndarray, k: int, refinement: Refinement = Refinement()) -> Answer:
    """The search of an embedding (a query's, a gallery image's, a client's): moved by the marks,
    within the filter, hits whose files are still as indexed."""
    if refinement.right or refinement.wrong:
        vector = rocchio(
            vector, marked_vectors(index, refinement.right, "right"), marked_vectors(index, refinement.wrong, "wrong")
        )
    return likely_only(index.search_present(vector, k, refinement.search_filter), refinement.min_probability)


def search_like(index: GalleryIndex, image_id: int, k: int, refinement: Refinement = Refinement()) -> Answer:
    """More like gallery image `image_id`: its stored vector searched, the image itself left out."""
    vector = marked_vectors(index, (image_id,), "image")[0]
    answer = search_vector(index, vector, k + 1, refinement)
    return Answer([hit for hit in answer.hits if hit.id != image_id][:k], answer.left_out, answer.vector)


#: How far from 1 a client's vector's L2 norm may be: the exported models' embeddings are unit vectors.
NORM_TOLERANCE = 1e-2


def checked_vector(index: GalleryIndex, values) -> np.ndarray:
    """A client's embedding as a float32 [d] unit vector; ValueError (one line) for another
    dimension than the index's, a value that is not finite, or a vector that is not L2-normalised."""
    try:
        vector = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError("vector: expected a list of numbers") from None
    dim = index.manifest["dim"]
    if vector.ndim != 1 or vector.shape[0] != dim:
        raise ValueError(
            f"vector: {vector.shape[0] if vector.ndim == 1 else vector.shape} values, the index's model gives {dim}"
        )
    if not np.isfinite(vector).all():
        raise ValueError("vector: holds NaN or infinite values")
    norm = float(np.linalg.norm(vector))
    if abs(norm - 1) > NORM_TOLERANCE:
        raise ValueError(
            f"vector: L2 norm {norm:.4g}, not 1; send the model's normalised `embeddings` output (or divide by the norm)"
        )
    return vector


def marked_vectors(index: GalleryIndex, ids, what: str) -> np.ndarray:
    try:
        return index.vectors(ids)
    except KeyError as error:
        raise GalleryIndexError(f"{what}: {error.args[0]}") from None


def marked_paths(index: GalleryIndex, refinement: Refinement) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The gallery paths of the right and wrong marks (ids the index does not hold left out)."""
    if not (refinement.right or refinement.wrong):
        return (), ()
    rows = index.rows({*refinement.right, *refinement.wrong})
    return tuple(tuple(rows[i][0] for i in ids if i in rows) for ids in (refinement.right, refinement.wrong))


def resolve_ids(index: GalleryIndex, items, what: str) -> tuple[int, ...]:
    """Gallery images named by id or by path (relative to the gallery root) -> their ids."""
    ids = []
    for item in items:
        item = str(item).strip()
        if item.isdigit():
            ids.append(int(item))
            continue
        row = index.db.execute("SELECT id FROM images WHERE path = ?", (item,)).fetchone()
        if row is None:
            raise GalleryIndexError(f"{what}: {item!r} is not an image of {index.dir}")
        ids.append(row[0])
    return tuple(ids)


def explain_hit(index: GalleryIndex, embedder, name: str | Path, data: bytes | None, box, image_id: int):
    """(the gallery image's Hit, scored; export.explain.Explanation) for the query (or its region
    `box`) and gallery image `image_id`. LookupError (one line) when that image is not in the
    index or its file is not as indexed; ModelError for a model exported without cells;
    ImageDecodeError for a bad query."""
    from metrix.export.explain import explain
    from metrix.export.runtime import load_for_model

    row = index.rows([image_id]).get(image_id)
    if row is None:
        raise LookupError(f"image {image_id}: not in the index ({index.generation})")
    hit = Hit(image_id, 0.0, *row)
    if (reason := index.stale(hit)) is not None:
        raise LookupError(f"{hit.path}: {reason} since indexing; {REBUILD_HINT}")
    query, _ = load_for_model(name, embedder.metadata, data, box)
    try:
        result, _ = load_for_model(index.source.name(hit.path), embedder.metadata, index.source.read(hit.path))
    except OSError as failure:
        raise LookupError(f"{hit.path}: cannot read ({failure.strerror or failure})") from None
    explanation = explain(embedder, query, result)
    hit.score = explanation.score
    return hit, explanation
