"""The near-duplicate calibration's arithmetic (index/calibration.py) on distributions whose answer
is known: the look-alike tail it extrapolates against the exact tail of the distribution drawn
from, and the thresholds it chooses where copies and look-alikes separate and where they do not.
The calibration on real galleries is measured in bench/duplicates_calibrated.py and exercised end
to end in tests/test_duplicates.py."""

import numpy as np
import pytest

from metrix.index.calibration import (
    COPY_FLOOR,
    EDITS,
    MAX_FALSE_PER_1000,
    CopySample,
    tail_share,
)


def test_tail_share_counts_where_the_sample_can_and_extrapolates_where_it_cannot():
    rng = np.random.default_rng(0)
    # z = -log(1 - NCC) exponential with mean 0.5: P(NCC >= t) = (1 - t) ** 2 exactly
    ncc = 1 - np.exp(-rng.exponential(0.5, 4000))
    assert tail_share(ncc, 0.5) == pytest.approx(np.mean(ncc >= 0.5))  # 1,000 above: counted
    for t in (0.99, 0.995, 0.999):  # 0.4, 0.1 and 0.004 expected above in 4,000: extrapolated
        assert (1 - t) ** 2 / 2 < tail_share(ncc, t) < 3 * (1 - t) ** 2, t  # 3 decades out: within 3x
    assert tail_share(np.array([]), 0.9) == 0.0


def _calibrate(copy_ncc, lookalike_ncc, pairs_per_image=3.0):
    edits = np.array([list(EDITS)[i % len(EDITS)] for i in range(len(copy_ncc))])
    copies = CopySample(0.8, np.ones(len(copy_ncc), bool), copy_ncc, edits, 100, 1.0)
    return copies.thresholds(lookalike_ncc, pairs_per_image)


def test_copies_apart_from_look_alikes_get_the_floor():
    rng = np.random.default_rng(1)
    copies = rng.uniform(0.95, 1.0, 700).astype(np.float32)
    lookalikes = rng.uniform(-1.0, 0.6, 3000).astype(np.float32)
    calibration = _calibrate(copies, lookalikes)
    assert calibration.copy_threshold == COPY_FLOOR and calibration.copies_found == 1.0
    # nothing above 0.6 passes; the fitted tail still allows a little (it errs on the safe side)
    assert calibration.lookalikes_passed == 0.0 and calibration.false_pairs_per_1000 <= MAX_FALSE_PER_1000
    assert calibration.separable
    assert calibration.found_by_edit == {edit: 1.0 for edit in EDITS}


def test_overlapping_look_alikes_raise_the_threshold_until_few_pass_or_say_so():
    rng = np.random.default_rng(2)
    copies = rng.uniform(0.9, 1.0, 700).astype(np.float32)
    # P(NCC >= t) = (1 - t) ** (1 / 0.3): with 3 candidate pairs per image, 1 per 1,000 images
    # passes at t = 1 - (1 / 3000) ** 0.3 = 0.910
    lookalikes = (1 - np.exp(-rng.exponential(0.3, 3000))).astype(np.float32)
    raised = _calibrate(copies, lookalikes)
    assert 0.89 <= raised.copy_threshold <= 0.94 and raised.false_pairs_per_1000 <= MAX_FALSE_PER_1000
    assert raised.separable and raised.copies_found == pytest.approx(np.mean(copies >= raised.copy_threshold))

    alike = rng.uniform(0.9, 1.0, 3000).astype(np.float32)  # look-alikes as close as copies
    hopeless = _calibrate(copies, alike)
    assert hopeless.copy_threshold == 0.99 and not hopeless.separable
