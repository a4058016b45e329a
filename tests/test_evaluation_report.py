"""`metrix evaluate --report`: its per-class R@1, AP@R, confusion counts and worst queries against
pytorch-metric-learning (the oracle) and brute-force numpy; the page written by the CLI (parsed,
self-contained, the metrics of `metrix evaluate --floor --json`); the page in headless Chromium."""

import base64
import io
import json
import os
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from metrix.evaluation import report as evaluation_report
from metrix.evaluation.metrics import evaluate_retrieval
from metrix.evaluation.report import (
    THUMB,
    TOP,
    ReportError,
    confused_pairs,
    per_class_recall_at_1,
    worst_queries,
    write_report,
)

from .browser import headless_chromium
from .test_evaluation import normalised, pml_oracle
from .training_helpers import metrix_cli

GREEN, RED = "rgb(46, 158, 68)", "rgb(214, 39, 40)"


def _separated_case(seed, n_classes=12, per_class=7, d=16, noise=1.0, depth=16, margin=1e-4):
    """Clustered unit embeddings in which no two of any row's `depth` most similar items are
    within `margin` in cosine (points in such a near tie are dropped until none is left): faiss's
    float32 search and numpy's float64 sort then rank every query's neighbours alike on any CPU.
    The first item is then relabelled into a class of its own (a lone query)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, d))
    labels = rng.permutation(np.repeat(np.arange(n_classes), per_class))
    emb = normalised(means[labels] + noise * rng.standard_normal((len(labels), d)))
    keep = np.arange(len(labels))
    while True:
        sims = _similarities(emb[keep])
        top = -np.sort(-sims, axis=1)[:, :depth]
        rows, cols = np.nonzero(top[:, :-1] - top[:, 1:] < margin)
        if not len(rows):
            return emb[keep], np.concatenate([[n_classes], labels[keep][1:]])
        order = np.argsort(-sims, axis=1, kind="stable")
        keep = np.delete(keep, np.unique(order[rows, cols + 1]))


def _similarities(emb):
    sims = emb.astype(np.float64) @ emb.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)  # each query against all the others
    return sims


def _brute_force(emb, labels):
    """Ranked neighbours of every query, its R, AP@R and hit at 1, from the full similarity matrix."""
    ranked = np.argsort(-_similarities(emb), axis=1, kind="stable")[:, :-1]
    relevant = labels[ranked] == labels[:, None]
    r = relevant.sum(axis=1)
    ap = np.array(
        [
            sum(relevant[i, : j + 1].sum() / (j + 1) for j in range(r[i]) if relevant[i, j]) / r[i] if r[i] else 0.0
            for i in range(len(labels))
        ]
    )
    return ranked, r, ap, relevant[:, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_recall_and_per_query_ap_match_oracle_and_brute_force(seed):
    emb, labels = _separated_case(seed)
    report = evaluate_retrieval(emb, labels, ks=(1, 2, 4, 8), nmi=False, batch_size=29, per_query=True, neighbours=TOP)
    per_query, oracle = report.per_query, pml_oracle(emb, labels)
    ranked, r, ap, hit = _brute_force(emb, labels)
    counted = per_query.r > 0
    assert (~counted).sum() == report.num_lone_queries >= 1
    np.testing.assert_array_equal(per_query.r, r)
    np.testing.assert_array_equal(per_query.neighbours, ranked[:, :TOP])

    per_class = per_class_recall_at_1(labels, per_query.hits[:, 0], counted)
    assert set(per_class) == set(labels[r > 0].tolist())  # the lone query's class has no bar
    for label, (r1, count) in per_class.items():
        mine = (labels == label) & (r > 0)
        assert count == mine.sum() and r1 == pytest.approx(hit[mine].mean())
    weighted = sum(r1 * count for r1, count in per_class.values()) / sum(c for _, c in per_class.values())
    assert 100 * weighted == pytest.approx(report.recall_at[1], abs=1e-9)
    assert weighted == pytest.approx(oracle["precision_at_1"], abs=1e-6)
    assert 0.3 < weighted < 0.95  # neither trivial nor hopeless

    np.testing.assert_allclose(per_query.ap_at_r[counted], ap[counted], atol=1e-12)
    assert 100 * per_query.ap_at_r[counted].mean() == pytest.approx(report.map_at_r, abs=1e-9)
    assert per_query.ap_at_r[counted].mean() == pytest.approx(oracle["mean_average_precision_at_r"], abs=1e-6)


def test_per_query_values_against_a_gallery_match_brute_force():
    emb, labels = _separated_case(5, depth=40)
    query, q_labels, gallery, g_labels = emb[:25], labels[:25], emb[25:], labels[25:]
    report = evaluate_retrieval(
        query, q_labels, gallery, g_labels, ks=(1, 4), nmi=False, batch_size=7, per_query=True, neighbours=TOP
    )
    ranked = np.argsort(-(query.astype(np.float64) @ gallery.astype(np.float64).T), axis=1, kind="stable")
    np.testing.assert_array_equal(report.per_query.neighbours, ranked[:, :TOP])
    np.testing.assert_array_equal(report.per_query.r, (q_labels[:, None] == g_labels[None, :]).sum(axis=1))
    counted = report.per_query.r > 0
    hits = g_labels[ranked[:, :4]] == q_labels[:, None]
    np.testing.assert_array_equal(report.per_query.hits, np.stack([hits[:, 0], hits.any(axis=1)], axis=1))
    assert 100 * report.per_query.hits[counted].mean(axis=0) == pytest.approx(
        [report.recall_at[1], report.recall_at[4]]
    )
    assert 100 * report.per_query.ap_at_r[counted].mean() == pytest.approx(report.map_at_r, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 3])
def test_confusion_counts_match_brute_force(seed):
    emb, labels = _separated_case(seed, n_classes=15, noise=1.1)
    report = evaluate_retrieval(emb, labels, ks=(1,), nmi=False, batch_size=40, per_query=True, neighbours=1)
    counted = report.per_query.r > 0
    top1 = labels[report.per_query.neighbours[:, 0]]

    # brute force: argmax of the similarity matrix without its diagonal, a count per (query class, top-1 class)
    argmax = labels[np.argmax(_similarities(emb), axis=1)]
    classes = int(labels.max()) + 1
    matrix = np.zeros((classes, classes), int)
    np.add.at(matrix, (labels[counted], argmax[counted]), 1)
    np.fill_diagonal(matrix, 0)
    expected = sorted(
        (
            (a, b, int(matrix[a, b]), int(matrix[b, a]))
            for a in range(classes)
            for b in range(a + 1, classes)
            if matrix[a, b] + matrix[b, a]
        ),
        key=lambda p: (-(p[2] + p[3]), p[0], p[1]),
    )

    assert confused_pairs(labels, top1, counted, top=10**6) == expected
    assert confused_pairs(labels, top1, counted) == expected[:10]
    assert len(expected) > 10 and expected[0][2] + expected[0][3] >= 2
    misses = sum(ab + ba for _, _, ab, ba in expected)
    assert misses == pytest.approx(counted.sum() * (1 - report.recall_at[1] / 100))


def test_no_confusion_gives_no_pairs():
    labels = np.array([0, 0, 1, 1])
    assert confused_pairs(labels, labels[[1, 0, 3, 2]], np.ones(4, bool)) == []


def test_worst_queries_break_ties_by_index_not_float_order():
    # 0.1 + 0.2 and 0.3 are one value summed in two orders; the lone query 3 is never listed.
    ap = np.array([0.5, 0.0, 0.1 + 0.2, 0.0, 1.0, 0.3, 0.0])
    counted = np.array([True, True, True, False, True, True, True])
    assert worst_queries(ap, counted, n=4).tolist() == [1, 6, 2, 5]
    assert worst_queries(ap[::-1], counted[::-1], n=4).tolist() == [0, 5, 1, 4]


def test_worst_queries_of_a_search_match_brute_force():
    emb, labels = _separated_case(4)
    report = evaluate_retrieval(emb, labels, ks=(1,), nmi=False, per_query=True)
    _, r, ap, _ = _brute_force(emb, labels)
    expected = sorted(np.flatnonzero(r > 0), key=lambda i: (round(ap[i], 12), i))[:10]
    assert worst_queries(report.per_query.ap_at_r, report.per_query.r > 0).tolist() == expected


def test_a_failed_write_leaves_the_old_report(tmp_path, monkeypatch):
    report = tmp_path / "report.html"
    report.write_text("old")

    def fail(*args):
        raise OSError(28, "No space left on device")

    for step in ("fsync", "replace"):
        with monkeypatch.context() as patch:
            patch.setattr(evaluation_report.os, step, fail)
            with pytest.raises(ReportError, match="cannot write the report .*: No space left on device"):
                write_report(report, "<html>new</html>")
        assert report.read_text() == "old"
        assert os.listdir(tmp_path) == ["report.html"]
    write_report(report, "<html>new</html>")
    assert report.read_text() == "<html>new</html>" and os.listdir(tmp_path) == ["report.html"]


# --- the page the CLI writes ----------------------------------------------------------------------


class _Page(HTMLParser):
    """Every tag with its attributes, the text, and each table (by id) as rows of cell texts."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.text, self.tables = [], [], {}
        self._table, self._cell = None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    """The tiny run's report as the CLI writes it, and `metrix evaluate --floor --json` of the run."""
    out = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    done = metrix_cli("evaluate", tiny_run, "--report", out)
    assert f"wrote {out}" in done.stdout and "untrained backbone (floor)" in done.stdout
    return out, json.loads(metrix_cli("evaluate", tiny_run, "--floor", "--json").stdout)


@pytest.mark.slow
def test_cli_report_is_self_contained_with_the_metrics_of_evaluate(evaluated, tiny_run):
    from metrix.evaluation.run import embed_run

    path, expected = evaluated
    raw = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(raw)
    page.close()
    text = " ".join("".join(page.text).split())

    trained, floor = expected["trained"], expected["floor"]
    rows = {row[0]: row[1:] for row in page.tables["metrics"][1:]}
    keys = [k for k, v in trained.items() if isinstance(v, float)]
    assert list(rows) == keys and {"recall_at_1", "map_at_r", "r_precision", "nmi"} <= set(keys)
    for key in keys:
        assert rows[key][:2] == [f"{trained[key]:.2f}", f"{floor[key]:.2f}"], key
    for value in (
        trained["data"],
        trained["split"],
        trained["checkpoint_choice"],
        f"{trained['num_queries']} in {trained['num_classes']} classes",
    ):
        assert value in text

    # thumbnails: one per class of each confused pair, the query and its 8 neighbours per worst row
    embedded = embed_run(tiny_run, log=lambda *a: None)
    labels = embedded.query_labels
    top1 = labels[np.argmax(_similarities(normalised(embedded.query)), axis=1)]
    pairs = {tuple(sorted(p)) for p in zip(labels.tolist(), top1.tolist()) if p[0] != p[1]}
    assert len(page.tables["confused"]) - 1 == min(10, len(pairs)) > 0
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 2 * min(10, len(pairs)) + 10 * (1 + TOP)
    for attrs in images:
        assert attrs["src"].startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1]))) as thumb:
            assert thumb.format == "JPEG" and thumb.size == (THUMB, THUMB)

    # nothing outside the file: no link, no URL, no file reference outside the data URIs
    outside = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", raw)
    assert not re.search(r"https?:|file:|//|url\(|@import", outside, re.IGNORECASE)
    for tag, attrs in page.tags:
        assert not {"href", "xlink:href", "srcset", "action", "poster", "data"} & set(attrs), (tag, attrs)
        assert tag not in ("link", "script", "iframe", "object", "embed")


@pytest.mark.slow
def test_cli_report_in_an_unwritable_place_fails_in_one_line(tiny_run, tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder.html").mkdir()
    for target, reason in (
        (tmp_path / "a-file" / "report.html", "Not a directory|File exists"),
        (tmp_path / "a-folder.html", "it is a folder"),
    ):
        done = metrix_cli("evaluate", tiny_run, "--report", target, check=False)
        assert done.returncode == 2, done.stderr
        assert re.fullmatch(rf"error: cannot write the report {re.escape(str(target))}: ({reason})\n", done.stderr)
    assert sorted(os.listdir(tmp_path)) == ["a-file", "a-folder.html"] and not os.listdir(tmp_path / "a-folder.html")


@pytest.mark.slow
def test_browser_report_images_chart_and_framed_rows(evaluated):
    from selenium.webdriver.common.by import By

    path, expected = evaluated
    browser = headless_chromium()
    try:
        browser.get(path.as_uri())
        assert browser.execute_script(
            "const i = [...document.images]; return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0);"
        )

        bars = browser.execute_script(
            "return [...document.querySelectorAll('#per-class rect.bar')].map(b => {"
            "  const r = b.getBoundingClientRect();"
            "  return [b.querySelector('title').textContent, r.width, r.height, r.left]; });"
        )
        assert len(bars) == expected["trained"]["num_classes"]
        assert all(width > 0 for _, width, _, _ in bars)
        assert [left for *_, left in bars] == sorted(left for *_, left in bars)
        heights = [height for _, _, height, _ in bars]
        assert heights == sorted(heights) and heights[-1] > 0  # lowest R@1 first
        assert len({title.split(":")[0] for title, *_ in bars}) == len(bars)
        overall = browser.find_element(By.CSS_SELECTOR, "#per-class text.overall").text
        assert overall == f"overall R@1 {expected['trained']['recall_at_1']:.2f}"

        rows = browser.find_elements(By.CSS_SELECTOR, "#worst .query-row")
        assert len(rows) == 10
        for row in rows:
            frames = browser.execute_script(
                "return [...arguments[0].querySelectorAll('img.neighbour')].map(i => {"
                "  const s = getComputedStyle(i); return [s.borderTopColor, s.borderTopWidth, i.naturalWidth]; });",
                row,
            )
            assert len(frames) == TOP
            assert all(colour in (GREEN, RED) and width == "4px" and natural > 0 for colour, width, natural in frames)
            correct = int(re.search(r"(\d+)/8 of its class", row.find_element(By.TAG_NAME, "figcaption").text)[1])
            assert sum(colour == GREEN for colour, _, _ in frames) == correct
    finally:
        browser.quit()
