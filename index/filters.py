"""Restricting a search to part of the gallery: some labels (top-level folders) and/or a path
prefix. The matching ids come from the index's SQLite metadata; the search is then exact over
exactly those ids, whatever the index kind:

- flat: faiss's own search with an ID selector (an exact scan that skips every other id);
- IVF-Flat: the same with every list probed, so no matching vector is missed (its vectors are
  stored whole, so the scores are exact too);
- IVF-PQ: the subset's full vectors, read from the memory-mapped FullVectors in blocks and scored
  exactly (the codes are approximate);
- HNSW: a scan of the graph's flat storage restricted to the subset's rows (index/hnsw.py), not a
  filtered walk of the graph, which misses members of a small subset.

A filter thus costs about one exact scan of the matching images (plus a pass over the ids of an
IVF index), which is why it is exact rather than a post-filter of an approximate top k, which
could return fewer than k hits or miss the best ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Full vectors scored at a time in an IVF-PQ filtered search (about 32 MB of 512-d float32).
BLOCK = 16384


@dataclass(frozen=True)
class SearchFilter:
    labels: tuple[str, ...] = ()  # any of these top-level folders ("" is the gallery's root)
    path_prefix: str = ""  # paths (relative, "/" separators) that start with this string

    def __bool__(self) -> bool:
        return bool(self.labels or self.path_prefix)

    def describe(self) -> str:
        parts = []
        if self.labels:
            parts.append("labels " + ", ".join(label or "(root)" for label in self.labels))
        if self.path_prefix:
            parts.append(f"paths starting with {self.path_prefix!r}")
        return " and ".join(parts)

    def where(self) -> tuple[str, list]:
        """An SQL condition on the images table and its parameters."""
        clauses, params = [], []
        if self.labels:
            clauses.append(f"label IN ({','.join('?' * len(self.labels))})")
            params += list(self.labels)
        if self.path_prefix:
            # a range on the (indexed, case-sensitive) path rather than LIKE, whose _ and % are wildcards
            clauses.append("path >= ? AND path < ?")
            params += [self.path_prefix, self.path_prefix[:-1] + chr(ord(self.path_prefix[-1]) + 1)]
        return " AND ".join(clauses) or "1", params


def matching_ids(database, search_filter: SearchFilter) -> np.ndarray:
    """The ids (int64, ascending) of the images the filter lets through."""
    where, params = search_filter.where()
    rows = database.execute(f"SELECT id FROM images WHERE {where} ORDER BY id", params).fetchall()
    return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))


def search_subset(index, full, vectors: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k of each query among `ids` only: (scores float32 [q, k], ids int64 [q, k]),
    padded with -inf / -1 where fewer match."""
    import faiss

    k = min(k, len(ids))
    if k == 0:
        return np.full((len(vectors), 0), -np.inf, np.float32), np.full((len(vectors), 0), -1, np.int64)
    if full is not None:
        return _exact_over(full, vectors, k, ids)
    from .hnsw import is_hnsw, search_subset

    if is_hnsw(index):
        return search_subset(index, vectors, k, ids)
    selector = faiss.IDSelectorBatch(ids)
    if isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=index.nlist)
    else:
        params = faiss.SearchParameters(sel=selector)
    # faiss.contrib.torch_utils (which pytorch-metric-learning imports) replaces `search` with a
    # wrapper that takes no params, and keeps faiss's own as `search_numpy`
    return getattr(index, "search_numpy", index.search)(vectors, k, params=params)


def _exact_over(full, vectors: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k over the full vectors of `ids`, a block of them at a time."""
    best_scores = np.full((len(vectors), 0), -np.inf, np.float32)
    best_ids = np.full((len(vectors), 0), -1, np.int64)
    for start in range(0, len(ids), BLOCK):
        block = ids[start : start + BLOCK]
        scores = vectors @ full.lookup(block).T
        scores = np.concatenate([best_scores, scores], axis=1)
        candidates = np.concatenate([best_ids, np.broadcast_to(block, (len(vectors), len(block)))], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_ids = np.take_along_axis(candidates, keep, axis=1)
    return best_scores.astype(np.float32), best_ids
