"""Retrieval metrics: Recall@1, MAP@R and R-precision equal pytorch-metric-learning's
AccuracyCalculator (the oracle); Recall@K and utilization equal brute-force numpy; NMI equals
scikit-learn's."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from metrix.evaluation.metrics import (
    RECALL_KS,
    clustering_nmi,
    evaluate_retrieval,
    normalized_mutual_info,
    utilization,
)

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "omniglot_small"


def normalised(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random_labels(rng, n, low=2, high=30):
    """Classes of random sizes in [low, high], shuffled, n labels in all."""
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(low, high + 1)))
    labels = np.repeat(np.arange(len(sizes)), sizes)[:n]
    return rng.permutation(labels)


def _random_case(seed, n, d):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), _random_labels(rng, n)


def _clustered_case(seed, n_classes=30, per_class=12, d=32, noise=0.7):
    """Class mean + noise: structured embeddings whose metrics are far from chance."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, d))
    labels = rng.permutation(np.repeat(np.arange(n_classes), per_class))
    emb = means[labels] + noise * rng.standard_normal((len(labels), d))
    return emb.astype(np.float32), labels


def _omniglot_case(n_classes=40, per_class=20):
    from PIL import Image

    rows, labels = [], []
    for label, folder in enumerate(sorted(p for p in OMNIGLOT.iterdir() if p.is_dir())[:n_classes]):
        for path in sorted(folder.glob("*.png"))[:per_class]:
            with Image.open(path) as im:
                small = im.convert("L").resize((16, 16), Image.BILINEAR)
            rows.append(np.asarray(small, dtype=np.float32).ravel() / 255.0)
            labels.append(label)
    emb = np.stack(rows)
    return emb - emb.mean(axis=0), np.array(labels)


def pml_oracle(query, query_labels, reference=None, reference_labels=None):
    """pytorch-metric-learning on the normalised embeddings (its default k-NN is L2, which on
    unit vectors orders neighbours as the cosine does)."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
        k="max_bin_count",
        device=__import__("torch").device("cpu"),
    )
    if reference is None:
        q = normalised(query)
        return calc.get_accuracy(q, query_labels, q, query_labels, ref_includes_query=True)
    return calc.get_accuracy(
        normalised(query),
        query_labels,
        normalised(reference),
        reference_labels,
        ref_includes_query=False,
    )


def _assert_matches_oracle(report, oracle):
    assert report.recall_at[1] / 100 == pytest.approx(oracle["precision_at_1"], abs=1e-6)
    assert report.map_at_r / 100 == pytest.approx(oracle["mean_average_precision_at_r"], abs=1e-6)
    assert report.r_precision / 100 == pytest.approx(oracle["r_precision"], abs=1e-6)


def _brute_force_recall(query, q_labels, gallery=None, g_labels=None, ks=(1,)):
    """Full similarity matrix and argsort; lone queries (no relevant item) left out."""
    q = normalised(query).astype(np.float64)
    if gallery is None:
        sims = q @ q.T
        np.fill_diagonal(sims, -np.inf)
        g_labels = q_labels
        has_positive = (q_labels[:, None] == q_labels[None, :]).sum(axis=1) > 1
    else:
        sims = q @ normalised(gallery).astype(np.float64).T
        has_positive = (q_labels[:, None] == g_labels[None, :]).any(axis=1)
    ranked = g_labels[np.argsort(-sims, axis=1, kind="stable")]
    same = ranked == q_labels[:, None]
    return {k: 100 * same[has_positive, :k].any(axis=1).mean() for k in ks}


# --- the oracle -------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", [(200, 16), (1000, 64)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_embeddings_match_oracle(n, d, seed):
    emb, labels = _random_case(seed, n, d)
    report = evaluate_retrieval(emb, labels, ks=(1, 2, 4, 8), nmi=False, batch_size=97)
    _assert_matches_oracle(report, pml_oracle(emb, labels))
    assert report.num_queries == n


@pytest.mark.parametrize("seed", [0, 1])
def test_clustered_embeddings_match_oracle(seed):
    emb, labels = _clustered_case(seed)
    report = evaluate_retrieval(emb, labels, nmi=False, batch_size=50)
    _assert_matches_oracle(report, pml_oracle(emb, labels))
    assert report.recall_at[1] > 50  # the structure is really there


def test_one_huge_class_matches_oracle():
    # R of the big class (299) is far above max(ks): its chunks search wider, the others do not.
    rng = np.random.default_rng(9)
    labels = rng.permutation(np.concatenate([np.zeros(300, int), _random_labels(rng, 300) + 1]))
    emb = rng.standard_normal((600, 16)).astype(np.float32)
    emb[labels == 0] += 0.5  # make the big class a little clustered
    report = evaluate_retrieval(emb, labels, ks=(1, 5), nmi=False, batch_size=64)
    _assert_matches_oracle(report, pml_oracle(emb, labels))


@pytest.mark.skipif(not OMNIGLOT.is_dir(), reason=f"{OMNIGLOT} not present")
def test_omniglot_pixels_match_oracle():
    emb, labels = _omniglot_case()
    assert emb.shape == (800, 256)
    report = evaluate_retrieval(emb, labels, nmi=False, batch_size=128)
    _assert_matches_oracle(report, pml_oracle(emb, labels))
    assert report.recall_at == pytest.approx(_brute_force_recall(emb, labels, ks=(1, 2, 4, 8)))


@pytest.mark.parametrize("seed", [0, 1])
def test_query_vs_gallery_matches_oracle(seed):
    rng = np.random.default_rng(seed)
    gallery, g_labels = _random_case(seed + 10, 600, 32)
    query = rng.standard_normal((150, 32)).astype(np.float32)
    q_labels = rng.choice(g_labels, size=150)
    q_labels[:5] = 10_000 + np.arange(5)  # five queries with no match in the gallery
    report = evaluate_retrieval(query, q_labels, gallery, g_labels, ks=(1, 10, 20), nmi=False, batch_size=64)
    _assert_matches_oracle(report, pml_oracle(query, q_labels, gallery, g_labels))
    assert report.num_lone_queries == 5
    assert report.num_reference == 600
    assert report.recall_at == pytest.approx(_brute_force_recall(query, q_labels, gallery, g_labels, ks=(1, 10, 20)))


# --- Recall@K against brute force ---------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 3])
def test_recall_at_k_matches_brute_force(seed):
    emb, labels = _random_case(seed, 500, 24)
    ks = (1, 2, 4, 8, 16, 100)
    report = evaluate_retrieval(emb, labels, ks=ks, nmi=False, batch_size=128)
    assert report.recall_at == pytest.approx(_brute_force_recall(emb, labels, ks=ks))
    assert list(report.recall_at) == list(ks)


def test_batch_size_does_not_change_results():
    emb, labels = _clustered_case(4)
    full = evaluate_retrieval(emb, labels, nmi=False)
    for batch_size in (1, 7, 100):
        assert evaluate_retrieval(emb, labels, nmi=False, batch_size=batch_size) == full


def test_unnormalised_input_and_string_labels():
    emb, labels = _clustered_case(5)
    scaled = emb * np.random.default_rng(0).uniform(0.1, 10, size=(len(emb), 1)).astype(np.float32)
    as_int = evaluate_retrieval(emb, labels, nmi=False)
    as_str = evaluate_retrieval(scaled, np.array([f"class{x}" for x in labels]), nmi=False)
    for name in ("map_at_r", "r_precision"):
        assert getattr(as_str, name) == pytest.approx(getattr(as_int, name))
    assert as_str.recall_at == pytest.approx(as_int.recall_at)


def test_perfect_embeddings_score_100():
    labels = np.repeat(np.arange(10), 5)
    emb = np.eye(16, dtype=np.float32)[labels] + 1e-3 * np.arange(50, dtype=np.float32)[:, None]
    report = evaluate_retrieval(emb, labels, ks=(1, 4), nmi=False)
    assert report.recall_at == {1: 100.0, 4: 100.0}
    assert report.map_at_r == pytest.approx(100.0)
    assert report.r_precision == pytest.approx(100.0)
    assert report.nmi is None


# --- edge cases ---------------------------------------------------------------------------------


def test_query_whose_class_has_no_other_member_is_left_out():
    emb, labels = _clustered_case(6, n_classes=10, per_class=6)
    labels = labels.copy()
    labels[[0, 1]] = [100, 101]  # two singleton classes
    report = evaluate_retrieval(emb, labels, nmi=False)
    assert report.num_lone_queries == 2
    assert report.num_queries == len(labels)
    _assert_matches_oracle(report, pml_oracle(emb, labels))  # the oracle leaves them out too


def test_all_queries_lone_gives_nan():
    emb = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    report = evaluate_retrieval(emb, np.arange(6), ks=(1,), nmi=False)
    assert report.num_lone_queries == 6
    assert np.isnan(report.recall_at[1]) and np.isnan(report.map_at_r)


def test_duplicate_embeddings_count_as_neighbours():
    # Each class is 3 exact copies of one vector: whatever faiss returns first among the tied
    # copies, the query itself is removed by index and its two duplicates are its top-2.
    rng = np.random.default_rng(0)
    base = rng.standard_normal((20, 8)).astype(np.float32)
    labels = np.repeat(np.arange(20), 3)
    emb = base[labels]
    report = evaluate_retrieval(emb, labels, ks=(1, 2), nmi=False, batch_size=13)
    assert report.recall_at == {1: 100.0, 2: 100.0}
    assert report.map_at_r == pytest.approx(100.0)
    assert report.r_precision == pytest.approx(100.0)


def test_duplicates_across_classes_are_kept_as_neighbours():
    # Item 1 duplicates item 0 but has another label: for query 0 it is a (wrong) neighbour at
    # similarity 1, and must not be removed as if it were the query itself.
    emb = np.array([[1, 0], [1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    labels = np.array([0, 1, 0, 1, 2])
    report = evaluate_retrieval(emb, labels, ks=(1,), nmi=False)
    # Query 0: top-1 is item 1 (label 1) -> miss; query 1: top-1 is item 0 -> miss;
    # query 2: top-1 is 0 or 1 tied, label 0 or 1; query 3: top-1 is item 4 -> miss.
    # Query 4 is lone. So recall@1 is 0 or 25 depending on faiss's tie order; never 50+.
    assert report.num_lone_queries == 1
    assert report.recall_at[1] <= 25.0


def test_ks_larger_than_reference_set_raises():
    emb, labels = _random_case(0, 20, 4)
    with pytest.raises(ValueError, match="K = 20 is larger than the 19 items"):
        evaluate_retrieval(emb, labels, ks=(1, 20), nmi=False)
    evaluate_retrieval(emb, labels, ks=(1, 19), nmi=False)  # the largest allowed K
    with pytest.raises(ValueError, match="K = 11 is larger than the 10 items"):
        evaluate_retrieval(emb, labels, emb[:10], labels[:10], ks=(11,), nmi=False)


def test_mismatched_lengths_raise_with_both_lengths():
    emb, labels = _random_case(0, 20, 4)
    with pytest.raises(ValueError, match=r"query_emb has 20 rows but query_labels has 19"):
        evaluate_retrieval(emb, labels[:19])
    with pytest.raises(ValueError, match=r"gallery_emb has 20 rows but gallery_labels has 18"):
        evaluate_retrieval(emb, labels, emb, labels[:18])
    with pytest.raises(ValueError, match="dimension 4 but gallery_emb has 3"):
        evaluate_retrieval(emb, labels, emb[:, :3], labels)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_retrieval(np.full((4, 2), np.nan), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        evaluate_retrieval(np.zeros((0, 4), np.float32), [])
    with pytest.raises(ValueError, match="both"):
        evaluate_retrieval(emb, labels, gallery_emb=emb)


# --- NMI and utilization ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_nmi_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    a = rng.integers(0, int(rng.integers(1, 20)), n)
    b = rng.integers(0, int(rng.integers(1, 20)), n)
    assert normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-10)
    assert normalized_mutual_info(a, a) == pytest.approx(1.0)


def test_nmi_degenerate_labelings_match_sklearn():
    for a, b in [([0] * 5, [0] * 5), ([0] * 5, [0, 1, 2, 3, 4]), ([0, 1, 2], [5, 5, 5])]:
        assert normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info_score(a, b))


def test_clustering_nmi_matches_oracle():
    # Same faiss k-means (seed, iterations) on the same normalised embeddings -> same clusters,
    # and then our numpy NMI against the oracle's scikit-learn NMI.
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import FaissKMeans

    emb, labels = _clustered_case(8, noise=1.0)
    calc = AccuracyCalculator(include=("NMI",), device=torch.device("cpu"), kmeans_func=FaissKMeans(niter=20, seed=5))
    oracle = calc.get_accuracy(normalised(emb), labels)["NMI"]
    assert evaluate_retrieval(emb, labels, seed=5).nmi / 100 == pytest.approx(oracle, abs=1e-9)


def test_clustering_nmi_is_seeded_and_finds_clusters():
    emb, labels = _clustered_case(7, noise=0.3)
    first = evaluate_retrieval(emb, labels, seed=3).nmi
    assert first == evaluate_retrieval(emb, labels, seed=3).nmi
    assert first > 80
    assert 0 <= clustering_nmi(*_random_case(0, 200, 16)) < 0.5


def test_utilization_matches_brute_force():
    rng = np.random.default_rng(0)
    test = rng.standard_normal((300, 16)).astype(np.float32)
    train = 3 * rng.standard_normal((500, 16)).astype(np.float32)
    t, x = normalised(test).astype(np.float64), normalised(train).astype(np.float64)
    expected = ((t[:, None, :] - x[None, :, :]) ** 2).sum(axis=2).min(axis=1).mean()
    assert utilization(test, train, batch_size=64) == pytest.approx(expected, abs=1e-5)
    assert utilization(train, train) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="dimension 16 but train_emb has 8"):
        utilization(test, train[:, :8])


def test_recall_ks_presets():
    assert RECALL_KS["sop"] == (1, 10, 100, 1000)
    assert RECALL_KS["inshop"] == (1, 10, 20, 30, 40, 50)
    assert set(RECALL_KS) == {"cub", "cars", "sop", "inshop", "folder", "synthetic"}
