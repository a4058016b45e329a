"""The calibrated match probability (issue 41): isotonic regression equal to scikit-learn's, fitted
at build time on a labelled gallery and carried by every hit; `min_probability` leaves out the
unlikely ones in the Python API, the CLI and a real server's API, which then says "no good
match"; an unlabelled gallery has no probabilities and its results stay."""

import json

import httpx
import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from metrix.index.build import build_index
from metrix.index.match_probability import calibration_error, isotonic
from metrix.index.python_api import Index

from .pictures import blocks
from .service_helpers import make_gallery, post_image, serve_process
from .training_helpers import metrix_cli


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isotonic_regression_equals_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    x = rng.random(500)
    y = (rng.random(500) < x**2).astype(float)
    weights = rng.random(500) + 0.1
    for w in (None, weights):
        xs, fitted = isotonic(x, y, w)
        expected = IsotonicRegression().fit(x, y, sample_weight=w).predict(xs)
        assert np.all(np.diff(xs) >= 0) and np.allclose(fitted, expected)


def test_the_calibration_error_is_the_weighted_gap_per_bin():
    probability = np.array([0.05, 0.05, 0.95, 0.95, 0.55, 0.55])
    same = np.array([0, 0, 1, 0, 1, 1], float)
    # bins 0 (2 of 6, gap 0.05), 9 (2 of 6, gap 0.45), 5 (2 of 6, gap 0.45)
    assert calibration_error(probability, same) == pytest.approx((0.05 + 0.45 + 0.45) / 3)
    weights = np.array([1, 1, 1, 3, 1, 1], float)  # the wrong 0.95 counts thrice: bin 9 observes 0.25
    assert calibration_error(probability, same, weights) == pytest.approx((2 * 0.05 + 4 * 0.70 + 2 * 0.45) / 8)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("match-probability")
    make_gallery(root / "gallery", per_label=12, seed=640)
    build_index(root / "gallery", tiny_model, root / "index", progress=False)
    blocks(9999, (72, 56)).save(root / "query.png")
    return root


def test_a_labelled_gallery_is_calibrated_and_every_hit_says_how_likely_it_matches(labelled):
    manifest = json.loads((labelled / "index" / "gen-000001" / "manifest.json").read_text())
    calibration = manifest["match_calibration"]
    # half of the 24 images, each searched with itself left out (20 results) and with its label
    # left out (the other label's 12 images)
    assert calibration["queries"] == 12 and calibration["pairs"] == 12 * 20 + 12 * 12
    assert calibration["no_match_share"] == 0.5
    assert np.all(np.diff(calibration["scores"]) >= 0) and np.all(np.diff(calibration["probabilities"]) >= 0)
    assert 0 <= calibration["calibration_error"] <= 1
    with Index.open(labelled / "index") as index:
        hits = index.search(labelled / "query.png", k=24)
        assert all(0 <= h.match_probability <= 1 for h in hits)
        expected = np.interp([h.score for h in hits], calibration["scores"], calibration["probabilities"])
        assert np.allclose([h.match_probability for h in hits], expected)
        cut = float(np.median([h.match_probability for h in hits]))
        kept = index.search(labelled / "query.png", k=24, min_probability=cut)
        assert kept == [h for h in hits if h.match_probability >= cut] and 0 < len(kept) < len(hits) + 1
        with pytest.raises(ValueError, match="min_probability: 1.5 is not between 0 and 1"):
            index.search(labelled / "query.png", min_probability=1.5)
    shown = metrix_cli(
        "search", labelled / "query.png", "--index", labelled / "index", "-k", 24, "--min-probability", cut, "--json"
    )
    assert [r["path"] for r in json.loads(shown.stdout)["results"]] == [h.path for h in kept]


def test_an_unlabelled_gallery_has_no_probabilities_and_keeps_its_results(tmp_path, tiny_model):
    for i in range(6):
        blocks(650 + i).save(tmp_path / f"{i}.png")
    build_index(tmp_path, tiny_model, tmp_path / "index", progress=False)
    with Index.open(tmp_path / "index") as index:
        assert index.index.manifest["match_calibration"] is None
        hits = index.search(tmp_path / "0.png", k=3, min_probability=0.9)
        assert len(hits) == 3 and all(h.match_probability is None for h in hits)


@pytest.mark.slow
def test_the_api_returns_probabilities_and_says_no_good_match(labelled):
    with serve_process(labelled / "index") as (url, _), httpx.Client(timeout=30) as client:
        plain = post_image(client, url, labelled / "query.png", k=5).json()
        strict = client.post(
            f"{url}api/search",
            files={"image": ("query.png", (labelled / "query.png").read_bytes())},
            data={"k": "5", "min_probability": "1"},
        ).json()
        bad = client.post(
            f"{url}api/search",
            files={"image": ("query.png", (labelled / "query.png").read_bytes())},
            data={"min_probability": "2"},
        )
    assert all(0 <= r["match_probability"] <= 1 for r in plain["results"]) and plain["no_good_match"] is False
    assert [r for r in plain["results"] if r["match_probability"] >= 1] == strict["results"]
    assert strict["no_good_match"] is (not strict["results"])
    assert bad.status_code == 400 and "min_probability" in bad.json()["error"]


def test_the_page_says_no_good_match_when_no_result_is_likely_one():
    from metrix.app.page import NO_GOOD_MATCH, no_good_match
    from metrix.index.store import Hit

    def hits(*chances):
        return [Hit(i, 0.5, f"{i}.png", "", 1, 1, 1, 1, chance) for i, chance in enumerate(chances)]

    assert (
        no_good_match(hits(0.1, NO_GOOD_MATCH - 0.01))
        == "No good match: none of these is likely a match (the most likely 29%). "
    )
    assert no_good_match(hits(0.1, NO_GOOD_MATCH)) == ""
    assert no_good_match(hits(None, None)) == "" and no_good_match([]) == ""
