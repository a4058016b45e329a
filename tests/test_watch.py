"""`metrix build-index FOLDER --watch` as a user meets it: a real watch process follows a real
folder through bursts of copies, overwrites, renames and deletes while a client queries a real
`metrix serve`. Within SETTLED seconds of the last change the index holds exactly what a fresh
build of the folder holds, the server answers from it, and no query failed on the way."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from metrix.index.build import build_index
from metrix.index.store import current_generation, open_index

from .pictures import assert_apart
from .service_helpers import make_gallery, post_image, serve_process

pytestmark = pytest.mark.slow  # the fast lane (pytest -m 'not slow') leaves these out

pytest.importorskip("watchdog")

#: From the last change until the index must equal a fresh build (docs/index.md states it):
#: the settle time (0.5 s here) plus one incremental update, with room for a loaded machine.
SETTLED = 60


def by_path(index_dir) -> dict:
    """{gallery path: (label, size, mtime_ns, vector)} of the current generation."""
    opened = open_index(index_dir)
    try:
        rows = opened.db.execute("SELECT id, path, label, size, mtime_ns FROM images").fetchall()
        vectors = opened.vectors([row[0] for row in rows])
        return {row[1]: (row[2], row[3], row[4], vector) for row, vector in zip(rows, vectors)}
    finally:
        opened.close()


def same_contents(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[p][:3] == b[p][:3] and np.allclose(a[p][3], b[p][3], atol=1e-5) for p in a)


class Lines:
    """A process's output, collected by a thread so that waiting on it never blocks."""

    def __init__(self, process):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(process.stdout), daemon=True)
        self.thread.start()

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{''.join(self.lines)}"
            time.sleep(0.1)


def bursts(gallery, spare):
    """Bursts of the changes photo folders see, each a few ms apart, a pause between bursts."""
    new = sorted(spare.rglob("*.png"))
    yield [lambda p=p: shutil.copy(p, gallery / "ants" / f"new-{p.parent.name}-{p.name}") for p in new[:5]]
    yield [lambda i=i: shutil.copy(new[5 + i], gallery / "bees" / f"{i:02d}.png") for i in range(3)]  # overwrite
    yield [
        lambda: os.rename(gallery / "ants" / "03.png", gallery / "ants" / "renamed.png"),
        lambda: (gallery / "wasps").mkdir(),
        lambda: os.rename(gallery / "bees" / "05.png", gallery / "wasps" / "05.png"),  # another label
        lambda: os.rename(gallery / "ants" / f"new-{new[0].parent.name}-{new[0].name}", gallery / "ants" / "n0.png"),
    ]
    yield [lambda n=n: (gallery / "ants" / f"{n:02d}.png").unlink() for n in (4, 5, 6)]
    # a file written slowly, in pieces: an update that catches it half-written reports it and the
    # next one, after its last piece, embeds it whole
    data = new[8].read_bytes()
    yield [lambda k=k: write_piece(gallery / "bees" / "slow.png", data, k, 4) for k in range(4)]


def write_piece(path, data: bytes, k: int, parts: int) -> None:
    if k:
        time.sleep(0.8)  # longer than --settle: an update can start between pieces
    with open(path, "ab" if k else "wb") as f:
        f.write(data[k * len(data) // parts : (k + 1) * len(data) // parts])


def test_a_watched_folder_follows_bursts_of_changes_while_serving(tmp_path, tiny_model):
    gallery, spare, index_dir = tmp_path / "gallery", tmp_path / "spare", tmp_path / "index"
    pictures = make_gallery(gallery, per_label=8) + make_gallery(spare, per_label=6, seed=900)
    assert_apart(tiny_model, tmp_path, [p.relative_to(tmp_path) for p in pictures])  # self-retrieval holds
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metrix",
            "build-index",
            str(gallery),
            "--model",
            str(tiny_model),
            "--out",
            str(index_dir),
        ]
        + ["--no-progress", "--watch", "--settle", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = Lines(watcher)
    try:
        output.wait_for("watching", timeout=120)
        first = current_generation(index_dir)
        with serve_process(index_dir) as (url, _), httpx.Client(timeout=30) as client:
            answers, failures, done = [], [], threading.Event()

            def query():  # ants/00.png is never touched: it must stay the top answer throughout
                while not done.is_set():
                    response = post_image(client, url, gallery / "ants" / "00.png", k=3)
                    if response.status_code != 200 or response.json()["results"][0]["path"] != "ants/00.png":
                        failures.append(response.text)
                    answers.append(response.json().get("generation"))

            querying = threading.Thread(target=query)
            querying.start()
            for burst in bursts(gallery, spare):
                for change in burst:
                    change()
                    time.sleep(0.02)
                time.sleep(1.5)  # the folder settles: an update may start between bursts
            last_change = time.monotonic()
            fresh_dir = tmp_path / "fresh"
            expected = None
            while True:
                fresh = build_index(gallery, tiny_model, fresh_dir, progress=False)
                expected = by_path(fresh_dir)
                if same_contents(by_path(index_dir), expected):
                    break
                assert time.monotonic() - last_change < SETTLED, (
                    f"not caught up after {SETTLED} s:\n{''.join(output.lines)}"
                )
                time.sleep(0.5)
            caught_up = time.monotonic() - last_change
            assert fresh.count == len(expected) and "bees/slow.png" in expected and "wasps/05.png" in expected
            # the server follows: a copied-in picture is found, from the watched index's generation
            time.sleep(2)  # the server looks for a new generation every second
            moved = post_image(client, url, gallery / "wasps" / "05.png", k=1).json()
            done.set()
            querying.join()
        assert moved["results"][0]["path"] == "wasps/05.png" and moved["generation"] == current_generation(index_dir)
        assert not failures, failures[:3]
        assert len(answers) > 10 and len(set(answers)) > 1 and answers[0] == first  # queried across updates
        print(f"caught up {caught_up:.1f} s after the last change; {len(answers)} queries, none failed")
        print("".join(output.lines))
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(30)
    assert watcher.returncode == 0 and any("stopped watching" in line for line in output.lines), output.lines
