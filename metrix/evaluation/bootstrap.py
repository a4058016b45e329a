"""How sure a difference between two models is: the paired bootstrap over queries.

Both models answer the same queries; each query gives one value per model (a hit at rank 1, its
AP@R). The mean difference is resampled over queries with replacement (a percentile interval,
Efron & Tibshirani 1993, ch. 13), so a handful of validation images gives a wide interval and the
verdict says the two cannot be told apart instead of picking a winner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Difference:
    """The mean of a - b over n paired values, with its bootstrap interval (same unit as the values)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def verdict(self) -> str:
        """better (the interval is above 0), worse (below 0), or tied (it holds 0)."""
        return "better" if self.low > 0 else "worse" if self.high < 0 else "tied"

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"

    def to_dict(self) -> dict:
        return asdict(self)


def paired_difference(
    a, b, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0, chunk: int = 250
) -> Difference:
    """Mean of a - b with a percentile bootstrap interval over the paired items."""
    if len(np.shape(a)) != 1 or np.shape(a) != np.shape(b) or len(a) == 0:
        raise ValueError(f"paired_difference needs two equal-length 1-d arrays, got {np.shape(a)} and {np.shape(b)}")
    differences = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            differences[rng.integers(0, len(differences), size=(min(chunk, resamples - start), len(differences)))].mean(
                axis=1
            )
            for start in range(0, resamples, chunk)
        ]
    )
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Difference(float(differences.mean()), float(low), float(high), len(differences))
