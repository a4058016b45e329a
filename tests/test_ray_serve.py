"""`metrix serve --engine ray --replicas 2` on a real local Ray cluster (the one the command starts,
with this machine's CPUs): both replicas answer through Ray Serve's one HTTP address, every query
succeeds while the index is rebuilt, both replicas then serve the new generation, and SIGTERM
stops the service and its cluster with exit status 0."""

import threading

import httpx
import pytest

from .scaling_helpers import answers_by_process, build, grow, start_serve, stop, until_all_serve
from .service_helpers import make_gallery, post_image

pytestmark = pytest.mark.slow  # the fast lane (pytest -m 'not slow') leaves these out

pytest.importorskip("ray.serve", reason="the serve extra (ray[serve]) is not installed")
REPLICA = "X-Metrix-Replica"


def keep_searching(url, picture, stopped: threading.Event, failures: list, generations: set) -> None:
    with httpx.Client(timeout=60) as client:
        while not stopped.is_set():
            response = post_image(client, url, picture, k=3)
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:200]}")
            else:
                generations.add(response.json()["generation"])


def test_two_replicas_answer_through_one_address_while_the_index_is_rebuilt(tmp_path, tiny_model):
    gallery = tmp_path / "gallery"
    pictures = make_gallery(gallery, per_label=3)
    index_dir = tmp_path / "index"
    first = build(gallery, tiny_model, index_dir)
    url, process = start_serve(index_dir, "--engine", "ray", "--replicas", 2, timeout=240)
    try:
        answers = answers_by_process(url, REPLICA, 2, pictures[0], deadline_s=120)
        assert {answer["generation"] for answer in answers.values()} == {first}
        assert len({value.split(" pid ")[1] for value in answers}) == 2  # two processes, not one

        stopped, failures, generations = threading.Event(), [], set()
        searching = threading.Thread(target=keep_searching, args=(url, pictures[0], stopped, failures, generations))
        searching.start()
        try:
            added = grow(gallery, tmp_path)
            second = build(gallery, tiny_model, index_dir)
            until_all_serve(url, REPLICA, set(answers), second)
        finally:
            stopped.set()
            searching.join(60)
        assert not failures, failures[:3]
        assert first in generations and second != first

        after = answers_by_process(url, REPLICA, 2, pictures[0])
        assert set(after) == set(answers)  # the same replicas, none restarted
        assert {answer["generation"] for answer in after.values()} == {second}
        assert {answer["images"] for answer in after.values()} == {len(pictures) + added}
    finally:
        code, output = stop(process, timeout=90)
    assert code == 0, output
