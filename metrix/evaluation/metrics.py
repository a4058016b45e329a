"""Retrieval metrics on embeddings: Recall@K, MAP@R, R-precision, NMI and the utilization diagnostic.

Definitions follow Musgrave et al., "A Metric Learning Reality Check" (ECCV 2020), and the
evaluation protocol of the Metrix paper (Venkataramanan et al., ICLR 2022):

- Embeddings are L2-normalised here, so similarity is the cosine (inner product); the nearest
  neighbours come from an exact faiss ``IndexFlatIP`` search.
- Without a gallery, every query is searched against all the *other* items of the same set; the
  query itself is removed by index, not by distance, so exact duplicates still count as neighbours.
  With a gallery (In-Shop), queries are searched against the gallery and nothing is removed.
- R of a query is the number of reference items with its label (itself excluded). A query with
  R = 0 ("lone" query: its class has no other member in the reference set) is left out of every
  retrieval metric -- Recall@K, MAP@R and R-precision -- and counted in ``num_lone_queries``. This
  is what pytorch-metric-learning's ``AccuracyCalculator`` does (its ``precision_at_1``, which is
  Recall@1, also drops such queries), so our numbers equal its numbers. If every query is lone,
  the retrieval metrics are NaN.
- Recall@K: percentage of queries with at least one relevant item among the K nearest neighbours.
- R-precision: the fraction of the top-R neighbours that are relevant.
- MAP@R: (1/R) * sum_{i=1..R} P@i * rel_i, averaged over queries.
- NMI: faiss k-means (k = number of distinct query labels, ``NMI_KMEANS_NITER`` iterations, seeded)
  on the normalised query embeddings, then the normalised mutual information of clusters and
  labels with arithmetic-mean normalisation (scikit-learn's default), computed here in numpy.
- Ties between equal similarities are broken by faiss's ordering; the metrics are exact otherwise.
- ``per_query=True`` also returns the values each aggregate is the mean of (hits at each K, AP@R,
  R-precision, R) and, with ``neighbours=n``, each query's first n results, from the same search.

Memory: the N x N similarity matrix is never built. Queries are searched in chunks of
``batch_size`` rows with k = max(max(ks), largest R in the chunk) (+1 when the query itself must be
removed). Queries are processed in order of R, so one very large class only makes the chunks that
hold its own members wide. A chunk costs about batch_size * k * 50 bytes at its peak (distances,
ids, relevance, running sums, precisions), on top of two float32 copies of the reference set (the
normalised array and the faiss index). With a class of C images the widest chunk needs
~batch_size * C * 50 bytes: lower ``batch_size`` when classes have tens of thousands of images.
Measured: 60,000 x 512 with ks up to 1000 peaks at ~650 MB RSS (bench/evaluation_memory.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

RECALL_KS = {
    "cub": (1, 2, 4, 8),
    "cars": (1, 2, 4, 8),
    "sop": (1, 10, 100, 1000),
    "inshop": (1, 10, 20, 30, 40, 50),
    "folder": (1, 2, 4, 8),
    "synthetic": (1, 2, 4, 8),
}

NMI_KMEANS_NITER = 20  # as pytorch-metric-learning's AccuracyCalculator


@dataclass
class PerQuery:
    """Row i is query i. Queries with r == 0 (lone) are left out of every aggregate."""

    hits: np.ndarray  # [N, len(ks)] bool: a relevant item among the first K results
    ap_at_r: np.ndarray  # [N] AP@R, a fraction (0..1)
    r_precision: np.ndarray  # [N] fraction
    r: np.ndarray  # [N] relevant reference items
    neighbours: np.ndarray  # [N, n] reference indices of the first n results, best first


@dataclass
class RetrievalReport:
    """All metrics in percent (0..100). ``nmi`` is None when it was not asked for."""

    recall_at: dict[int, float]
    map_at_r: float
    r_precision: float
    nmi: float | None
    num_queries: int  # all queries, lone ones included
    num_lone_queries: int  # queries with R = 0, left out of the retrieval metrics
    num_reference: int  # size of the set each query is searched in
    ks: tuple[int, ...] = field(default=())
    per_query: PerQuery | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


def _as_embeddings(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _as_labels(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {y.shape}")
    return y


def _check_lengths(emb, labels, emb_name: str, labels_name: str) -> None:
    if len(emb) != len(labels):
        raise ValueError(f"{emb_name} has {len(emb)} rows but {labels_name} has {len(labels)} labels")


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _flat_ip_index(reference: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(reference.shape[1])
    index.add(reference)
    return index


def _drop_self(ids: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    """Remove each row's own index (or, when it is not among the results, the last column)."""
    is_self = ids == query_ids[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return ids[~is_self].reshape(len(ids), ids.shape[1] - 1)


def _chunk_scores(relevant: np.ndarray, r: np.ndarray, ks) -> tuple[np.ndarray, ...]:
    """Per-query hits at each K, AP@R and R-precision from a [rows, k] relevance matrix."""
    rows, k = relevant.shape
    hits = np.stack([relevant[:, :kk].any(axis=1) for kk in ks], axis=1)
    within_r = np.arange(k)[None, :] < r[:, None]
    rel_r = relevant & within_r
    correct_so_far = np.cumsum(rel_r, axis=1, dtype=np.int32)
    denom = np.maximum(r, 1).astype(np.float64)
    r_precision = correct_so_far[np.arange(rows), np.maximum(r, 1) - 1] / denom
    precision_at_i = correct_so_far / np.arange(1, k + 1, dtype=np.float64)
    ap_at_r = (precision_at_i * rel_r).sum(axis=1) / denom
    return hits, ap_at_r, r_precision


def _checked(query_emb, query_labels, gallery_emb, gallery_labels, ks, batch_size: int, neighbours: int):
    """The inputs of evaluate_retrieval as arrays, or a ValueError saying what is wrong with them."""
    query = _as_embeddings(query_emb, "query_emb")
    q_labels = _as_labels(query_labels, "query_labels")
    _check_lengths(query, q_labels, "query_emb", "query_labels")
    if (gallery_emb is None) != (gallery_labels is None):
        raise ValueError("give both gallery_emb and gallery_labels, or neither")
    exclude_self = gallery_emb is None
    if exclude_self:
        gallery, g_labels = query, q_labels
    else:
        gallery = _as_embeddings(gallery_emb, "gallery_emb")
        g_labels = _as_labels(gallery_labels, "gallery_labels")
        _check_lengths(gallery, g_labels, "gallery_emb", "gallery_labels")
        if gallery.shape[1] != query.shape[1]:
            raise ValueError(f"query_emb has dimension {query.shape[1]} but gallery_emb has {gallery.shape[1]}")

    if len(query) == 0:
        raise ValueError("query_emb is empty")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    num_reference = len(gallery) - int(exclude_self)
    if max(ks) > num_reference:
        raise ValueError(f"K = {max(ks)} is larger than the {num_reference} items each query is searched in")
    if not 0 <= neighbours <= num_reference:
        raise ValueError(f"neighbours = {neighbours} is not in 0..{num_reference}, the items each query is searched in")
    return query, q_labels, gallery, g_labels, ks


def evaluate_retrieval(
    query_emb,
    query_labels,
    gallery_emb=None,
    gallery_labels=None,
    ks=(1, 2, 4, 8),
    nmi: bool = True,
    batch_size: int = 4096,
    seed: int = 0,
    per_query: bool = False,
    neighbours: int = 0,
) -> RetrievalReport:
    """Recall@K, MAP@R, R-precision (and NMI) of queries against a gallery, or against each other.

    query_emb [N, D] and query_labels [N]; gallery_emb [M, D] and gallery_labels [M] or both None
    (then each query is searched among the other N - 1 queries). Labels may be ints or strings.
    Raises ValueError on mismatched lengths or dimensions, NaN embeddings, or a K larger than the
    number of items a query is searched in.
    per_query: also return the per-query values (report.per_query); neighbours: how many of each
    query's first results (reference indices) to keep there. A neighbours above max(ks) widens
    the search, which can only change which of exactly tied items come first.
    """
    query, q_labels, gallery, g_labels, ks = _checked(
        query_emb, query_labels, gallery_emb, gallery_labels, ks, batch_size, neighbours
    )
    exclude_self = gallery_emb is None
    num_reference = len(gallery) - int(exclude_self)

    # Integer label codes shared by queries and gallery; R = same-label reference items.
    codes = np.unique(np.concatenate([q_labels, g_labels]), return_inverse=True)[1].ravel()
    q_codes, g_codes = codes[: len(q_labels)], codes[len(q_labels) :]
    r_all = np.bincount(g_codes, minlength=codes.max() + 1)[q_codes] - int(exclude_self)

    query_n = _normalise(query)
    gallery_n = query_n if exclude_self else _normalise(gallery)
    index = _flat_ip_index(gallery_n)

    hits = np.zeros((len(query), len(ks)), dtype=bool)
    ap_at_r = np.zeros(len(query))
    r_prec = np.zeros(len(query))
    nearest = np.zeros((len(query), neighbours), dtype=np.int64)
    order = np.argsort(r_all, kind="stable")  # chunks of similar R -> similar search width
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        r = r_all[rows]
        k = min(max(max(ks), neighbours, int(r.max())) + int(exclude_self), len(gallery))
        _, ids = index.search(query_n[rows], k)
        if exclude_self:
            ids = _drop_self(ids, rows)
        relevant = g_codes[ids] == q_codes[rows][:, None]
        hits[rows], ap_at_r[rows], r_prec[rows] = _chunk_scores(relevant, r, ks)
        nearest[rows] = ids[:, :neighbours]

    counted = r_all > 0
    num_counted = int(counted.sum())

    def percent(values) -> float:
        return 100.0 * float(values[counted].mean()) if num_counted else math.nan

    return RetrievalReport(
        recall_at={k: percent(hits[:, j]) for j, k in enumerate(ks)},
        map_at_r=percent(ap_at_r),
        r_precision=percent(r_prec),
        nmi=100.0 * clustering_nmi(query_n, q_labels, seed=seed) if nmi else None,
        num_queries=len(query),
        num_lone_queries=len(query) - num_counted,
        num_reference=num_reference,
        ks=ks,
        per_query=PerQuery(hits, ap_at_r, r_prec, r_all, nearest) if per_query else None,
    )


def query_scores(embeddings, labels) -> dict[str, np.ndarray]:
    """Each query's hit at rank 1 ("r1") and AP@R ("map_at_r"), as fractions, every item searched
    among the others, lone queries left out: the paired values that two models are compared on
    (metrix.evaluation.bootstrap)."""
    report = evaluate_retrieval(embeddings, labels, ks=(1,), nmi=False, per_query=True)
    counted = report.per_query.r > 0
    return {"r1": report.per_query.hits[counted, 0].astype(float), "map_at_r": report.per_query.ap_at_r[counted]}


def normalized_mutual_info(labels_a, labels_b) -> float:
    """NMI of two labelings with arithmetic-mean normalisation: I(A;B) / ((H(A) + H(B)) / 2).

    Equals sklearn.metrics.normalized_mutual_info_score (1.0 when both labelings are constant).
    The contingency table is kept sparse (only the pairs that occur), so 11,000 classes x 11,000
    clusters costs O(N) memory, not a dense 11,000 x 11,000 table.
    """
    a = np.unique(np.asarray(labels_a), return_inverse=True)[1].ravel()
    b = np.unique(np.asarray(labels_b), return_inverse=True)[1].ravel()
    if len(a) != len(b):
        raise ValueError(f"labelings have lengths {len(a)} and {len(b)}")
    n = len(a)
    p_a = np.bincount(a) / n
    p_b = np.bincount(b) / n
    h_a = -np.sum(p_a * np.log(p_a))
    h_b = -np.sum(p_b * np.log(p_b))
    if h_a == 0 and h_b == 0:
        return 1.0  # one cluster and one class: identical labelings
    pairs, counts = np.unique(a.astype(np.int64) * len(p_b) + b, return_counts=True)
    pair_a, pair_b = pairs // len(p_b), pairs % len(p_b)
    p_ab = counts / n
    mi = np.sum(p_ab * np.log(p_ab / (p_a[pair_a] * p_b[pair_b])))
    return float(max(mi, 0.0) / ((h_a + h_b) / 2))


def clustering_nmi(embeddings, labels, seed: int = 0, niter: int = NMI_KMEANS_NITER) -> float:
    """NMI (fraction, 0..1) between labels and faiss k-means clusters of the normalised embeddings,
    with k = number of distinct labels."""
    import faiss

    x = _normalise(_as_embeddings(embeddings, "embeddings"))
    labels = _as_labels(labels, "labels")
    _check_lengths(x, labels, "embeddings", "labels")
    k = len(np.unique(labels))
    # min_points_per_centroid=1 only silences faiss's "too few points" warning.
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, min_points_per_centroid=1)
    kmeans.train(x)
    _, clusters = kmeans.index.search(x, 1)
    return normalized_mutual_info(labels, clusters[:, 0])


def utilization(test_emb, train_emb, batch_size: int = 4096) -> float:
    """The Metrix paper's u(Q, X): mean over test embeddings q of min over training embeddings x of
    ||q - x||^2, on normalised embeddings (so ||q - x||^2 = 2 - 2 cos, in [0, 4])."""
    test = _as_embeddings(test_emb, "test_emb")
    train = _as_embeddings(train_emb, "train_emb")
    if len(test) == 0 or len(train) == 0:
        raise ValueError(f"need test and train embeddings, got {len(test)} and {len(train)}")
    if test.shape[1] != train.shape[1]:
        raise ValueError(f"test_emb has dimension {test.shape[1]} but train_emb has {train.shape[1]}")
    index = _flat_ip_index(_normalise(train))
    test = _normalise(test)
    total = 0.0
    for start in range(0, len(test), batch_size):
        sims, _ = index.search(test[start : start + batch_size], 1)
        total += float(np.clip(2.0 - 2.0 * sims[:, 0].astype(np.float64), 0.0, None).sum())
    return total / len(test)
