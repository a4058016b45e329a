"""`metrix serve --workers 2` as a real process: two worker processes answer on one port, each
follows a rebuild of the index, the page is served by the supervising process on --page-port, and
SIGTERM stops them all, with exit status 0."""

import os

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from metrix.cli import app
from metrix.index.live import LiveIndex

from .scaling_helpers import answers_by_process, build, grow, start_serve, stop, until_all_serve
from .service_helpers import free_port, make_gallery

WORKER = "X-Metrix-Worker"
TOKEN = "a-test-token-of-24-chars"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_two_workers_answer_follow_a_rebuild_and_stop_on_sigterm(tmp_path, tiny_model):
    gallery = tmp_path / "gallery"
    pictures = make_gallery(gallery, per_label=3)
    index_dir = tmp_path / "index"
    first = build(gallery, tiny_model, index_dir)
    page_port = free_port()
    url, process = start_serve(index_dir, "--workers", 2, "--page-port", page_port, env={"METRIX_API_TOKEN": TOKEN})
    try:
        answers = answers_by_process(url, WORKER, 2, pictures[0], headers=BEARER)
        pids = {int(pid) for pid in answers}
        assert process.pid not in pids and all(alive(pid) for pid in pids)
        assert {answer["generation"] for answer in answers.values()} == {first}
        assert answers[str(min(pids))]["results"][0]["path"] == "ants/00.png"
        # a result's signed image URL, from one worker, opens on the other too: they share the signing secret
        links = [hit["url"] for answer in answers.values() for hit in answer["results"]]
        served_by = set()
        for _ in range(10):
            for link in links:
                image = httpx.get(link, timeout=30, headers={"Connection": "close"})
                assert image.status_code == 200, image.text
                served_by.add(image.headers[WORKER])
        assert served_by == set(answers)

        page = httpx.get(f"http://127.0.0.1:{page_port}/", timeout=30)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        here = httpx.get(url, timeout=30)
        assert here.status_code == 404 and f"port {page_port}" in here.json()["error"]

        added = grow(gallery, tmp_path)
        second = build(gallery, tiny_model, index_dir)
        assert second != first
        until_all_serve(url, WORKER, set(answers), second)
        after = answers_by_process(url, WORKER, 2, pictures[0], headers=BEARER)
        assert {answer["generation"] for answer in after.values()} == {second}
        assert {answer["images"] for answer in after.values()} == {len(pictures) + added}
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert not any(alive(pid) for pid in pids), output
    assert "exited with" not in output, output


def same_answers(loaded: LiveIndex, mapped: LiveIndex, queries: np.ndarray) -> None:
    want = loaded.snapshot().index.search(queries, 10)
    got = mapped.snapshot().index.search(queries, 10)
    assert [[(h.id, h.path) for h in row] for row in got] == [[(h.id, h.path) for h in row] for row in want]
    np.testing.assert_allclose([h.score for row in got for h in row], [h.score for row in want for h in row])


def test_a_memory_mapped_index_answers_as_the_loaded_one_and_follows_rebuilds(tmp_path, tiny_model):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, per_label=3)
    index_dir = tmp_path / "index"
    build(gallery, tiny_model, index_dir)
    loaded, mapped = LiveIndex(index_dir), LiveIndex(index_dir, mmap=True)
    queries = loaded.snapshot().index.vectors(range(6))
    same_answers(loaded, mapped, queries)
    grow(gallery, tmp_path)
    second = build(gallery, tiny_model, index_dir)
    assert loaded.refresh() and mapped.refresh()
    assert mapped.snapshot().index.generation == second and len(mapped.snapshot().index) == 10
    same_answers(loaded, mapped, queries)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "0"], "--workers 0: must be at least 1"),
        (["--engine", "spark"], "--engine spark: must be local or ray"),
        (["--replicas", "2"], "--replicas is for --engine ray"),
        (["--engine", "ray", "--replicas", "0"], "--replicas 0: must be at least 1"),
        (["--engine", "ray", "--workers", "2"], "--workers is for --engine local"),
        (["--page-port", "7861"], "--page-port is for --workers above 1 or --engine ray"),
        (["--workers", "2", "--page-port", "7860"], "--page-port 7860: must differ from --port"),
    ],
)
def test_bad_scaling_options_are_refused_in_one_line(args, message, tmp_path):
    result = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "none"), *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output
