"""How likely a result is a match, calibrated on the gallery itself (issue 41, docs/search.md).

A cosine score means different things under different models, so no fixed cut-off separates
matches from unrelated images. For a labelled gallery (images in class sub-folders), each build
searches the generation it is about to commit with a sample of its own images (each one left out
of its own results) and fits, by isotonic regression, how the probability that a result shares
the query's label grows with its score. Half of the sampled queries fit, the other half measure
the calibration error; the fitted curve (a few hundred knots) is stored in the manifest and every
hit carries `match_probability`. An unlabelled gallery has nothing to fit on: its hits carry none.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .store import GalleryIndex, open_generation

#: Gallery images searched to fit the curve (and as many to measure it), at most.
SAMPLE = 1000
#: Results of each sampled query used as (score, same label) pairs.
NEIGHBOURS = 20
#: Knots kept of the fitted step function.
KNOTS = 200
#: Bins of the expected calibration error.
ERROR_BINS = 10


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing least-squares fit of y on x (pool adjacent violators): (sorted x, fit)."""
    order = np.argsort(x, kind="stable")
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
    values, weights, sizes = [], [], []
    for value in y:
        values.append(value)
        weights.append(1.0)
        sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            w = weights[-2] + weights[-1]
            values[-2] = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            weights[-2], sizes[-2] = w, sizes[-2] + sizes[-1]
            del values[-1], weights[-1], sizes[-1]
    return x, np.repeat(values, sizes)


def probabilities(calibration: dict, scores) -> np.ndarray:
    """The stored curve at `scores` (clipped to its ends)."""
    return np.interp(np.asarray(scores, float), calibration["scores"], calibration["probabilities"])


def calibration_error(probability: np.ndarray, same: np.ndarray) -> float:
    """Expected calibration error: the mean |predicted - observed| over equal-width bins, weighted."""
    bins = np.minimum((probability * ERROR_BINS).astype(int), ERROR_BINS - 1)
    error = 0.0
    for b in np.unique(bins):
        members = bins == b
        error += members.mean() * abs(probability[members].mean() - same[members].mean())
    return float(error)


def fit(index: GalleryIndex, seed: int = 0) -> dict | None:
    """The curve of a generation's labelled images, or None (fewer than two labels of two images)."""
    rows = index.db.execute("SELECT id, label FROM images WHERE label != ''").fetchall()
    counts: dict[str, int] = {}
    for _, label in rows:
        counts[label] = counts.get(label, 0) + 1
    rows = [row for row in rows if counts[row[1]] >= 2]
    if len({label for _, label in rows}) < 2:
        return None
    picked = np.random.default_rng(seed).permutation(len(rows))[: 2 * SAMPLE]
    halves = [picked[: len(picked) // 2], picked[len(picked) // 2 :]]
    pairs = [_pairs(index, [rows[i] for i in half]) for half in halves]
    (x, y), (held_x, held_y) = pairs
    xs, fitted = isotonic(x, y)
    knots = np.unique(np.linspace(0, len(xs) - 1, KNOTS).round().astype(int))
    calibration = {"scores": xs[knots].round(6).tolist(), "probabilities": fitted[knots].round(6).tolist()}
    return {
        **calibration,
        "pairs": int(len(x)),
        "queries": int(len(halves[0])),
        "calibration_error": calibration_error(probabilities(calibration, held_x), held_y),
        "held_out_pairs": int(len(held_x)),
    }


def _pairs(index: GalleryIndex, queries: list) -> tuple[np.ndarray, np.ndarray]:
    """(score, same label) of each query's NEIGHBOURS nearest other images."""
    vectors = index.vectors(i for i, _ in queries)
    scores, same = [], []
    for (query_id, label), hits in zip(queries, index.search(vectors, NEIGHBOURS + 1)):
        for hit in [h for h in hits if h.id != query_id][:NEIGHBOURS]:
            scores.append(hit.score)
            same.append(hit.label == label)
    return np.array(scores), np.array(same, float)


def match_calibration(index_dir) -> Callable[[str], dict]:
    """What write_generation runs on the staged generation: the manifest's `match_calibration`."""

    def calibrate(staged: str) -> dict:
        staged_index = open_generation(index_dir, staged)
        try:
            return {"match_calibration": fit(staged_index)}
        finally:
            staged_index.close()

    return calibrate
