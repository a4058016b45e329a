"""The faiss index after a build: the old generation's index with the removals and the spooled
additions, or, when the plan's kind differs from the old one (a gallery crossing FLAT_LIMIT or its
memory budget), a new index of the planned kind holding the old vectors that remain and the new
ones. An HNSW index masks its removals, and is built afresh once too many are masked
(index/hnsw.py). IVF-PQ indexes keep only codes, so their full vectors are written beside them, in every
generation, for the exact re-rank and for any later change of kind (vectors.FullVectors)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np

from .hnsw import REBUILD_SHARE, hnsw_index, mask, masked
from .spool import VectorSpool
from .vectors import FullVectors, flat_index, ivf_index, ivfpq_index, stored

BLOCK = 65_536  # vectors per add: bounded memory when copying out of a memory map


def updated_index(old, removed_ids: list[int], spool: VectorSpool, plan, staging: Path):
    """(index, FullVectors written to `staging` or None). `old`: the previous GalleryIndex or None."""
    removed = np.array(removed_ids, dtype=np.int64)
    old_kind = old.manifest["index"]["kind"] if old is not None else None
    vectors = gallery_blocks(old, removed, spool)
    full = None
    if plan.kind == "ivfpq":
        ids = np.concatenate(
            [ids for ids, _ in _kept(old, removed, ids_only=True)] + [ids for ids, _ in spool.chunks()]
        )
        full = FullVectors.write(staging, ids, (block for _, block in vectors()))
    # the same kind (and for IVF-PQ the same codes) as before: update the old index in place
    same = old_kind == plan.kind and (
        plan.kind not in ("ivfpq", "hnsw") or old.manifest["index"]["type"] == plan.factory
    )
    if same and plan.kind == "hnsw" and _masked_share(old.index, removed, len(spool)) > REBUILD_SHARE:
        same = False  # a fresh graph of the live vectors
    if same:
        index = old.index
        if len(removed) and plan.kind == "hnsw":
            mask(index, removed)
        elif len(removed):
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

    total = sum(len(ids) for ids, _ in _kept(old, removed, ids_only=True)) + len(spool)
    return fresh_index(plan, vectors, total, spool.dim), None


def gallery_blocks(old, removed, spool: VectorSpool):
    """A function giving, on each call, the (ids, vectors) blocks the new generation holds: the old
    generation's that stay, then the spooled new ones."""
    removed = np.asarray(removed, dtype=np.int64)
    return lambda: chain(_kept(old, removed), spool.chunks())


def fresh_index(plan, blocks, total: int, dim: int):
    """A new flat, IVF-Flat or HNSW index of the `total` vectors that `blocks()` yields."""
    if plan.kind == "flat":
        index = flat_index(dim)
    elif plan.kind == "hnsw":
        index = hnsw_index(dim, plan.hnsw_m, plan.ef_construction)
    else:
        if total == 0:
            raise ValueError("an IVF index needs vectors to train on; the gallery has none yet")
        index = ivf_index(_sample(blocks(), total, 64 * plan.nlist), count=total)
    for ids, block in blocks():
        index.add_with_ids(np.ascontiguousarray(block), ids)
    return index


def _masked_share(index, removed: np.ndarray, added: int) -> float:
    """The share of an HNSW graph's vectors that would be masked after these removals and additions."""
    import faiss

    gone = masked(index) + int(np.isin(faiss.vector_to_array(index.id_map), removed).sum())
    return gone / max(1, index.ntotal + added)


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
