"""A live model upgrade, tested as one (issue 40): a real `metrix serve` answers clients throughout
while `metrix build-index --rebuild --model NEW` re-embeds the gallery; builds killed with SIGKILL
at moments spread over the re-embedding leave the old model serving, the finished one is served
within seconds of its commit, and every answer is exactly what one of the two models gives on its
own (exact search with that model, computed here), never a mix."""

import json
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from metrix.export.runtime import load_embedder, load_for_model
from metrix.index.build import build_index
from metrix.index.store import CURRENT

from .service_helpers import make_gallery, post_image, serve_process
from .training_helpers import metrix_cli

K = 4
SWITCH_WITHIN_S = 10


def exact_answers(model, gallery, queries) -> dict[str, list[tuple[str, float]]]:
    """Each query's K nearest gallery images (path, cosine) under `model`, by exact search."""
    embedder = load_embedder(model)

    def embed(paths):
        return embedder.embed(np.stack([load_for_model(p, embedder.metadata)[0] for p in paths]))

    paths = sorted(gallery.rglob("*.png"))
    names = [p.relative_to(gallery).as_posix() for p in paths]
    scores = embed([gallery / q for q in queries]) @ embed(paths).T
    return {
        query: [(names[j], float(row[j])) for j in np.argsort(-row, kind="stable")[:K]]
        for query, row in zip(queries, scores)
    }


def build_command(gallery, model, index_dir):
    # --accept-worse: this test is about the switch, whichever model measures better on these pictures
    # (the check that refuses a worse one: tests/test_upgrade_check.py)
    return [sys.executable, "-m", "metrix", "build-index", gallery, "--model", model, "--rebuild", "--accept-worse"]


@pytest.mark.slow
def test_a_model_upgrade_under_load_never_mixes_models_and_survives_kill_9(tmp_path, tiny_model, other_model):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, per_label=200, seed=900)  # 400 images: a re-embedding that takes a while
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False)
    old = (index_dir / CURRENT).read_text().strip()
    queries = [f"{label}/{i:02d}.png" for label in ("ants", "bees") for i in range(0, 200, 25)]
    expected = {str(m): exact_answers(m, gallery, queries) for m in (tiny_model, other_model)}
    assert expected[str(tiny_model)] != expected[str(other_model)]  # the two models answer differently

    # how long a whole re-embedding takes, on a copy, so the kills below fall inside it
    start = time.monotonic()
    metrix_cli("build-index", gallery, "--model", other_model, "--out", tmp_path / "scratch", "--no-progress")
    duration = time.monotonic() - start

    answers, stop = [], threading.Event()
    with serve_process(index_dir) as (url, _):

        def query_forever(offset):
            with httpx.Client(timeout=30) as client:
                n = offset
                while not stop.is_set():
                    query = queries[n % len(queries)]
                    response = post_image(client, url, gallery / query, k=K)
                    answers.append((time.monotonic(), query, response.status_code, response.json()))
                    n += 1

        clients = [threading.Thread(target=query_forever, args=(i * 3,)) for i in range(2)]
        for client in clients:
            client.start()
        try:
            for share in (0.5, 0.7, 0.9):  # the first ~2 s of a build import its libraries
                build = subprocess.Popen(
                    [
                        *map(str, build_command(gallery, other_model, index_dir)),
                        "--out",
                        str(index_dir),
                        "--no-progress",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(share * duration)
                build.kill()
                build.wait()
                if (index_dir / CURRENT).read_text().strip() != old:  # it finished before the kill
                    break
                killed_at = time.monotonic()
                time.sleep(0.5)
                assert [a for t, _, _, a in answers if t > killed_at], "no answers after a killed build"
            metrix_cli(
                *map(str, build_command(gallery, other_model, index_dir)[3:]), "--out", index_dir, "--no-progress"
            )
            new = (index_dir / CURRENT).read_text().strip()
            committed = time.monotonic()
            while not any(t > committed and a.get("generation") == new for t, _, _, a in list(answers)):
                assert time.monotonic() - committed < SWITCH_WITHIN_S, (
                    f"{new} not served {SWITCH_WITHIN_S} s after commit"
                )
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            stop.set()
            for client in clients:
                client.join()

    assert new != old
    by_weights = {load_embedder(m).metadata.weights_sha256: str(m) for m in (tiny_model, other_model)}
    model_of = {
        g: by_weights[json.loads((index_dir / g / "manifest.json").read_text())["model"]["weights_sha256"]]
        for g in (old, new)
    }
    assert model_of == {old: str(tiny_model), new: str(other_model)}
    print(f"{len(answers)} answers; re-embedding {duration:.1f} s; builds killed at 50%, 70%, 90% of it")
    assert all(status == 200 for _, _, status, _ in answers), [a for a in answers if a[2] != 200][:3]
    assert {a["generation"] for *_, a in answers} == {old, new}
    for _, query, _, answer in answers:
        want = expected[model_of[answer["generation"]]][query]
        got = [(hit["path"], hit["score"]) for hit in answer["results"]]
        assert [p for p, _ in got] == [p for p, _ in want], (answer["generation"], query, got, want)
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=2e-3)
