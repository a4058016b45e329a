"""Recall measured on served queries (index/served_recall.py): its exact answers against faiss's
flat index, its running recall against one computed here, its warning and kept queries, and
`serve --nprobe` (GalleryIndex.set_search) closing the gap it finds."""

import logging
import time

import faiss
import numpy as np
import pytest

from metrix.index import hnsw
from metrix.index.choose import index_params
from metrix.index.plan import plan_index
from metrix.index.served_recall import MIN_SAMPLES, SERVED_QUERIES, ServedRecall, exact_ids

from .index_helpers import one_thread  # noqa: F401  (an autouse fixture)
from .test_hnsw import DIM, TARGET, clustered, exact_top, recall, update


def _scores(x, ids, query, found):
    by_id = dict(zip(ids.tolist(), x))
    return np.sort([float(by_id[i] @ query) for i in found])


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """An IVF index of 4,000 clustered vectors, and out-of-gallery queries: midpoints of two
    gallery vectors of different clusters, the kind of query that gallery vectors as probes miss."""
    tmp = tmp_path_factory.mktemp("served")
    x, ids = clustered(4000, seed=7), np.arange(4000, dtype=np.int64)
    (tmp / "ivf").mkdir()
    index = update(tmp / "ivf", [], ids, x, plan_index(4000, DIM, "ivf"), tmp)
    rng = np.random.default_rng(8)
    pairs = rng.integers(0, 4000, (2 * MIN_SAMPLES, 2))
    queries = x[pairs[:, 0]] + x[pairs[:, 1]]
    return index, x, ids, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def test_exact_ids_are_exact_for_ivf_and_for_hnsw_with_masked_vectors(gallery, tmp_path):
    index, x, ids, queries = gallery
    for query in queries[:10]:
        found = exact_ids(index, query)
        truth = exact_top(x, ids, query[None], 10)[0]
        np.testing.assert_allclose(_scores(x, ids, query, found), _scores(x, ids, query, truth), rtol=0, atol=1e-5)
    folder = tmp_path / "hnsw"
    folder.mkdir()
    plan = plan_index(3000, DIM, "hnsw")
    update(folder, [], ids[:3000], x[:3000], plan, tmp_path)
    removed = ids[:3000:20]  # 5%: masked, not yet rebuilt
    graph = update(folder, removed, ids[3000:3100], x[3000:3100], plan, tmp_path)
    assert hnsw.masked(graph.index) == len(removed)
    live = np.setdiff1d(ids[:3100], removed)
    for query in queries[:10]:
        found = exact_ids(graph, query)
        assert not np.isin(found, removed).any() and len(found) == 10
        truth = exact_top(x[live], live, query[None], 10)[0]
        np.testing.assert_allclose(_scores(x, ids, query, found), _scores(x, ids, query, truth), rtol=0, atol=1e-5)


def _serve(monitor, index, queries, expect=None):
    for query in queries:
        monitor.offer(index, query)
        deadline = time.monotonic() + 30
        while monitor._pending.qsize() and time.monotonic() < deadline:  # one at a time: none dropped
            time.sleep(0.001)
    deadline = time.monotonic() + 30
    while monitor.stats()["measured"] < (expect or len(queries)) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_served_recall_is_the_recall_of_the_served_answers_and_warns_below_target(gallery, tmp_path, caplog):
    index, x, ids, queries = gallery
    index.set_search(nprobe=1)
    monitor = ServedRecall(tmp_path, interval_s=1e-9)
    with caplog.at_level(logging.WARNING, logger="metrix.served_recall"):
        _serve(monitor, index, queries)
    served = np.array([[h.id for h in hits] for hits in index.search(queries, 10)])
    expected = recall(served, exact_top(x, ids, queries, 10))
    stats = monitor.stats()
    assert stats["measured"] == len(queries) and stats["generation"] == index.generation
    assert stats["recall_at_10"] == pytest.approx(expected, abs=1e-9)
    assert expected < index.manifest["index"]["target_recall"]  # the case the monitor is for
    assert sum("below the build's target" in r.message for r in caplog.records) == 1
    kept = np.load(tmp_path / SERVED_QUERIES)
    assert kept.shape == (len(queries) // MIN_SAMPLES * MIN_SAMPLES, DIM)
    np.testing.assert_array_equal(kept, queries[: len(kept)])


def test_set_search_widens_the_probe_and_says_so(gallery):
    index, x, ids, queries = gallery
    nlist = index.manifest["index"]["type"].split(",")[0].removeprefix("IVF")
    index.set_search(nprobe=int(nlist))
    served = np.array([[h.id for h in hits] for hits in index.search(queries, 10)])
    assert recall(served, exact_top(x, ids, queries, 10)) == 1.0
    assert index.manifest["index"]["search_set"] == {"nprobe": int(nlist)}


def test_an_idle_or_disabled_monitor_measures_nothing(gallery, tmp_path):
    index, _, _, queries = gallery
    off = ServedRecall(tmp_path, interval_s=0)
    off.offer(index, queries[0])
    slow = ServedRecall(tmp_path, interval_s=3600)
    _serve(slow, index, queries[:3], expect=1)  # only the first is taken within the hour
    assert off.stats()["measured"] == 0 and slow.stats()["measured"] == 1


def test_a_build_widens_its_setting_for_the_queries_a_server_kept(gallery):
    """index_params with the kept queries: nprobe raised until they reach the target too, the
    recall it records is theirs (computed here again), and without them nothing changes."""
    index, x, ids, queries = gallery
    ivf = faiss.extract_index_ivf(index.index)
    plan = plan_index(len(ids), DIM, "ivf")
    alone = index_params(ivf, None, plan, "ivf", None, TARGET)
    widened = index_params(ivf, None, plan, "ivf", None, TARGET, served=queries)
    assert "served_recall_at_10" not in alone and widened["served_queries"] == len(queries)
    assert widened["nprobe"] > alone["nprobe"] and widened["served_recall_at_10"] >= TARGET
    ivf.nprobe = widened["nprobe"]
    served = np.array([[h.id for h in hits] for hits in index.search(queries, 11)])
    expected = np.mean(
        [len(set(s[:10]) & set(t)) / 10 for s, t in zip(served.tolist(), exact_top(x, ids, queries, 10).tolist())]
    )
    assert widened["served_recall_at_10"] == pytest.approx(expected, abs=1e-9)
    ivf.nprobe = widened["nprobe"] // 2  # the step below falls short: the smallest that reaches it
    served = np.array([[h.id for h in hits] for hits in index.search(queries, 10)])
    assert recall(served, exact_top(x, ids, queries, 10)) < TARGET
