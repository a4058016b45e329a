"""Pseudo-labels for training without labels (`--labels clusters`): spherical k-means (faiss)
of the training images' current embeddings, seeded with k-means++."""

from __future__ import annotations

import numpy as np

#: k-means++ seeding looks at most this many points (it costs points x k x dim).
SEEDING_SAMPLE = 50_000


def cluster_labels(embeddings: np.ndarray, k: int, seed: int, iterations: int = 20) -> np.ndarray:
    """Each row's cluster, numbered 0..k'-1 in the order clusters first appear (k' <= k: a
    cluster left empty is dropped)."""
    import faiss

    points = np.ascontiguousarray(embeddings, dtype=np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True).clip(min=1e-12)
    kmeans = faiss.Kmeans(
        points.shape[1],
        k,
        niter=iterations,
        seed=seed,
        spherical=True,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, len(points)),
    )
    kmeans.train(points, init_centroids=kmeans_plus_plus(points, k, np.random.default_rng(seed)))
    _, assigned = kmeans.index.search(points, 1)
    _, first, renumbered = np.unique(assigned[:, 0], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # cluster ids by first appearance
    return order[renumbered]


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k starting centres by greedy k-means++ (Arthur and Vassilvitskii, 2007): each step draws
    2 + log k candidates with probability proportional to their squared distance from the
    nearest centre so far and keeps the one that lowers the total most. Random starts often put
    two centres in one group and none in another."""
    if len(points) > SEEDING_SAMPLE:
        points = points[rng.choice(len(points), SEEDING_SAMPLE, replace=False)]
    tries = 2 + int(np.log(k))
    centres = [points[rng.integers(len(points))]]
    nearest = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:  # fewer distinct points than k: any point will do
            candidates = rng.integers(len(points), size=tries)
        else:
            candidates = rng.choice(len(points), size=tries, p=nearest / total)
        updated = [np.minimum(nearest, ((points - points[c]) ** 2).sum(1)) for c in candidates]
        best = int(np.argmin([u.sum() for u in updated]))
        centres.append(points[candidates[best]])
        nearest = updated[best]
    return np.ascontiguousarray(centres, dtype=np.float32)
