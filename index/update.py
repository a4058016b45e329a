"""The faiss index after a build: the old generation's index with the removals and the spooled
additions, or, when the plan's kind differs from the old one (a gallery crossing FLAT_LIMIT or its
memory budget), a new index of the planned kind holding the old vectors that remain and the new
ones. IVF-PQ indexes keep only codes, so their full vectors are written beside them, in every
generation, for the exact re-rank and for any later change of kind (vectors.FullVectors)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np

from .spool import VectorSpool
from .vectors import FullVectors, flat_index, ivf_index, ivfpq_index, stored

BLOCK = 65_536  # vectors per add: bounded memory when copying out of a memory map


def updated_index(old, removed_ids: list[int], spool: VectorSpool, plan, staging: Path):
    """(index, FullVectors written to `staging` or None). `old`: the previous GalleryIndex or None."""
    removed = np.array(removed_ids, dtype=np.int64)
    old_kind = old.manifest["index"]["kind"] if old is not None else None

    def vectors():  # (ids, vectors) of what the new generation holds, in blocks
        return chain(_kept(old, removed), spool.chunks())

    full = None
    if plan.kind == "ivfpq":
        ids = np.concatenate(
            [ids for ids, _ in _kept(old, removed, ids_only=True)] + [ids for ids, _ in spool.chunks()]
        )
        full = FullVectors.write(staging, ids, (block for _, block in vectors()))
    # the same kind (and for IVF-PQ the same codes) as before: update the old index in place
    if old_kind == plan.kind and (plan.kind != "ivfpq" or old.manifest["index"]["type"] == plan.factory):
        index = old.index
        if len(removed):
            index.remove_ids(removed)
        for ids, block in spool.chunks():
            index.add_with_ids(block, ids)
        return index, full
    if plan.kind == "ivfpq":
        index = ivfpq_index(full.vectors, plan)
        for start in range(0, len(full), BLOCK):
            index.add_with_ids(
                np.ascontiguousarray(full.vectors[start : start + BLOCK]), np.asarray(full.ids[start : start + BLOCK])
            )
        return index, full

    dim = spool.dim
    total = sum(len(ids) for ids, _ in _kept(old, removed, ids_only=True)) + len(spool)
    if plan.kind == "flat":
        index = flat_index(dim)
    else:
        if total == 0:
            raise ValueError("an IVF index needs vectors to train on; the gallery has none yet")
        index = ivf_index(_sample(vectors(), total, 64 * plan.nlist), count=total)
    for ids, block in vectors():
        index.add_with_ids(np.ascontiguousarray(block), ids)
    return index, None


def _kept(old, removed: np.ndarray, ids_only: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """The old generation's (ids, vectors) that stay, in blocks: from its full vectors when it has
    them (IVF-PQ), else from the index itself."""
    if old is None:
        return
    if old.full is not None:
        for start in range(0, len(old.full), BLOCK):
            ids = np.asarray(old.full.ids[start : start + BLOCK])
            keep = ~np.isin(ids, removed)
            yield ids[keep], None if ids_only else np.asarray(old.full.vectors[start : start + BLOCK])[keep]
        return
    ids, vectors = stored(old.index)
    keep = ~np.isin(ids, removed)
    yield ids[keep], None if ids_only else vectors[keep]


def _sample(blocks, total: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` of the `total` vectors in `blocks`, uniformly (IVF training)."""
    chosen = np.sort(np.random.default_rng(seed).permutation(total)[:count])
    parts, start = [], 0
    for _, block in blocks:
        rows = chosen[(chosen >= start) & (chosen < start + len(block))] - start
        parts.append(block[rows])
        start += len(block)
    return np.concatenate(parts)
