"""Micro-batching of concurrent queries (app/batching.py) on a real server, model and index:
concurrent clients get exactly what each query gets alone, batches really form, a bad upload fails
alone, a stop with queries in flight returns, and every query is answered from its own generation."""

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from metrix.app.batching import Batcher
from metrix.app.search import run_query
from metrix.app.server import Server
from metrix.index.build import build_index
from metrix.index.live import LiveIndex
from metrix.index.query import Refinement, search_image

from .pictures import assert_apart, blocks
from .service_helpers import free_port, make_gallery

CLIENTS = 8
#: Long enough that the clients' concurrent queries surely meet in the queue on a loaded machine.
WAIT_MS = 200


@pytest.fixture(scope="module")
def gallery_index(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("batching") / "gallery"
    paths = make_gallery(root)
    assert_apart(tiny_model, root, [p.relative_to(root) for p in paths])
    index_dir = root.parent / "index"
    build_index(root, tiny_model, index_dir, progress=False)
    return root, index_dir


@pytest.fixture(scope="module")
def servers(gallery_index):
    """(batched, unbatched): two servers over the same index."""
    index_dir = gallery_index[1]
    batched = Server(LiveIndex(index_dir), port=free_port(), batch_wait_ms=WAIT_MS, max_batch=CLIENTS).start()
    alone = Server(LiveIndex(index_dir), port=free_port(), max_batch=1).start()
    yield batched, alone
    batched.stop()
    alone.stop()


def _queries(root, alone: Server) -> list[tuple[str, bytes, dict]]:
    """(name, bytes, form fields): every gallery image, and some with other k, filters, a region
    and relevance feedback."""
    pictures = sorted(root.rglob("*.png"))
    queries = [(p.name, p.read_bytes(), {"k": "5"}) for p in pictures]
    first = pictures[0]
    with httpx.Client(timeout=60) as client:
        hits = _post(client, alone, (first.name, first.read_bytes(), {"k": "5"})).json()["results"]
    extra = [
        {"k": "3", "label": ["ants"]},
        {"k": "7", "path_prefix": "bees/0"},
        {"k": "4", "box": "0,0,36,28"},
        {"k": "5", "right": [str(hits[1]["id"])], "wrong": [str(hits[2]["id"])]},
        {"k": "20"},
        {"k": "2", "label": ["bees"], "right": [str(hits[3]["id"])]},
    ]
    for n, form in enumerate(extra * 2):
        picture = pictures[(3 * n + 1) % len(pictures)]
        queries.append((picture.name, picture.read_bytes(), form))
    return queries


def _post(client: httpx.Client, server: Server, query):
    name, data, form = query
    return client.post(f"{server.url}api/search", files={"image": (name, data)}, data=form)


def _concurrently(server: Server, queries: list) -> list:
    """Each query's response, from CLIENTS keep-alive clients posting at once."""
    responses = [None] * len(queries)
    start = threading.Barrier(CLIENTS)

    def client_run(offset: int) -> None:
        with httpx.Client(timeout=60) as client:
            start.wait()
            for n in range(offset, len(queries), CLIENTS):
                responses[n] = _post(client, server, queries[n])

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client_run, range(CLIENTS)))
    return responses


def _assert_same_answer(got: dict, want: dict, what) -> None:
    assert [(h["id"], h["path"], h["rank"]) for h in got["results"]] == [
        (h["id"], h["path"], h["rank"]) for h in want["results"]
    ], what
    for a, b in zip(got["results"], want["results"]):
        assert abs(a["score"] - b["score"]) <= 1e-5, (what, a, b)
    assert (got["generation"], got["images"], got["applied"], got["left_out"]) == (
        want["generation"],
        want["images"],
        want["applied"],
        want["left_out"],
    ), what


def test_concurrent_clients_get_what_each_query_gets_alone_in_batches(servers, gallery_index):
    batched, alone = servers
    queries = _queries(gallery_index[0], alone)
    with httpx.Client(timeout=60) as client:
        expected = [_post(client, alone, query) for query in queries]
    before = batched.batcher.stats()
    responses = _concurrently(batched, queries)
    for query, response, want in zip(queries, responses, expected):
        assert response.status_code == 200 == want.status_code, (query[0], query[2], response.text, want.text)
        _assert_same_answer(response.json(), want.json(), (query[0], query[2]))
    stats = batched.batcher.stats()
    assert stats["queries"] - before["queries"] == len(queries), (before, stats)
    assert max(int(size) for size in stats["sizes"]) > 1, stats
    assert max(int(size) for size in stats["sizes"]) <= CLIENTS, stats
    with httpx.Client(timeout=60) as client:
        assert client.get(f"{batched.url}api/info").json()["batching"] == {**batched.batcher.stats(), "queued": 0}
        assert client.get(f"{alone.url}api/info").json()["batching"] == {"max_batch": 1}
    assert alone.batcher is None


def test_the_page_endpoint_is_batched_too(servers, gallery_index):
    gradio_client = pytest.importorskip("gradio_client")
    batched, alone = servers
    picture = gallery_index[0] / "bees" / "04.png"
    before = batched.batcher.stats()["queries"]
    client = gradio_client.Client(batched.url, verbose=False)
    try:
        answer = client.predict(gradio_client.handle_file(str(picture)), 4, api_name="/search")
    finally:
        client.close()
    assert batched.batcher.stats()["queries"] == before + 1
    with httpx.Client(timeout=60) as http:
        want = _post(http, alone, (picture.name, picture.read_bytes(), {"k": "4"})).json()
    assert answer["results"][0]["gallery_path"] == "bees/04.png"
    assert [h["id"] for h in answer["results"]] == [h["id"] for h in want["results"]]


def test_a_bad_upload_among_good_ones_fails_alone(servers, gallery_index):
    batched, alone = servers
    root = gallery_index[0]
    good = [(p.name, p.read_bytes(), {"k": "3"}) for p in sorted(root.rglob("*.png"))[:CLIENTS]]
    queries = list(good)
    queries[2] = ("notes.jpg", b"not a picture", {"k": "3"})
    queries[5] = (good[5][0], good[5][1], {"k": "3", "right": ["987654"]})
    before = batched.batcher.stats()
    responses = _concurrently(batched, queries)
    assert responses[2].status_code == 415 and responses[2].json() == {"error": "notes.jpg: not an image PIL can read"}
    assert responses[5].status_code == 400, responses[5].text
    message = responses[5].json()["error"]
    assert message.startswith("right: id 987654 is not in") and "\n" not in message
    with httpx.Client(timeout=60) as client:
        for n in set(range(CLIENTS)) - {2, 5}:
            assert responses[n].status_code == 200, responses[n].text
            _assert_same_answer(responses[n].json(), _post(client, alone, queries[n]).json(), queries[n][0])
    assert batched.batcher.stats()["queries"] - before["queries"] == CLIENTS - 2


def test_a_stop_with_queries_in_flight_returns_and_ends_the_worker(gallery_index):
    root, index_dir = gallery_index
    server = Server(LiveIndex(index_dir), port=free_port(), batch_wait_ms=1000, max_batch=64).start()
    pictures = sorted(root.rglob("*.png"))[:6]
    outcomes = []

    def client_run(picture) -> None:
        try:
            with httpx.Client(timeout=60) as client:
                response = _post(client, server, (picture.name, picture.read_bytes(), {"k": "3"}))
                outcomes.append((picture, response.status_code, response.json()))
        except httpx.HTTPError as failure:  # refused or cut short by the stop: fine, as long as it ends
            outcomes.append((picture, None, repr(failure)))

    clients = [threading.Thread(target=client_run, args=(p,)) for p in pictures]
    for client in clients:
        client.start()
    while server.batcher.stats()["queued"] == 0 and any(c.is_alive() for c in clients):
        threading.Event().wait(0.01)
    assert server.batcher.running
    server.stop()
    for client in clients:
        client.join(60)
    assert not server._thread.is_alive() and not any(c.is_alive() for c in clients)
    assert not server.batcher.running
    assert len(outcomes) == len(pictures)
    for picture, status, body in outcomes:
        if status is not None:
            assert status == 200 and body["results"][0]["path"] == picture.relative_to(root).as_posix(), body
    # a query after the stop runs alone in its caller's thread
    picture = pictures[0]
    result = run_query(server.live, picture.name, 3, picture.read_bytes(), batcher=server.batcher)
    assert result.hits[0].path == picture.relative_to(root).as_posix()


def test_each_query_of_a_batch_is_answered_from_the_generation_it_started_on(tmp_path, tiny_model):
    root = tmp_path / "gallery"
    make_gallery(root, per_label=5, seed=900)
    index_dir = tmp_path / "index"
    build_index(root, tiny_model, index_dir, progress=False)
    live = LiveIndex(index_dir)
    old = live.snapshot()
    blocks(4242, (72, 56)).save(root / "ants" / "new.png")
    build_index(root, tiny_model, index_dir, progress=False)
    assert live.refresh()
    new = live.snapshot()
    assert (len(old.index), len(new.index)) == (10, 11)
    query = (root / "ants" / "new.png").read_bytes()
    batcher = Batcher(wait_ms=2000, max_batch=2)  # both queries surely share one batch
    try:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda s: batcher.search(s, "new.png", 4, query, Refinement()), (old, new)))
    finally:
        batcher.close()
    assert batcher.stats()["sizes"] == {"2": 1} and not batcher.running
    for snapshot, answer in zip((old, new), answers):
        want = search_image(snapshot.index, snapshot.embedder, "new.png", 4, query)
        assert [h.id for h in answer.hits] == [h.id for h in want.hits]
        assert all(abs(a.score - b.score) <= 1e-5 for a, b in zip(answer.hits, want.hits))
    assert answers[1].hits[0].path == "ants/new.png"
    assert "ants/new.png" not in {h.path for h in answers[0].hits}


@pytest.mark.slow
def test_a_query_with_most_hits_left_out_is_searched_again_as_alone(tmp_path, tiny_model):
    root = tmp_path / "gallery"
    pictures = make_gallery(root, seed=950)
    index_dir = tmp_path / "index"
    build_index(root, tiny_model, index_dir, progress=False)
    for picture in pictures[3:]:  # 17 of 20 changed since indexing: a first round of 5 + 8 finds too few
        stat = picture.stat()
        os.utime(picture, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    query = shutil.copy(pictures[0], tmp_path / "query.png")
    live = LiveIndex(index_dir)
    batcher = Batcher(wait_ms=200, max_batch=4)
    try:
        with ThreadPoolExecutor(4) as pool:
            batched = list(
                pool.map(
                    lambda k: run_query(live, "query.png", k, query.read_bytes(), Refinement(), batcher), (5, 5, 3, 2)
                )
            )
    finally:
        batcher.close()
    assert batcher.stats()["queries"] == 4
    for k, answer in zip((5, 5, 3, 2), batched):
        want = run_query(live, "query.png", k, query.read_bytes())
        assert answer.left_out == want.left_out and [h.id for h in answer.hits] == [h.id for h in want.hits]
        assert all(abs(a.score - b.score) <= 1e-5 for a, b in zip(answer.hits, want.hits))
    # k 5: the 13 candidates of the first round hold at most the 3 unchanged images; all 20 were searched
    assert len(batched[0].left_out) == 17 and [h.path for h in batched[0].hits][0] == "ants/00.png"
