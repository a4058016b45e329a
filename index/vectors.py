"""The faiss side of an index: exact `IDMap2,Flat` by default, IVF above a size threshold, both
on inner product over L2-normalised vectors (= cosine), both able to add and remove by id.

IVF rather than HNSW for the approximate index: faiss's HNSW cannot remove vectors, and an
incremental gallery removes them on every changed or deleted file; IVF removes in place. Its
nprobe is chosen at build time as the smallest power of two whose recall@10 against exact search
reaches TARGET_RECALL on a sample, and that recall is stored in the manifest.
"""

from __future__ import annotations

import math

import numpy as np

#: At or below this many vectors "auto" keeps exact search (a flat scan of 100k x 512 takes
#: tens of ms on 2 cores); above, it builds IVF. --index-type overrides.
FLAT_LIMIT = 100_000
TARGET_RECALL = 0.95
RECALL_SAMPLE = 1000
KINDS = ("auto", "flat", "ivf")


def choose_kind(requested: str, count: int) -> str:
    if requested not in KINDS:
        raise ValueError(f"--index-type {requested}: choose one of {', '.join(KINDS)}")
    return requested if requested != "auto" else ("flat" if count <= FLAT_LIMIT else "ivf")


def flat_index(dim: int):
    import faiss

    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def ivf_index(vectors: np.ndarray, seed: int = 0):
    """An empty IVF index trained on `vectors`: nlist about 4 sqrt(n), at least 39 training
    vectors per list (faiss's own minimum)."""
    import faiss

    count, dim = vectors.shape
    nlist = max(1, min(int(4 * math.sqrt(count)), count // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    sample = vectors[np.random.default_rng(seed).permutation(count)[:64 * nlist]]
    index.train(np.ascontiguousarray(sample))
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove_ids and reconstruct by id
    return index


def kind_of(index) -> str:
    import faiss

    return "ivf" if isinstance(index, faiss.IndexIVF) else "flat"


def stored(index) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [n], vectors float32 [n, d]) of every vector in a flat or IVF index."""
    import faiss

    if kind_of(index) == "flat":
        # np.asarray: once faiss.contrib.torch_utils is imported (pytorch-metric-learning does),
        # reconstruct_n returns a torch tensor
        vectors = np.asarray(index.index.reconstruct_n(0, index.ntotal), dtype=np.float32)
        return faiss.vector_to_array(index.id_map).astype(np.int64), vectors
    ids, vectors = [], []
    lists = index.invlists
    for list_no in range(index.nlist):
        size = lists.list_size(list_no)
        if size:
            ids.append(faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy())
            codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * lists.code_size).copy()
            vectors.append(codes.view(np.float32).reshape(size, index.d))
    if not ids:
        return np.empty(0, np.int64), np.empty((0, index.d), np.float32)
    return np.concatenate(ids), np.concatenate(vectors)


def rebuilt(index, kind: str, dim: int):
    """The same vectors and ids in an index of `kind` (a gallery crossing FLAT_LIMIT)."""
    ids, vectors = stored(index) if index is not None else (np.empty(0, np.int64), np.empty((0, dim), np.float32))
    if kind == "ivf" and len(ids) == 0:
        raise ValueError("an IVF index needs vectors to train on; the gallery has none yet")
    fresh = flat_index(dim) if kind == "flat" else ivf_index(vectors)
    if len(ids):
        fresh.add_with_ids(vectors, ids)
    return fresh


def tune_nprobe(index, sample: int = RECALL_SAMPLE, seed: int = 0) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose recall@10 against exact search over the same
    vectors reaches TARGET_RECALL (or every list), and that recall. Queries: `sample` stored
    vectors, each one's own id left out of both result lists."""
    import faiss

    ids, vectors = stored(index)
    chosen = np.random.default_rng(seed).permutation(len(ids))[:sample]
    if len(chosen) == 0:
        return 1, 1.0
    exact = faiss.IndexFlatIP(index.d)
    exact.add(vectors)
    _, truth = exact.search(vectors[chosen], 11)
    truth = [[i for i in ids[row] if i != ids[q]][:10] for q, row in zip(chosen, truth)]
    nprobe = 1
    while True:
        faiss.extract_index_ivf(index).nprobe = nprobe
        _, found = index.search(vectors[chosen], 11)
        hits = sum(len(set(want) & set(got.tolist())) for want, got in zip(truth, found))
        recall = hits / sum(len(want) for want in truth) if any(truth) else 1.0
        if recall >= TARGET_RECALL or nprobe >= index.nlist:
            return nprobe, recall
        nprobe = min(2 * nprobe, index.nlist)
