"""A checked upgrade (issue 40): before a generation embedded with a new model commits, the build
replays the kept queries and measures the gallery's own labels with both models. The figures
equal a brute-force count and pytorch-metric-learning's; a worse model is refused and the old one
keeps serving a real `metrix serve`; --accept-worse commits it with the comparison in its
manifest and /api/info."""

import json
import shutil

import httpx
import numpy as np
import pytest

from metrix.export.runtime import load_embedder, load_for_model
from metrix.index.build import build_index
from metrix.index.kept_queries import KEPT_DIR, KeptQueries, read_kept
from metrix.index.store import CURRENT, MANIFEST_FILE, open_generation
from metrix.index.upgrade_check import REPLAY_K, verdict

from .service_helpers import make_gallery, post_image, serve_process
from .test_evaluation import pml_oracle
from .training_helpers import metrix_cli, tiny_dataset


def _comparison(labels=None, marks=None) -> dict:
    entry = {"labels": None, "marks": None}
    if labels:
        entry["labels"] = {"map_at_r": {"verdict": labels}}
    if marks:
        entry["marks"] = {"score": {"verdict": marks}}
    return entry


@pytest.mark.parametrize(
    "labels, marks, expected",
    [
        (None, None, "not measured"),
        ("worse", "better", "worse"),
        ("tied", "worse", "worse"),
        (None, "worse", "worse"),
        ("better", "worse", "better"),  # the marks favour the serving model (they were made on its answers)
        ("better", None, "better"),
        ("tied", "better", "tied"),
        (None, "better", "better"),
        (None, "tied", "tied"),
    ],
)
def test_the_verdict_follows_the_labels_first_and_the_marks_where_labels_say_nothing_better(labels, marks, expected):
    assert verdict(_comparison(labels, marks))[0] == expected


def _manifest(index_dir, generation=None) -> dict:
    generation = generation or (index_dir / CURRENT).read_text().strip()
    return json.loads((index_dir / generation / MANIFEST_FILE).read_text())


def _top(embedder, gallery_vectors, paths, query_data, name):
    """A query's REPLAY_K nearest gallery paths by brute force, and the gap after the last of them."""
    array, _ = load_for_model(name, embedder.metadata, data=query_data)
    scores = gallery_vectors @ embedder.embed(array[None])[0]
    order = np.argsort(-scores, kind="stable")
    gap = scores[order[REPLAY_K - 1]] - scores[order[REPLAY_K]]
    return {paths[j] for j in order[:REPLAY_K]}, gap


@pytest.mark.slow
def test_the_replayed_marks_and_the_label_figures_equal_a_brute_force_count_and_the_oracle(
    tmp_path, tiny_model, other_model
):
    gallery = tmp_path / "gallery"
    pictures = make_gallery(gallery, per_label=12, seed=700)
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False)
    old = open_generation(index_dir, "gen-000001")
    # simulated users: each query's top results marked by their label, as on the page; one query
    # with no marks (not replayed) and one that is not an image (counted as unusable)
    kept, embedder = KeptQueries(index_dir), load_embedder(tiny_model)
    for picture in pictures[::3]:
        vector = embedder.embed(load_for_model(picture, embedder.metadata)[0][None])
        hits = old.search(vector, REPLAY_K)[0]
        right = tuple(h.path for h in hits if h.label == picture.parent.name)
        wrong = tuple(h.path for h in hits if h.label != picture.parent.name)[:2]
        kept.keep(picture.read_bytes(), picture.name, right=right, wrong=wrong)
    kept.keep(pictures[1].read_bytes(), "unmarked.png")
    kept.keep(b"not an image", "broken.png", right=(pictures[0].relative_to(gallery).as_posix(),))
    old.close()

    report = build_index(gallery, other_model, index_dir, rebuild=True, progress=False, accept_worse=True)
    comparison = _manifest(index_dir)["upgrade_check"]
    assert report.upgrade == comparison and report.generation == "gen-000002"
    assert comparison["kept_queries"] == len(pictures[::3]) + 2 and comparison["unusable_queries"] == 1

    shares = {"right": ([], []), "wrong": ([], [])}
    figures = []
    for side, (generation, model) in enumerate((("gen-000002", other_model), ("gen-000001", tiny_model))):
        index, embedder = open_generation(index_dir, generation), load_embedder(model)
        rows = index.db.execute("SELECT id, path, label FROM images ORDER BY path").fetchall()
        vectors = index.vectors(r[0] for r in rows)
        paths, labels = [r[1] for r in rows], np.unique([r[2] for r in rows], return_inverse=True)[1]
        for query in read_kept(index_dir):
            if not (query.right or query.wrong) or query.name == "broken.png":
                continue
            top, gap = _top(embedder, vectors, paths, query.data, query.name)
            assert gap > 1e-6, "a near-tie at rank 8: faiss and numpy may order it differently"
            if query.right:
                shares["right"][side].append(100 * np.mean([p in top for p in query.right]))
            if query.wrong:
                shares["wrong"][side].append(100 * np.mean([p in top for p in query.wrong]))
        figures.append(pml_oracle(vectors, labels))
        index.close()
    marks = comparison["marks"]
    assert marks["queries"] == len(pictures[::3])
    for name, key in (("right", "right_kept"), ("wrong", "wrong_left")):
        new, old_values = shares[name]
        assert marks[key]["new"] == pytest.approx(np.mean(new)) and marks[key]["old"] == pytest.approx(
            np.mean(old_values)
        )
        assert marks[key]["difference"]["mean"] == pytest.approx(np.mean(new) - np.mean(old_values))
    assert marks["right_kept"]["old"] == pytest.approx(100.0)  # marked on the serving model's own answers
    assert marks["wrong_left"]["old"] == pytest.approx(100.0)
    labelled = comparison["labels"]
    assert (labelled["queries"], labelled["labels"]) == (len(pictures), 2)
    for side, key in ((0, "new"), (1, "old")):
        assert labelled["recall_at_1"][key] == pytest.approx(100 * figures[side]["precision_at_1"], abs=1e-4)
        assert labelled["map_at_r"][key] == pytest.approx(100 * figures[side]["mean_average_precision_at_r"], abs=1e-4)


def test_a_rebuild_with_the_same_model_is_not_compared_and_a_lost_serving_model_is_said(
    tmp_path, tiny_model, other_model
):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, per_label=3, seed=710)
    index_dir = tmp_path / "index"
    model = tmp_path / "model.onnx"
    shutil.copy(tiny_model, model)
    build_index(gallery, model, index_dir, progress=False)
    report = build_index(gallery, model, index_dir, rebuild=True, progress=False)
    assert report.upgrade is None and "upgrade_check" not in _manifest(index_dir)
    model.unlink()
    report = build_index(gallery, other_model, index_dir, rebuild=True, progress=False)
    assert report.generation == "gen-000003" and report.upgrade["verdict"] == "not measured"
    assert (
        "the serving model cannot be loaded" in report.upgrade["why"] and "no such model file" in report.upgrade["why"]
    )
    assert any("model upgrade not compared" in line for line in report.summary())


@pytest.mark.slow
def test_a_worse_model_is_refused_while_the_old_one_keeps_serving_and_accept_worse_commits_it(
    tmp_path, tiny_model, floor_model
):
    """The pretrained backbone serves a folder of the synthetic shapes; the tiny 32 px run retrieves
    them worse (tests/test_floor_check.py measures the same on its validation classes)."""
    data = tiny_dataset(tmp_path / "data")
    index_dir = tmp_path / "index"
    build_index(data, floor_model, index_dir, progress=False)
    queries = sorted(data.rglob("*.png"))[::40]
    with serve_process(index_dir) as (url, _), httpx.Client(timeout=60) as client:
        before = [post_image(client, url, q, k=4).json()["results"] for q in queries]
        first = client.post(
            f"{url}api/search",
            files={"image": (queries[0].name, queries[0].read_bytes())},
            data={"k": "4", "right": str(before[0][1]["id"]), "wrong": str(before[0][3]["id"])},
        )
        assert first.status_code == 200
        assert len(list((index_dir / KEPT_DIR).glob("*.json"))) == len(queries)

        refused = metrix_cli("build-index", data, "--model", tiny_model, "--out", index_dir, "--rebuild", check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        error = refused.stderr.strip().splitlines()
        assert len(error) == 1 and "not committed, the new model measured worse than the serving one" in error[0]
        assert "gen-000001 still serves; --accept-worse commits it anyway" in error[0]
        assert "verdict: WORSE (the gallery's own labels: MAP@R lower with the new model)" in refused.stdout
        assert "marked queries (1 of 6 kept, top 8)" in refused.stdout
        assert (index_dir / CURRENT).read_text().strip() == "gen-000001"
        assert not [p.name for p in index_dir.iterdir() if p.name.startswith(".tmp")]
        info = client.get(f"{url}api/info").json()
        assert info["generation"] == "gen-000001" and info["upgrade_check"] is None
        assert [post_image(client, url, q, k=4).json()["results"] for q in queries] == before

        accepted = metrix_cli(
            "build-index", data, "--model", tiny_model, "--out", index_dir, "--rebuild", "--accept-worse"
        )
        assert "verdict: WORSE" in accepted.stdout and "generation gen-000002" in accepted.stdout
        for _ in range(100):
            info = client.get(f"{url}api/info").json()
            if info["generation"] == "gen-000002":
                break
            __import__("time").sleep(0.1)
        check = info["upgrade_check"]
        assert check == _manifest(index_dir)["upgrade_check"] and check["verdict"] == "worse"
        assert check["labels"]["queries"] == 240 and check["marks"]["queries"] == 1
        assert check["old_model"].startswith(floor_model.name) and check["new_model"].startswith("model.onnx")
