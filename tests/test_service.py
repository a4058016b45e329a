"""`metrix serve` left running, as a real process on localhost: it follows rebuilds of its index
while clients query it, leaves out results whose file is gone or changed, and keeps its disk use and
memory flat over a thousand queries."""

import io
import os
import shutil
import sqlite3
import threading
import time

import httpx
import pytest
from PIL import Image

from metrix.index.build import build_index
from metrix.index.store import CURRENT, METADATA_FILE

from .pictures import assert_apart
from .service_helpers import LABELS, make_gallery, post_image, serve_process
from .training_helpers import metrix_cli

#: How soon a new generation must be answered from (the server checks CURRENT every second).
RELOAD_WITHIN_S = 10


def generation_paths(index_dir) -> tuple[str, set[str]]:
    generation = (index_dir / CURRENT).read_text().strip()
    with sqlite3.connect(f"file:{index_dir / generation / METADATA_FILE}?mode=ro", uri=True) as db:
        return generation, {row[0] for row in db.execute("SELECT path FROM images")}


@pytest.fixture
def pictures(tmp_path, tiny_model):
    """8 distinct pictures a label in all/; a gallery of the first 6 of each; the rest to add later."""
    every = make_gallery(tmp_path / "all", per_label=8, seed=700)
    assert_apart(tiny_model, tmp_path / "all", [p.relative_to(tmp_path / "all") for p in every])
    gallery = tmp_path / "gallery"
    for path in every:
        if int(path.stem) < 6:
            (gallery / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, gallery / path.parent.name / path.name)
    return tmp_path / "all", gallery


@pytest.mark.slow
def test_rebuilds_reach_a_running_server_one_whole_generation_at_a_time(tmp_path, tiny_model, pictures):
    every, gallery = pictures
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False)
    generations = dict([generation_paths(index_dir)])
    answers, stop = [], threading.Event()
    queries = sorted(every.rglob("*.png"))

    def query_forever(offset):
        with httpx.Client(timeout=30) as client:
            n = offset
            while not stop.is_set():
                query = queries[n % len(queries)]
                response = post_image(client, url, query, k=4)
                answers.append(
                    (time.monotonic(), query.relative_to(every).as_posix(), response.status_code, response.json())
                )
                n += 1

    with serve_process(index_dir) as (url, _):
        clients = [threading.Thread(target=query_forever, args=(i * 5,)) for i in range(2)]
        for client in clients:
            client.start()
        delays, removed = [], set()
        try:
            for step in (6, 7):  # add two pictures and remove one, then again
                for label in LABELS:
                    shutil.copy2(every / label / f"{step:02d}.png", gallery / label / f"{step:02d}.png")
                gone = f"{LABELS[step % 2]}/{step - 6:02d}.png"
                (gallery / gone).unlink()
                removed.add(gone)
                metrix_cli("build-index", gallery, "--model", tiny_model, "--out", index_dir, "--no-progress")
                switched = time.monotonic()
                generation, paths = generation_paths(index_dir)
                generations[generation] = paths
                new = f"ants/{step:02d}.png"
                while not any(
                    t > switched and q == new and a.get("generation") == generation and a["results"][0]["path"] == new
                    for t, q, _, a in list(answers)
                ):
                    assert time.monotonic() - switched < RELOAD_WITHIN_S, (
                        f"{new} not found {RELOAD_WITHIN_S} s after the rebuild"
                    )
                    time.sleep(0.05)
                delays.append(time.monotonic() - switched)
        finally:
            stop.set()
            for client in clients:
                client.join()
    print(f"{len(answers)} answers; new images found {', '.join(f'{d:.2f}' for d in delays)} s after each rebuild")
    assert all(status == 200 for _, _, status, _ in answers), [a for a in answers if a[2] != 200][:3]
    seen = {answer["generation"] for *_, answer in answers}
    assert seen == set(generations), (seen, set(generations))
    for _, query, _, answer in answers:
        paths = generations[answer["generation"]]
        assert answer["images"] == len(paths), (answer["generation"], answer["images"], len(paths))
        assert {hit["path"] for hit in answer["results"]} <= paths, (answer["generation"], answer["results"])
        if query in paths and query not in removed:  # a removed file is left out until the rebuild
            assert answer["results"][0]["path"] == query


@pytest.mark.slow
def test_moved_and_changed_files_are_left_out_and_k_still_come_back(tmp_path, tiny_model, pictures):
    gradio_client = pytest.importorskip("gradio_client")
    _, gallery = pictures
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False)
    with serve_process(index_dir) as (url, _), httpx.Client(timeout=30) as client:
        query = gallery / "ants" / "03.png"
        before = post_image(client, url, query, k=5).json()["results"]
        moved = tmp_path / "moved.png"
        shutil.move(query, moved)  # the top hit leaves the gallery
        changed = gallery / before[1]["path"]
        Image.new("RGB", (40, 40), (9, 9, 9)).save(changed)  # the second is rewritten
        os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
        answer = post_image(client, url, moved, k=5).json()
        paths = [hit["path"] for hit in answer["results"]]
        assert len(paths) == 5 and before[0]["path"] not in paths and before[1]["path"] not in paths
        assert paths[:3] == [hit["path"] for hit in before[2:5]]
        assert {(o["path"], o["reason"]) for o in answer["left_out"]} == {
            (before[0]["path"], "missing"),
            (before[1]["path"], "changed"),
        }
        assert "build-index" in answer["hint"]
        gone = client.get(before[0]["url"])
        assert (
            gone.status_code == 404
            and gone.json()["error"]
            == f"{before[0]['path']}: missing since indexing; re-run `metrix build-index` to bring the index up to date"
        )
        page = gradio_client.Client(url, verbose=False)
        through_page = page.predict(gradio_client.handle_file(str(moved)), 5, api_name="/search")
        assert [hit["gallery_path"] for hit in through_page["results"]] == paths and len(through_page["left_out"]) == 2


def _disk_bytes(*folders) -> int:
    return sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())


def _rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _distinct_upload(base: Image.Image, n: int) -> bytes:
    """The picture with pixel n recoloured: every upload is a new file to the server."""
    picture = base.copy()
    picture.putpixel((n % picture.width, (n // picture.width) % picture.height), (n % 251, n % 241, n % 239))
    encoded = io.BytesIO()
    picture.save(encoded, "PNG")
    return encoded.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's memory from /proc")
def test_soak_a_thousand_queries_leave_disk_and_memory_flat(tmp_path, tiny_model, pictures):
    gradio_client = pytest.importorskip("gradio_client")
    _, gallery = pictures
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False)
    cache, scratch = tmp_path / "gradio-cache", tmp_path / "tmp"
    cache.mkdir(), scratch.mkdir()
    ttl = 3
    base = Image.open(gallery / "bees" / "02.png").convert("RGB")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    with (
        serve_process(index_dir, "--cache-ttl", ttl, env={"GRADIO_TEMP_DIR": str(cache), "TMPDIR": str(scratch)}) as (
            url,
            process,
        ),
        httpx.Client(timeout=30) as client,
    ):
        page = gradio_client.Client(url, verbose=False)

        def api_query(n):
            response = client.post(
                f"{url}api/search", files={"image": (f"q{n}.png", _distinct_upload(base, n))}, data={"k": "8"}
            )
            assert response.status_code == 200 and response.json()["results"][0]["path"] == "bees/02.png", response.text

        def page_query(n):
            path = uploads / f"q{n}.png"
            path.write_bytes(_distinct_upload(base, n))
            answer = page.predict(gradio_client.handle_file(str(path)), 8, api_name="/search")
            assert answer["results"][0]["gallery_path"] == "bees/02.png"
            path.unlink()

        for n in range(60):  # warm-up: allocators, sessions and caches reach their working size
            (page_query if n % 10 == 0 else api_query)(n)
        time.sleep(2 * ttl + 1)
        disk_before, rss_before = _disk_bytes(cache, scratch), _rss_bytes(process.pid)
        peak_disk = 0
        for n in range(60, 1060):  # 1,000 queries: 900 through the API, 100 through the page
            (page_query if n % 10 == 0 else api_query)(n)
            if n % 100 == 0:
                peak_disk = max(peak_disk, _disk_bytes(cache, scratch))
        # Gradio sweeps its cache every ttl seconds; on a loaded machine a sweep can come late, so
        # wait for one (a leak never gets there: its files are not the sweep's to delete)
        deadline = time.monotonic() + 20 * ttl
        while True:
            time.sleep(ttl)
            disk_after = _disk_bytes(cache, scratch)
            if disk_after <= disk_before + 64 * 1024 or time.monotonic() > deadline:
                break
        rss_after = _rss_bytes(process.pid)
    print(
        f"disk {disk_before / 1e3:.0f} kB -> {disk_after / 1e3:.0f} kB (peak {peak_disk / 1e3:.0f} kB); "
        f"RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB"
    )
    assert disk_after <= disk_before + 64 * 1024, (disk_before, disk_after)
    assert rss_after - rss_before < 24 * 2**20, (rss_before, rss_after)
