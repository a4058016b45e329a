"""/livez and /readyz of a real `metrix serve`, alone and with --workers 2: not ready until the
model has warmed up, ready on a verified generation, 503 once no generation verifies while /livez
still answers, ready again when a build repairs the index."""

import os
import time

import httpx
import pytest

from metrix.index.build import build_index

from .service_helpers import make_gallery, serve_process


def _poll(client, url: str, until, seconds: float = 30, times: int = 6) -> list:
    """/readyz answers (status, body) until `until` holds for `times` answers in a row (every
    worker's), failing after `seconds`."""
    answers, streak, deadline = [], 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = client.get(f"{url}readyz")
        answers.append((response.status_code, response.json()))
        streak = streak + 1 if until(*answers[-1]) else 0
        if streak >= times:
            return answers
        time.sleep(0.05)
    raise AssertionError(f"/readyz never settled: last answers {answers[-3:]}")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_readiness_follows_the_model_and_the_generations(tmp_path, tiny_model, workers):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, per_label=4)
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, index_type="flat", progress=False)
    scale = ("--workers", 2) if workers == 2 else ()
    with serve_process(index_dir, "--verify-interval", 1, *scale) as (url, _), httpx.Client(timeout=30) as client:
        answers = _poll(client, url, lambda status, body: status == 200)
        for status, body in answers:
            assert status == 200 or (status == 503 and body["error"] == "not ready: starting, the model is warming up")
        assert answers[-1][1]["generation"] == "gen-000001" and answers[-1][1]["warm_up_seconds"] >= 0

        path = index_dir / "gen-000001" / "index.faiss"
        os.chmod(path, 0o644)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        down = _poll(client, url, lambda status, body: status == 503)[-1][1]
        assert down["error"].startswith("not ready: no generation of index index verifies (gen-000001: index.faiss")
        assert client.get(f"{url}livez").json() == {"status": "alive"}

        build_index(gallery, tiny_model, index_dir, index_type="flat", progress=False, rebuild=True)
        up = _poll(client, url, lambda status, body: status == 200 and body["generation"] == "gen-000002")
        assert up[-1][1]["status"] == "ready"
