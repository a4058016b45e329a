"""Search by gallery id ("more like this", itself left out) and by vector (a client's own run of the
model), in the Python API, `metrix search` and the JSON API of a real server: the answers equal an
exact numpy search of the stored vectors and the image search of the same picture; a vector of
another dimension, not finite or not normalised, and an unknown id, are one-line errors."""

import json

import httpx
import numpy as np
import pytest

from metrix.index.build import build_index
from metrix.index.python_api import Index
from metrix.index.store import GalleryIndexError

from .service_helpers import make_gallery, serve_process
from .training_helpers import metrix_cli

K = 4


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("search-by")
    pictures = make_gallery(root / "gallery", per_label=6, seed=620)
    build_index(root / "gallery", tiny_model, root / "index", index_type="flat", progress=False)
    return root, pictures


def _exact(index: Index, vector: np.ndarray, leave_out: int | None = None) -> list[tuple[str, float]]:
    rows = index.index.db.execute("SELECT id, path FROM images ORDER BY id").fetchall()
    scores = index.index.vectors([r[0] for r in rows]) @ vector
    ranked = [(rows[j][1], float(scores[j])) for j in np.argsort(-scores, kind="stable") if rows[j][0] != leave_out]
    assert ranked[K - 1][1] - ranked[K][1] > 1e-5, "a near-tie at rank K"
    return ranked[:K]


def _close(hits, expected) -> bool:
    return [h[0] for h in hits] == [e[0] for e in expected] and np.allclose(
        [h[1] for h in hits], [e[1] for e in expected], atol=1e-5
    )


def test_more_like_a_gallery_image_and_like_a_vector_equal_exact_search(indexed):
    root, pictures = indexed
    with Index.open(root / "index") as index:
        target = index.index.db.execute("SELECT id, path FROM images WHERE path = 'bees/02.png'").fetchone()
        stored = index.index.vectors([target[0]])[0]
        by_id = index.search(id=target[0], k=K)
        assert target[1] not in [r.path for r in by_id]
        assert _close([(r.path, r.score) for r in by_id], _exact(index, stored, leave_out=target[0]))
        assert index.search(id="bees/02.png", k=K) == by_id  # a gallery path names it too

        query = pictures[3]
        embedded = index.embed([query])[0]
        by_vector = index.search(vector=embedded.tolist(), k=K)
        assert _close([(r.path, r.score) for r in by_vector], _exact(index, embedded))
        assert _close([(r.path, r.score) for r in by_vector], [(r.path, r.score) for r in index.search(query, k=K)])

        dim = index.index.manifest["dim"]
        for values, message in (
            (np.ones(dim - 1) / np.sqrt(dim - 1), f"vector: {dim - 1} values, the index's model gives {dim}"),
            (np.full(dim, np.nan), "vector: holds NaN or infinite values"),
            (2 * embedded, "vector: L2 norm 2, not 1; send the model's normalised `embeddings` output"),
            ("not numbers", "vector: expected a list of numbers"),
        ):
            with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("`", ".")):
                index.search(vector=values)
        with pytest.raises(GalleryIndexError, match=r"image: id 999999 is not in the index \(gen-000001\)"):
            index.search(id=999999)
        with pytest.raises(ValueError, match="give one of image, id or vector"):
            index.search(query, id=1)


def test_metrix_search_takes_an_id_or_a_vector_file(indexed, tmp_path):
    root, pictures = indexed
    with Index.open(root / "index") as index:
        expected_like = [r.path for r in index.search(id="ants/01.png", k=K)]
        embedded = index.embed([pictures[5]])[0]
        expected_vector = [r.path for r in index.search(vector=embedded, k=K)]
    like = json.loads(metrix_cli("search", "--id", "ants/01.png", "--index", root / "index", "-k", K, "--json").stdout)
    assert [r["path"] for r in like["results"]] == expected_like and like["query"] == "id ants/01.png"
    np.save(tmp_path / "v.npy", embedded)
    (tmp_path / "v.json").write_text(json.dumps(embedded.tolist()))
    for file in ("v.npy", "v.json"):
        found = json.loads(
            metrix_cli("search", "--vector", tmp_path / file, "--index", root / "index", "-k", K, "--json").stdout
        )
        assert [r["path"] for r in found["results"]] == expected_vector
    (tmp_path / "bad.json").write_text("[1, 2,")
    bad = metrix_cli("search", "--vector", tmp_path / "bad.json", "--index", root / "index", check=False)
    assert (
        bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "bad.json: not a .npy array" in bad.stderr
    )
    both = metrix_cli("search", pictures[0], "--id", "1", "--index", root / "index", check=False)
    assert both.returncode == 2 and "give one query: IMAGE, --id or --vector" in both.stderr


@pytest.mark.slow
def test_the_api_searches_by_id_and_by_vector(indexed):
    root, pictures = indexed
    with Index.open(root / "index") as index:
        target = index.index.db.execute("SELECT id FROM images WHERE path = 'ants/04.png'").fetchone()[0]
        expected_like = [(r.path, r.score) for r in index.search(id=target, k=K)]
        embedded = index.embed([pictures[7]])[0]
        expected_vector = [(r.path, r.score) for r in index.search(vector=embedded, k=K, labels=["bees"])]
    with serve_process(root / "index") as (url, _), httpx.Client(timeout=30) as client:
        like = client.get(f"{url}api/images/{target}/similar", params={"k": K})
        vector = client.post(f"{url}api/search/vector", json={"vector": embedded.tolist(), "k": K, "label": ["bees"]})
        wrong_size = client.post(f"{url}api/search/vector", json={"vector": [0.5, 0.5, 0.5, 0.5]})
        unknown = client.get(f"{url}api/images/999999/similar")
    assert like.status_code == 200 and _close([(r["path"], r["score"]) for r in like.json()["results"]], expected_like)
    assert vector.status_code == 200 and _close(
        [(r["path"], r["score"]) for r in vector.json()["results"]], expected_vector
    )
    assert all(r["label"] == "bees" for r in vector.json()["results"])
    assert wrong_size.status_code == 400 and wrong_size.json()["error"].startswith(
        "vector: 4 values, the index's model gives"
    )
    assert unknown.status_code == 404 and unknown.json()["error"] == "image: id 999999 is not in the index (gen-000001)"
