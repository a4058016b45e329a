"""The faiss side of an index: exact `IDMap2,Flat` by default, IVF or HNSW (index/hnsw.py) above a
size threshold, IVF-PQ with an exact re-rank when a memory budget asks for it (index/plan.py and
index/choose.py choose), all on inner product over L2-normalised vectors (= cosine), all able to
add by id; flat and IVF remove in place, HNSW masks (index/hnsw.py).

IVF's nprobe is chosen at build time as the smallest power of two whose recall@10 against exact
search reaches the target (TARGET_RECALL unless build-index --target-recall says otherwise) on a
sample, and that recall is stored in the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .plan import IndexPlan

#: At or below this many vectors "auto" keeps exact search (a flat scan of 100k x 512 takes
#: tens of ms on 2 cores); above, it builds IVF. --index-type overrides.
FLAT_LIMIT = 100_000
#: Recall@10 against exact search that approximate indexes are tuned to (build-index --target-recall).
TARGET_RECALL = 0.99
RECALL_SAMPLE = 1000


def flat_index(dim: int):
    import faiss

    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def ivf_index(vectors: np.ndarray, seed: int = 0, count: int | None = None):
    """An empty IVF index trained on `vectors` (or a sample of them) for `count` vectors in all
    (default: as many as given): nlist about 4 sqrt(count), at least 39 training vectors per list
    (faiss's own minimum)."""
    import faiss

    dim = vectors.shape[1]
    count = count or len(vectors)
    nlist = max(1, min(int(4 * math.sqrt(count)), len(vectors) // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    sample = vectors[np.random.default_rng(seed).permutation(len(vectors))[: 64 * nlist]]
    index.train(np.ascontiguousarray(sample))
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove_ids and reconstruct by id
    return index


def stored(index) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [n], vectors float32 [n, d]) of every vector in a flat, IVF or HNSW index (an
    HNSW index's masked vectors left out)."""
    parts = list(stored_blocks(index, rows=max(1, index.ntotal)))
    if not parts:
        return np.empty(0, np.int64), np.empty((0, index.d), np.float32)
    return np.concatenate([ids for ids, _ in parts]), np.concatenate([vectors for _, vectors in parts])


def stored_blocks(index, rows: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """stored(), a block of about `rows` vectors at a time: (ids int64 [m], vectors float32 [m, d]),
    so that reading every vector of a large flat or IVF-Flat index copies one block, not all."""
    import faiss

    if not isinstance(index, faiss.IndexIVF):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        for start in range(0, index.ntotal, rows):
            count = min(rows, index.ntotal - start)
            # np.asarray: once faiss.contrib.torch_utils is imported (pytorch-metric-learning does),
            # reconstruct_n returns a torch tensor
            block = np.asarray(index.index.reconstruct_n(start, count), dtype=np.float32)
            live = ids[start : start + count] >= 0  # -1: a vector masked in an HNSW graph (index/hnsw.py)
            yield ids[start : start + count][live], block[live]
        return
    if not isinstance(index, faiss.IndexIVFFlat):
        raise ValueError(f"a {type(index).__name__} keeps codes, not its vectors; read them from its FullVectors")
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    held = 0
    for ids, vectors in _ivf_lists(index):
        for start in range(0, len(ids), rows):
            pending.append((ids[start : start + rows], vectors[start : start + rows]))
            held += len(pending[-1][0])
            if held >= rows:
                yield np.concatenate([i for i, _ in pending]).astype(np.int64), np.concatenate([v for _, v in pending])
                pending, held = [], 0
    if pending:
        yield np.concatenate([i for i, _ in pending]).astype(np.int64), np.concatenate([v for _, v in pending])


def tune_nprobe(index, sample: int = RECALL_SAMPLE, seed: int = 0, target: float = TARGET_RECALL) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose recall@10 against exact search over the same
    vectors reaches `target` (or every list), and that recall. Queries: `sample` stored
    vectors, each one's own id left out of both result lists. The exact search reads the IVF-Flat
    lists in place, one at a time, so tuning copies no vectors but the queries."""
    import faiss

    lists = [(ids, vectors) for ids, vectors in _ivf_lists(index)]
    ids = np.concatenate([ids for ids, _ in lists]) if lists else np.empty(0, np.int64)
    chosen = np.random.default_rng(seed).permutation(len(ids))[:sample]
    if len(chosen) == 0:
        return 1, 1.0
    queries = np.empty((len(chosen), index.d), np.float32)
    starts = np.cumsum([0] + [len(list_ids) for list_ids, _ in lists])
    for row, position in enumerate(chosen):
        number = np.searchsorted(starts, position, side="right") - 1
        queries[row] = lists[number][1][position - starts[number]]
    truth = _exact_ids((vectors for _, vectors in lists), ids, queries, 11)
    truth = [[i for i in row if i != ids[q] and i >= 0][:10] for q, row in zip(chosen, truth)]
    nprobe = 1
    while True:
        faiss.extract_index_ivf(index).nprobe = nprobe
        _, found = index.search(queries, 11)
        hits = sum(len(set(want) & set(got.tolist())) for want, got in zip(truth, found))
        recall = hits / sum(len(want) for want in truth) if any(truth) else 1.0
        if recall >= target or nprobe >= index.nlist:
            return nprobe, recall
        nprobe = min(2 * nprobe, index.nlist)


def _ivf_lists(index):
    """(ids, vectors) of each non-empty list of an IVF-Flat index: views of faiss's memory, valid
    while the index is unchanged."""
    import faiss

    lists = index.invlists
    for number in range(index.nlist):
        size = lists.list_size(number)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(number), size)
            codes = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size)
            yield ids, codes.view(np.float32).reshape(size, index.d)


def _exact_ids(blocks, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of each query's exact top k by inner product over `blocks` of vectors whose rows, in
    order, have the ids `ids`; one block in memory at a time."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    _, found = knn_ground_truth(
        queries, (np.ascontiguousarray(b) for b in blocks), k, metric_type=faiss.METRIC_INNER_PRODUCT, ngpu=0
    )
    return np.where(found >= 0, ids[np.maximum(found, 0)], -1)


# --- IVF-PQ with an exact re-rank from memory-mapped full vectors (see index/plan.py) ---


def ivfpq_index(vectors: np.ndarray, plan: IndexPlan, seed: int = 0):
    """An empty IVF-PQ index on inner product, shaped by `plan` (`plan.factory`: OPQ wrapped
    around it as an IndexPreTransform when plan.opq), trained on a sample of `vectors` (an array
    or a memory map; only the sampled rows are read).

    No direct map: remove_ids works without one (it scans every list's ids, 8 bytes per vector,
    once per call), add_with_ids too, also through the OPQ wrapper, while a Hashtable direct map
    would cost about 40 bytes per vector of RAM, more than the codes it indexes. Reconstruction by
    id is not needed: the full vectors live in FullVectors.
    """
    import faiss

    count, dim = vectors.shape
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    # index_factory turns on polysemous training, which only Hamming-filtered search uses and
    # which takes most of the training time
    faiss.downcast_index(ivf).do_polysemous_training = False
    ivf.cp.seed = seed
    faiss.downcast_index(ivf).pq.cp.seed = seed
    # enough for the coarse k-means (64 per list) and for the 2**bits-centroid codebooks and OPQ,
    # which faiss itself caps at 65536 points
    rows = np.random.default_rng(seed).permutation(count)[: max(64 * plan.nlist, 2**16)]
    index.train(np.ascontiguousarray(vectors[np.sort(rows)], dtype=np.float32))
    return index


def ivf_of(index):
    """The IVF layer of an IVF or IVF-PQ index, also inside an OPQ wrapper (to set nprobe)."""
    import faiss

    return faiss.extract_index_ivf(index)


class FullVectors:
    """The full float32 vectors of an index, by id, memory-mapped from two files in a folder:
    `vectors.npy` [n, d] and `vector_ids.npy` int64 [n], ids ascending, row i of the first the
    vector of the i-th id. Read through the page cache, so they need not fit in RAM; an IVF-PQ
    search re-ranks its candidates from them."""

    VECTORS = "vectors.npy"
    IDS = "vector_ids.npy"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        self.ids = ids
        self.vectors = vectors

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @classmethod
    def write(cls, folder, ids: np.ndarray, chunks: Iterable[np.ndarray]) -> FullVectors:
        """Write `chunks` (float32 [m, d] blocks whose rows, in order, are the vectors of `ids`,
        given in any order) to `folder` and open them. Chunks go straight to their sorted rows of
        a memory map, so the whole matrix never sits in RAM; the sort itself holds up to 40 bytes
        per vector (ids, sorted ids, their order and its inverse), 4 GB for 100M vectors.
        Refuses a folder that already has them: truncating files a reader has memory-mapped
        would crash it (SIGBUS), so each build writes a fresh folder."""
        from numpy.lib.format import open_memmap

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in (cls.VECTORS, cls.IDS):
            if (folder / name).exists():
                raise FileExistsError(f"{folder / name}: full vectors are written once, to a fresh folder")
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        if len(ids) > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
            raise ValueError("FullVectors.write: ids must be unique")
        row_of = np.empty_like(order)  # row_of[i]: the sorted row of the i-th vector given
        row_of[order] = np.arange(len(ids))
        del order
        out, start = None, 0
        for chunk in chunks:
            chunk = np.asarray(chunk, dtype=np.float32)
            if out is None:
                out = open_memmap(folder / cls.VECTORS, mode="w+", dtype=np.float32, shape=(len(ids), chunk.shape[1]))
            if start + len(chunk) > len(ids):
                raise ValueError(f"FullVectors.write: more vectors than the {len(ids)} ids")
            out[row_of[start : start + len(chunk)]] = chunk
            start += len(chunk)
        if start != len(ids):
            raise ValueError(f"FullVectors.write: {start} vectors for {len(ids)} ids")
        if out is None:  # no ids and no chunks: the dimension is unknown
            out = open_memmap(folder / cls.VECTORS, mode="w+", dtype=np.float32, shape=(0, 0))
        out.flush()
        del out
        np.save(folder / cls.IDS, sorted_ids)
        return cls.open(folder)

    @classmethod
    def open(cls, folder) -> FullVectors:
        folder = Path(folder)
        ids = np.load(folder / cls.IDS, mmap_mode="r")
        vectors = np.load(folder / cls.VECTORS, mmap_mode="r")
        if vectors.ndim != 2 or ids.shape != (len(vectors),):
            raise ValueError(f"{folder}: {cls.IDS} has {ids.shape} ids for vectors of shape {vectors.shape}")
        return cls(ids, vectors)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of `ids` (float32 [len(ids), d], in their order); KeyError if one is absent."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, ids)
        found = rows < len(self.ids)
        found[found] = self.ids[rows[found]] == ids[found]
        if not found.all():
            missing = ids[~found]
            raise KeyError(f"{len(missing)} ids not in the full vectors, e.g. {missing[0]}")
        return np.asarray(self.vectors[rows], dtype=np.float32)

    def rerank(self, queries: np.ndarray, candidate_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best `k` of each query's candidates (int64 [q, c], -1 for none) by exact inner
        product: (scores float32 [q, k], ids int64 [q, k]), best first, padded with -inf and -1
        where a query has fewer than k candidates. Queries go in blocks so that the gathered
        candidate vectors stay near 32 MB."""
        queries = np.asarray(queries, dtype=np.float32)
        candidate_ids = np.asarray(candidate_ids, dtype=np.int64)
        q, c = candidate_ids.shape
        scores = np.full((q, k), -np.inf, dtype=np.float32)
        ids = np.full((q, k), -1, dtype=np.int64)
        block = max(1, 2**25 // max(1, c * self.dim * 4))
        for start in range(0, q, block):
            cand = candidate_ids[start : start + block]
            valid = cand >= 0
            gathered = np.zeros(cand.shape + (self.dim,), dtype=np.float32)
            gathered[valid] = self.lookup(cand[valid])
            exact = np.einsum("qcd,qd->qc", gathered, queries[start : start + block])
            exact[~valid] = -np.inf
            best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            top = np.take_along_axis(exact, best, axis=1)
            found = np.where(np.isfinite(top), np.take_along_axis(cand, best, axis=1), -1)
            scores[start : start + block, : best.shape[1]] = top
            ids[start : start + block, : best.shape[1]] = found
        return scores, ids


def search_reranked(
    index, full: FullVectors, queries: np.ndarray, k: int, rerank: int
) -> tuple[np.ndarray, np.ndarray]:
    """Search `index` for `rerank` candidates (at least k) and keep the best k by exact inner
    product over `full`; rerank 0: the index's own scores."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not rerank:
        return index.search(queries, k)
    _, candidates = index.search(queries, max(k, rerank))
    return full.rerank(queries, candidates, k)


def _exact_top(full: FullVectors, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of each query's exact top k over `full`, about 64 MB of rows at a time."""
    rows = max(1, 2**26 // (full.dim * 4))
    return _exact_ids((full.vectors[i : i + rows] for i in range(0, len(full), rows)), np.asarray(full.ids), queries, k)


def _recall(index, full: FullVectors, queries, query_ids, truth, rerank: int) -> float:
    _, found = search_reranked(index, full, queries, 11, rerank)
    hits = total = 0
    for own, want, got in zip(query_ids, truth, found):
        want = [i for i in want if i != own and i >= 0][:10]
        got = [i for i in got if i != own and i >= 0][:10]
        hits += len(set(want) & set(got))
        total += len(want)
    return hits / total if total else 1.0


def _sample(full: FullVectors, sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.sort(np.random.default_rng(seed).permutation(len(full))[:sample])
    return np.ascontiguousarray(full.vectors[rows], dtype=np.float32), np.asarray(full.ids[rows])


def recall_at_10(index, full: FullVectors, sample: int = RECALL_SAMPLE, seed: int = 0, rerank: int = 0) -> float:
    """Recall@10 of `index` (its candidates re-ranked from `full` when rerank > 0) against exact
    search over `full`, the vectors the index holds, at the index's current nprobe. Queries:
    `sample` stored vectors, each one's own id left out of both lists, as tune_nprobe does."""
    if len(full) == 0:
        return 1.0
    queries, query_ids = _sample(full, sample, seed)
    return _recall(index, full, queries, query_ids, _exact_top(full, queries, 11), rerank)


def tune_nprobe_full(
    index, full: FullVectors, rerank: int = 0, sample: int = RECALL_SAMPLE, seed: int = 0, target: float = TARGET_RECALL
) -> tuple[int, float]:
    """tune_nprobe for any IVF index whose full vectors are in `full` (IVF-PQ, through OPQ):
    the smallest power-of-two nprobe whose recall@10, re-ranked when rerank > 0, reaches
    `target` (or every list), and that recall; the exact truth is computed once."""
    ivf = ivf_of(index)
    if len(full) == 0:
        return 1, 1.0
    queries, query_ids = _sample(full, sample, seed)
    truth = _exact_top(full, queries, 11)
    nprobe = 1
    while True:
        ivf.nprobe = nprobe
        recall = _recall(index, full, queries, query_ids, truth, rerank)
        if recall >= target or nprobe >= ivf.nlist:
            return nprobe, recall
        nprobe = min(2 * nprobe, ivf.nlist)


def tune_ivfpq(index, full: FullVectors, rerank: int, target: float = TARGET_RECALL) -> tuple[int, float, int]:
    """(nprobe, recall@10, re-rank depth) for an IVF-PQ index: tune_nprobe_full at `rerank`
    candidates, and at 4x and 16x as many where the codes rank too coarsely for the target even
    with every list probed."""
    for depth in (rerank, 4 * rerank, 16 * rerank):
        nprobe, recall = tune_nprobe_full(index, full, rerank=depth, target=target)
        if recall >= target:
            break
    return nprobe, recall, depth
