"""How likely a result is a match, calibrated on the gallery itself (issue 41, docs/search.md).

A cosine score means different things under different models, so no fixed cut-off separates
matches from unrelated images. For a labelled gallery (images in class sub-folders), each build
searches the generation it is about to commit with a sample of its own images, twice: each left
out of its own results (a query whose kind the gallery holds: its results that share its label
are matches), and with its whole label left out (a query of a kind the gallery does not hold:
none of its results is a match). An isotonic regression of "is a match" on the score, over both
kinds of results weighted so that NO_MATCH_SHARE of the queries have no match, gives the
probability that a result is a match whether or not the query's kind is in the gallery. Half of
the sampled queries fit, the other half measure the calibration error; the fitted curve (a few
hundred knots) is stored in the manifest and every hit carries `match_probability`. An unlabelled
gallery has nothing to fit on: its hits carry none.
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
#: The share of queries assumed to have no match in the gallery: as likely as not.
NO_MATCH_SHARE = 0.5
#: A sampled query whose label has more images than this is not searched with its label left out
#: (its results would have to reach past them all).
MAX_LEFT_OUT = 500


def isotonic(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing weighted least-squares fit of y on x (pool adjacent violators): (sorted
    x, fit)."""
    order = np.argsort(x, kind="stable")
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
    w = np.ones_like(y) if weights is None else np.asarray(weights, float)[order]
    values, totals, sizes = [], [], []
    for value, weight in zip(y, w):
        values.append(value)
        totals.append(weight)
        sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            total = totals[-2] + totals[-1]
            values[-2] = (values[-2] * totals[-2] + values[-1] * totals[-1]) / total
            totals[-2], sizes[-2] = total, sizes[-2] + sizes[-1]
            del values[-1], totals[-1], sizes[-1]
    return x, np.repeat(values, sizes)


def probabilities(calibration: dict, scores) -> np.ndarray:
    """The stored curve at `scores` (clipped to its ends)."""
    return np.interp(np.asarray(scores, float), calibration["scores"], calibration["probabilities"])


def calibration_error(probability: np.ndarray, same: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Expected calibration error: the weighted mean |predicted - observed| over equal-width bins."""
    w = np.ones_like(probability, dtype=float) if weights is None else np.asarray(weights, float)
    bins = np.minimum((probability * ERROR_BINS).astype(int), ERROR_BINS - 1)
    error = 0.0
    for b in np.unique(bins):
        members = bins == b
        share = w[members].sum() / w.sum()
        error += share * abs(
            np.average(probability[members], weights=w[members]) - np.average(same[members], weights=w[members])
        )
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
    halves = [[rows[i] for i in picked[: len(picked) // 2]], [rows[i] for i in picked[len(picked) // 2 :]]]
    (x, y, w), (held_x, held_y, held_w) = (_pairs(index, half, counts) for half in halves)
    xs, fitted = isotonic(x, y, w)
    knots = np.unique(np.linspace(0, len(xs) - 1, KNOTS).round().astype(int))
    calibration = {"scores": xs[knots].round(6).tolist(), "probabilities": fitted[knots].round(6).tolist()}
    return {
        **calibration,
        "no_match_share": NO_MATCH_SHARE,
        "pairs": int(len(x)),
        "queries": len(halves[0]),
        "calibration_error": calibration_error(probabilities(calibration, held_x), held_y, held_w),
        "held_out_pairs": int(len(held_x)),
    }


def _pairs(index: GalleryIndex, queries: list, counts: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, is a match, weight) of the NEIGHBOURS nearest results of each query, searched with
    itself left out (matches: the results of its label) and with its label left out (no match)."""
    vectors = index.vectors(i for i, _ in queries)
    matched, unmatched = [], []
    for (query_id, label), hits in zip(queries, index.search(vectors, NEIGHBOURS + 1)):
        matched += [(h.score, h.label == label) for h in hits if h.id != query_id][:NEIGHBOURS]
    apart = [q for q in range(len(queries)) if counts[queries[q][1]] <= MAX_LEFT_OUT]
    if apart:
        reach = NEIGHBOURS + max(counts[queries[q][1]] for q in apart)
        for q, hits in zip(apart, index.search(vectors[apart], reach)):
            unmatched += [(h.score, False) for h in hits if h.label != queries[q][1]][:NEIGHBOURS]
    pairs = np.array(matched + unmatched, float).reshape(-1, 2)
    share = NO_MATCH_SHARE if unmatched else 0.0
    weights = np.concatenate(
        [np.full(len(matched), (1 - share) / len(matched)), np.full(len(unmatched), share / max(len(unmatched), 1))]
    )
    return pairs[:, 0], pairs[:, 1], weights


def match_calibration(index_dir) -> Callable[[str], dict]:
    """What write_generation runs on the staged generation: the manifest's `match_calibration`."""

    def calibrate(staged: str) -> dict:
        staged_index = open_generation(index_dir, staged)
        try:
            return {"match_calibration": fit(staged_index)}
        finally:
            staged_index.close()

    return calibrate
