"""The query images a server keeps, with their marks, for trying a new model on the searches people
actually make (issue 40): bounded, newest first, the marks of a query's latest round, none with
--keep-queries 0, and nothing (and no failure) where the folder cannot be written."""

import time

import httpx
import pytest

from metrix.index.build import build_index
from metrix.index.kept_queries import KEPT_DIR, KeptQueries, read_kept

from .service_helpers import make_gallery, post_image, serve_process


def test_the_newest_queries_stay_with_the_marks_of_their_latest_marked_round(tmp_path):
    kept = KeptQueries(tmp_path, limit=3)
    for i in range(5):
        kept.keep(f"image {i}".encode(), f"q{i}.png")
        time.sleep(0.02)  # newest by modification time, which ticks coarsely
    kept.keep(b"image 3", "q3.png", right=("a/7.png",), wrong=("b/9.png", "b/10.png"))  # a second round of q3
    time.sleep(0.02)
    kept.keep(b"image 3", "q3.png", box=(0, 0, 4, 4))  # a region of it: another query
    queries = read_kept(tmp_path)
    assert [(q.name, q.data, q.box) for q in queries] == [
        ("q4.png", b"image 4", None),
        ("q3.png", b"image 3", None),
        ("q3.png", b"image 3", (0, 0, 4, 4)),
    ]
    assert (queries[1].right, queries[1].wrong) == (("a/7.png",), ("b/9.png", "b/10.png"))
    assert len(list((tmp_path / KEPT_DIR).iterdir())) == 6  # an image and a record each
    assert read_kept(tmp_path, limit=1) == queries[-1:]
    time.sleep(0.02)
    kept.keep(b"image 3", "q3.png")  # asked again without marks: the newest, its marks kept
    again = read_kept(tmp_path)[-1]
    assert (again.data, again.box, again.right, again.wrong) == (
        b"image 3",
        None,
        ("a/7.png",),
        ("b/9.png", "b/10.png"),
    )
    kept.keep(b"image 3", "q3.png", right=("a/8.png",))
    assert (read_kept(tmp_path)[-1].right, read_kept(tmp_path)[-1].wrong) == (("a/8.png",), ())


def test_none_are_kept_with_a_limit_of_0_or_where_no_folder_can_be_made(tmp_path, caplog):
    KeptQueries(tmp_path, limit=0).keep(b"image", "q.png")
    assert not (tmp_path / KEPT_DIR).exists() and read_kept(tmp_path) == []
    blocked = tmp_path / "blocked"  # its kept-queries is a file: no folder can be made there, even as root
    blocked.mkdir()
    (blocked / KEPT_DIR).write_text("not a folder")
    kept = KeptQueries(blocked)
    kept.keep(b"image", "q.png")
    kept.keep(b"image 2", "q2.png")
    assert read_kept(blocked) == [] and (blocked / KEPT_DIR).read_text() == "not a folder"
    assert sum("not keeping queries" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.slow
def test_a_real_server_keeps_what_it_was_asked(tmp_path, tiny_model):
    gallery = tmp_path / "gallery"
    pictures = make_gallery(gallery, per_label=4, seed=300)
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False)
    with serve_process(index_dir, "--keep-queries", 3) as (url, _), httpx.Client(timeout=30) as client:
        for picture in pictures[:4]:
            assert post_image(client, url, picture, k=3).status_code == 200
            time.sleep(0.02)
        first = post_image(client, url, pictures[3], k=3).json()["results"]
        marked = client.post(
            f"{url}api/search",
            files={"image": (pictures[3].name, pictures[3].read_bytes())},
            data={"k": "3", "right": str(first[1]["id"])},
        )
        assert marked.status_code == 200
    queries = read_kept(index_dir)
    assert [q.data for q in queries] == [p.read_bytes() for p in pictures[1:4]]
    assert queries[-1].name == pictures[3].name and queries[-1].right == (first[1]["path"],)
    with serve_process(index_dir, "--keep-queries", 0) as (url, _), httpx.Client(timeout=30) as client:
        assert post_image(client, url, pictures[0], k=3).status_code == 200
    assert [q.data for q in read_kept(index_dir)] == [p.read_bytes() for p in pictures[1:4]]
