"""HNSW indexes: faiss's `IndexHNSWFlat` on inner product, inside an `IndexIDMap2` so that its ids
are the gallery's ids. The graph links the full float32 vectors, so scores are exact and only the
neighbours found are approximate; efSearch (the candidates kept while walking the graph) is tuned
at build time to the recall target (index/choose.py) and stored in the manifest.

Removals. faiss's HNSW cannot remove a vector: its neighbours' links would have to be repaired. A
removed vector is therefore masked: its id in the IDMap2 becomes -1, and every search passes a
selector that admits ids >= 0 only, so it is never returned, while it still serves as a waypoint
of the graph (removing it would cut paths through it). The mask lives in the index file itself.
Once more than REBUILD_SHARE of the stored vectors are masked, the next build builds a fresh graph
from the live vectors, so masked vectors never cost more than about 11% of the RAM and of the
search's distance computations.
"""

from __future__ import annotations

import numpy as np

from .plan import HNSW_EF_CONSTRUCTION, HNSW_M

#: Share of masked (removed) vectors above which a build rebuilds the graph: 10% keeps the wasted
#: RAM and search work near a tenth, while a gallery that changes 1% per update rebuilds about
#: every tenth update.
REBUILD_SHARE = 0.1
#: efSearch values tried, doubling from faiss's default; past 1024 an IVF index or a better model
#: is the answer, not a slower walk.
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
_LIVE = (0, 2**63 - 1)  # the ids a search may return: every id but the masks' -1


def hnsw_index(dim: int, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION):
    """An empty `IDMap2,HNSW<m>` index on inner product."""
    import faiss

    index = faiss.index_factory(dim, f"IDMap2,HNSW{m}", faiss.METRIC_INNER_PRODUCT)
    graph(index).hnsw.efConstruction = ef_construction
    return index


def graph(index):
    """The IndexHNSWFlat inside the IDMap2 (efSearch, efConstruction, the flat storage)."""
    import faiss

    return faiss.downcast_index(index.index)


def is_hnsw(index) -> bool:
    import faiss

    return isinstance(index, faiss.IndexIDMap2) and isinstance(graph(index), faiss.IndexHNSW)


def masked(index) -> int:
    """Vectors in the graph whose id was removed."""
    import faiss

    return int(np.count_nonzero(faiss.vector_to_array(index.id_map) < 0))


def mask(index, ids: np.ndarray) -> int:
    """Remove `ids` from search results for good (see the module docstring); returns how many were
    in the index."""
    import faiss

    id_map = faiss.vector_to_array(index.id_map)
    hit = np.isin(id_map, np.asarray(ids, dtype=np.int64))
    if hit.any():
        id_map[hit] = -1
        faiss.copy_array_to_vector(id_map, index.id_map)
        index.construct_rev_map()
    return int(hit.sum())


def search(index, queries: np.ndarray, k: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of each query's k nearest live vectors, walking the graph with `ef_search`
    candidates (faiss takes at least k)."""
    import faiss

    live = faiss.IDSelectorRange(*_LIVE)
    params = faiss.SearchParametersHNSW(sel=live, efSearch=ef_search)
    # faiss.contrib.torch_utils replaces `search` with a wrapper without params (see filters.py)
    return getattr(index, "search_numpy", index.search)(
        np.ascontiguousarray(queries, dtype=np.float32), k, params=params
    )


def search_subset(index, queries: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k among `ids` (live ids, as index/filters.py passes them): a scan of the graph's
    flat storage restricted to their rows. A selector on the graph walk would be approximate, and
    poor for a small subset, whose members the walk rarely meets."""
    import faiss

    id_map = faiss.vector_to_array(index.id_map)
    rows = np.flatnonzero(np.isin(id_map, np.asarray(ids, dtype=np.int64)))
    storage = faiss.downcast_index(graph(index).storage)
    selector = faiss.IDSelectorBatch(rows)
    params = faiss.SearchParameters(sel=selector)
    scores, found = getattr(storage, "search_numpy", storage.search)(
        np.ascontiguousarray(queries, dtype=np.float32), k, params=params
    )
    return scores, np.where(found >= 0, id_map[np.maximum(found, 0)], -1)
